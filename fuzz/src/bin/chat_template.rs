//! AFL target: `dear_core::fuzzing::chat_template`.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        dear_core::fuzzing::chat_template(data);
    });
}
