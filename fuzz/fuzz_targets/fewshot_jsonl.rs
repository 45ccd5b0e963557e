#![no_main]
// Coverage-guided fuzzing of canon_fuzz::fewshot_jsonl (see fuzz/README.md).
libfuzzer_sys::fuzz_target!(|data: &[u8]| canon_fuzz::fewshot_jsonl(data));
