//! AFL target: `dear_core::fuzzing::permutation`.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        dear_core::fuzzing::permutation(data);
    });
}
