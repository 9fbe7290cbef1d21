#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sidecar_control_plane::fuzzing::report_batch(data));
