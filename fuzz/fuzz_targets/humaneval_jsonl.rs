#![no_main]
// Coverage-guided fuzzing of canon_fuzz::humaneval_jsonl (see fuzz/README.md).
libfuzzer_sys::fuzz_target!(|data: &[u8]| canon_fuzz::humaneval_jsonl(data));
