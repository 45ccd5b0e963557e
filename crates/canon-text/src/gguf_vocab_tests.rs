//! Tests of `gguf_vocab`: GGUF vocabularies to tokenizers (direct and through `tokenizer.json`).

use super::*;
use crate::Tokenizer;

#[test]
fn unknown_model_and_pre_tokenizer_are_named_in_the_error() {
    let v = GgufVocab {
        model: "bert".into(),
        tokens: vec!["a".into()],
        ..Default::default()
    };
    assert!(
        v.to_tokenizer_json()
            .unwrap_err()
            .to_string()
            .contains("'bert'")
    );
    let v = GgufVocab {
        model: "gpt2".into(),
        pre: Some("martian".into()),
        tokens: vec!["a".into()],
        ..Default::default()
    };
    let e = v.to_tokenizer_json().unwrap_err().to_string();
    assert!(e.contains("martian") && e.contains("smollm"), "{e}");
}

#[test]
fn bad_merge_is_reported() {
    let v = GgufVocab {
        model: "gpt2".into(),
        tokens: vec!["a".into(), "b".into()],
        merges: vec!["ab".into()],
        ..Default::default()
    };
    assert!(
        v.to_tokenizer_json()
            .unwrap_err()
            .to_string()
            .contains("merge 0")
    );
}

/// A small SentencePiece vocabulary: the four specials, bytes, then pieces with scores.
fn spm_vocab(pieces: &[(&str, f32)], add_space_prefix: bool) -> GgufVocab {
    let mut tokens: Vec<String> = ["<pad>", "<eos>", "<bos>", "<unk>"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut types = vec![3, 3, 3, 2];
    let mut scores = vec![0.0; 4];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
        scores.push(0.0);
    }
    tokens.push("\n".into());
    types.push(4);
    scores.push(-1000.0);
    for (p, sc) in pieces {
        tokens.push(p.to_string());
        types.push(1);
        scores.push(*sc);
    }
    GgufVocab {
        model: "llama".into(),
        pre: Some("default".into()),
        tokens,
        token_types: types,
        scores,
        add_space_prefix: Some(add_space_prefix),
        bos_id: Some(2),
        eos_id: Some(1),
        unk_id: Some(3),
        pad_id: Some(0),
        add_bos: true,
        ..Default::default()
    }
}

/// llama.cpp's SentencePiece merge written directly (symbols, a queue of adjacent pairs by
/// score then position, bytes for what is no token), to check the BPE encoding against.
fn reference_spm(v: &GgufVocab, text: &str) -> Vec<u32> {
    let id_of = |t: &str| v.tokens.iter().position(|x| x == t).map(|i| i as u32);
    let mut out = Vec::new();
    // Split at user-defined tokens (here only "\n") the way the partition step does.
    for (k, frag) in text.split('\n').enumerate() {
        if k > 0 {
            out.push(id_of("\n").unwrap());
        }
        if frag.is_empty() {
            continue;
        }
        let mut t = String::new();
        if v.add_space_prefix.unwrap_or(true) {
            t.push(' ');
        }
        t.push_str(frag);
        let t = t.replace(' ', "\u{2581}");
        let mut syms: Vec<String> = t.chars().map(|c| c.to_string()).collect();
        loop {
            let mut best: Option<(f32, usize)> = None;
            for i in 0..syms.len().saturating_sub(1) {
                if let Some(id) = id_of(&format!("{}{}", syms[i], syms[i + 1])) {
                    let sc = v.scores[id as usize];
                    if best.is_none_or(|(b, _)| sc > b) {
                        best = Some((sc, i));
                    }
                }
            }
            let Some((_, i)) = best else { break };
            let right = syms.remove(i + 1);
            syms[i].push_str(&right);
        }
        for s in syms {
            match id_of(&s) {
                Some(id) => out.push(id),
                None => {
                    for b in s.bytes() {
                        out.push(id_of(&format!("<0x{b:02X}>")).unwrap());
                    }
                }
            }
        }
    }
    out
}

const PIECES: &[(&str, f32)] = &[
    ("\u{2581}", -1.0),
    ("a", -2.0),
    ("b", -3.0),
    ("c", -4.0),
    ("ab", -5.0),
    ("bc", -1.5),
    ("abc", -6.0),
    ("\u{2581}a", -2.5),
    ("\u{2581}ab", -7.0),
    ("ca", -8.0),
    ("cab", -0.5),
    ("\u{2581}\u{2581}", -9.0),
    ("é", -3.5),
    ("\u{2581}é", -4.5),
];

