//! AFL target: `dear_core::fuzzing::corpus`.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        dear_core::fuzzing::corpus(data);
    });
}
