//! AFL target: `dear_core::fuzzing::tokenizer_gguf`.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        dear_core::fuzzing::tokenizer_gguf(data);
    });
}
