//! AFL target: `dear_core::fuzzing::tokenizer_json`.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        dear_core::fuzzing::tokenizer_json(data);
    });
}
