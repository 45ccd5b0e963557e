#![no_main]
// Coverage-guided fuzzing of canon_fuzz::gguf (see fuzz/README.md).
libfuzzer_sys::fuzz_target!(|data: &[u8]| canon_fuzz::gguf(data));
