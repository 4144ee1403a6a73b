//! AFL target: `dear_core::fuzzing::config_json`.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        dear_core::fuzzing::config_json(data);
    });
}
