#![no_main]
// Coverage-guided fuzzing of canon_fuzz::hf_folder (see fuzz/README.md).
libfuzzer_sys::fuzz_target!(|data: &[u8]| canon_fuzz::hf_folder(data));
