#![no_main]
// Coverage-guided fuzzing of canon_fuzz::server_request (see fuzz/README.md).
libfuzzer_sys::fuzz_target!(|data: &[u8]| canon_fuzz::server_request(data));
