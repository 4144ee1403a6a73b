//! AFL target: `dear_core::fuzzing::gguf`.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        dear_core::fuzzing::gguf(data);
    });
}
