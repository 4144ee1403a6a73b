//! AFL target: `dear_core::fuzzing::run`.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        dear_core::fuzzing::run(data);
    });
}
