//! AFL target: `dear_core::fuzzing::chat_template`.
//!
//! `fuzz_nohook!`: a panic that dear itself catches (the GGUF reader runs candle's
//! header parser under `catch_unwind` and answers an error) is not a crash; any other
//! panic still aborts the process, which AFL records as a crash.
fn main() {
    afl::fuzz_nohook!(|data: &[u8]| {
        dear_core::fuzzing::chat_template(data);
    });
}
