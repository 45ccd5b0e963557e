#![no_main]
// Coverage-guided fuzzing of canon_fuzz::gguf_vocab (see fuzz/README.md).
libfuzzer_sys::fuzz_target!(|data: &[u8]| canon_fuzz::gguf_vocab(data));
