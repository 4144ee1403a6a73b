//! AFL target: `dear_core::fuzzing::adapter_config`.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        dear_core::fuzzing::adapter_config(data);
    });
}
