//! AFL target: `dear_core::fuzzing::safetensors`.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        dear_core::fuzzing::safetensors(data);
    });
}