#[test]
fn spm_merges_follow_scores_and_bytes_fill_in() {
    let v = spm_vocab(PIECES, false);
    let t = Tokenizer::from_gguf(&v).unwrap();
    let id = |s: &str| v.tokens.iter().position(|x| x == s).unwrap() as u32;
    // "bcab": bc (-1.5) first, then ab (-5); "bca" and "bcab" are no tokens.
    assert_eq!(
        t.encode("bcab", false).unwrap(),
        vec![2, id("bc"), id("ab")]
    );
    // "abc": bc first, then a + bc makes the token abc.
    assert_eq!(t.encode("abc", false).unwrap(), vec![2, id("abc")]);
    // A space is ▁; with no prefix the first word has none.
    assert_eq!(
        t.encode("ab ab", false).unwrap(),
        vec![2, id("ab"), id("\u{2581}ab")]
    );
    // 'z' and '😀' are no tokens: their UTF-8 bytes.
    assert_eq!(
        t.encode("z😀", false).unwrap(),
        vec![
            2,
            id("<0x7A>"),
            id("<0xF0>"),
            id("<0x9F>"),
            id("<0x98>"),
            id("<0x80>")
        ]
    );
    assert_eq!(
        t.decode(&t.encode("z😀 ab", false).unwrap(), true).unwrap(),
        "z😀 ab"
    );
    let v = spm_vocab(PIECES, true);
    let t = Tokenizer::from_gguf(&v).unwrap();
    assert_eq!(t.encode("ab", false).unwrap(), vec![2, id("\u{2581}ab")]);
    assert_eq!(
        t.decode(&t.encode("ab  c", false).unwrap(), true).unwrap(),
        "ab  c"
    );
}

#[test]
fn spm_encoding_equals_the_direct_merge_on_many_strings() {
    let alphabet = ['a', 'b', 'c', ' ', 'é', 'z', '\n'];
    for prefix in [false, true] {
        let v = spm_vocab(PIECES, prefix);
        let t = Tokenizer::from_gguf(&v).unwrap();
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..3000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 12) as usize;
            let text: String = (0..len)
                .map(|k| alphabet[((state >> (5 * k + 8)) % alphabet.len() as u64) as usize])
                .collect();
            let mut want = vec![2];
            want.extend(reference_spm(&v, &text));
            assert_eq!(
                t.encode(&text, false).unwrap(),
                want,
                "{text:?} prefix {prefix}"
            );
            // Decoding drops one leading space, the first prefix (llama.cpp does the same);
            // the prefixes after user-defined tokens stay.
            if !prefix || !text.contains('\n') {
                assert_eq!(
                    t.decode(&want, true).unwrap(),
                    text,
                    "{text:?} prefix {prefix}"
                );
            }
        }
    }
}

#[test]
fn spm_bad_scores_are_reported() {
    let mut v = spm_vocab(PIECES, false);
    v.scores.pop();
    let e = v.to_tokenizer_json().unwrap_err().to_string();
    assert!(e.contains("scores"), "{e}");
    let mut v = spm_vocab(PIECES, false);
    v.scores[270] = f32::NAN;
    let e = v.to_tokenizer_json().unwrap_err().to_string();
    assert!(e.contains("token 270") && e.contains("finite"), "{e}");
    let mut v = spm_vocab(PIECES, false);
    v.tokens[271] = "a".into();
    let e = v.to_tokenizer_json().unwrap_err().to_string();
    assert!(e.contains("twice"), "{e}");
}

/// A small byte-level BPE vocabulary with a control token and a user-defined one.
fn bpe_vocab() -> GgufVocab {
    let mut tokens: Vec<String> = tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet()
        .into_iter()
        .map(String::from)
        .collect();
    tokens.sort();
    let merges = ["\u{120} t", "h e", "\u{120}t he", "a b", "ab c"];
    for m in merges {
        let (a, b) = m.split_once(' ').unwrap();
        tokens.push(format!("{a}{b}"));
    }
    let mut types = vec![1; tokens.len()];
    tokens.push("<|im_end|>".into());
    types.push(3);
    tokens.push("<|user|>".into());
    types.push(4);
    GgufVocab {
        model: "gpt2".into(),
        pre: Some("smollm".into()),
        token_types: types,
        eos_id: Some(tokens.len() as u32 - 2),
        tokens,
        merges: merges.iter().map(|m| m.to_string()).collect(),
        ..Default::default()
    }
}

