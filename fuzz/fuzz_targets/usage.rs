#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sidecar_data_plane::fuzzing::usage(data));
