//! AFL target: `dear_core::fuzzing::qrels`.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        dear_core::fuzzing::qrels(data);
    });
}