/// The tokenizer built directly is the one the `tokenizer.json` round trip gives: the same ids
/// with and without special tokens read, the same text back, the same special ids.
#[test]
fn direct_build_equals_the_json_round_trip() {
    let mut spm_u = spm_vocab(PIECES, true);
    spm_u.tokens.push("<start_of_turn>".into());
    spm_u.token_types.push(3);
    spm_u.scores.push(0.0);
    // No byte tokens: characters that are no token become the unknown token (runs fused).
    let mut spm_nobytes = spm_vocab(PIECES, true);
    let keep: Vec<usize> = (0..spm_nobytes.tokens.len())
        .filter(|&i| !spm_nobytes.tokens[i].starts_with("<0x"))
        .collect();
    spm_nobytes.tokens = keep
        .iter()
        .map(|&i| spm_nobytes.tokens[i].clone())
        .collect();
    spm_nobytes.token_types = keep.iter().map(|&i| spm_nobytes.token_types[i]).collect();
    spm_nobytes.scores = keep.iter().map(|&i| spm_nobytes.scores[i]).collect();
    let vocabs = [spm_vocab(PIECES, false), spm_u, spm_nobytes, bpe_vocab()];
    let alphabet = [
        "a",
        "b",
        "c",
        " ",
        "\u{e9}",
        "z",
        "\n",
        "the",
        " the",
        "abc",
        "<|im_end|>",
        "<|user|>",
        "<start_of_turn>",
        "<eos>",
        "\u{1f600}",
        "1",
    ];
    for v in &vocabs {
        let direct = Tokenizer::from_gguf(v).unwrap();
        let mut parsed =
            Tokenizer::from_json_bytes(v.to_tokenizer_json().unwrap().as_bytes()).unwrap();
        parsed.add_bos = v.add_bos;
        parsed.bos_id = v.bos_id;
        assert_eq!(direct.vocab_size(), parsed.vocab_size(), "{}", v.model);
        for id in 0..v.tokens.len() as u32 {
            assert_eq!(direct.is_special(id), parsed.is_special(id), "{id}");
        }
        // The plain-text path with the twin always used (what `encode(_, false)` did before
        // it looked for special texts first).
        let mut twin = parsed.hf().unwrap().clone();
        twin.set_encode_special_tokens(true);
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..2000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 9) as usize;
            let text: String = (0..len)
                .map(|k| alphabet[((state >> (6 * k + 4)) % alphabet.len() as u64) as usize])
                .collect();
            for special in [false, true] {
                let a = direct.encode(&text, special).unwrap();
                let b = parsed.encode(&text, special).unwrap();
                assert_eq!(a, b, "{} {text:?} special {special}", v.model);
                if !special {
                    let mut want: Vec<u32> = v.bos_id.filter(|_| v.add_bos).into_iter().collect();
                    want.extend(twin.encode_fast(text.as_str(), false).unwrap().get_ids());
                    assert_eq!(a, want, "{} {text:?} (twin)", v.model);
                }
                for skip in [false, true] {
                    assert_eq!(
                        direct.decode(&a, skip).unwrap(),
                        parsed.decode(&b, skip).unwrap(),
                        "{} {text:?} skip {skip}",
                        v.model
                    );
                }
            }
        }
        // Any ids, in or out of the vocabulary, byte tokens in any order: the same text.
        for _ in 0..500 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let ids: Vec<u32> = (0..(state % 7) as usize)
                .map(|k| ((state >> (7 * k + 3)) % (v.tokens.len() as u64 + 3)) as u32)
                .collect();
            for skip in [false, true] {
                assert_eq!(
                    direct.decode(&ids, skip).unwrap(),
                    parsed.decode(&ids, skip).unwrap(),
                    "{} {ids:?} skip {skip}",
                    v.model
                );
            }
        }
        for id in 0..v.tokens.len() as u32 + 2 {
            assert_eq!(direct.id_to_token(id), parsed.id_to_token(id));
        }
        for t in v.tokens.iter().map(String::as_str).chain(["nope", ""]) {
            assert_eq!(direct.token_to_id(t), parsed.token_to_id(t), "{t:?}");
        }
    }
}
