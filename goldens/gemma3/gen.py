#!/usr/bin/env python3
"""Generate golden values for gemma-3-270m (Q4_K_M GGUF) -> goldens/gemma3/gemma3.json.

The reference is llama.cpp through llama-cpp-python (the library built by bench/setup_peers.sh):

* "tokenize": ids of ~30 varied strings (unicode, emoji, code, whitespace runs, the empty string,
  special-token texts), with BOS as the model asks and special-token texts read as plain text; a
  few again with special-token texts parsed; and the text llama.cpp decodes the ids back to.
* "generate": greedy ids (argmax at every step) on a few prompts, with llama.cpp's default f16 KV
  cache and again with an f32 KV cache, plus the largest logits at the first generated position.

Run with the peers venv:

    LLAMA_CPP_LIB_PATH=$CANON_PEERS/llama.cpp-build/bin \\
        $CANON_PEERS/venv/bin/python goldens/gemma3/gen.py [--model PATH] [--out PATH]

The model defaults to $CANON_HOME/assets/gemma3-1.0.0/gemma-3-270m-q4_k_m.gguf (CANON_HOME
defaults to ~/.cache/canon; `canon assets fetch gemma3` puts it there).
"""

import argparse
import hashlib
import json
import os
import platform
from importlib import metadata

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
CANON_HOME = os.environ.get("CANON_HOME", os.path.expanduser("~/.cache/canon"))
DEFAULT_MODEL = os.path.join(CANON_HOME, "assets", "gemma3-1.0.0", "gemma-3-270m-q4_k_m.gguf")

MAX_TOKENS = 24
TOP_N = 16

TEXTS = [
    "The capital of France is",
    "",
    " ",
    "Hello",
    " Hello",
    "Hello world",
    "hello  world   with    runs",
    "tabs\tand\ttabs\t\tend",
    "line one\nline two\n\nline four\n\n\n",
    "   leading and trailing   ",
    "In 2024, the café served 3 crème brûlées and 12½ éclairs.",
    "Grüße aus Köln — naïve façade, coöperate.",
    "日本語のテキストと中文文本。",
    "한국어 문장입니다.",
    "Привет, мир! Как дела?",
    "مرحبا بالعالم",
    "emoji: 😀🎉👍🏽 and 👨‍👩‍👧‍👦 family",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "fn main() { println!(\"{}\", 1 + 2); }",
    "<html><body><div class=\"x\">Hi</div></body></html>",
    "numbers: 1234567890 3.14159 -42 1e-6 0x1F",
    "URL: https://example.com/path?query=1&b=2#frag",
    "a\u00a0non-breaking space and a zero\u200bwidth",
    "control chars \u0001\u0002 and a bell \u0007",
    "<start_of_turn>user\nHi<end_of_turn>",
    "<bos> not special here <eos>",
    "Ünïcödé ÀÉÎÕÜ ßœæ ŁŚŻ",
    "mathematical 𝔸𝔹ℂ ∀x∈ℝ: x² ≥ 0",
    "CamelCaseIdentifier snake_case_identifier kebab-case-identifier",
    "!!!???...,,,;;;:::",
    "\n",
    "    indented by four",
]

SPECIAL_TEXTS = [
    "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n",
    "<bos>text after a literal bos",
]

PROMPTS = [
    {"name": "capital_france", "prompt": "The capital of France is"},
    {"name": "once_upon", "prompt": "Once upon a time, in a small village,"},
    {"name": "code_fibonacci", "prompt": "def fibonacci(n):"},
    {"name": "digits_unicode", "prompt": "In 2024, the café served 3 crème brûlées and"},
]


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


class LlamaRef:
    def __init__(self, model_path, threads, f32_kv=False):
        import llama_cpp

        self.lc = llama_cpp
        kw = dict(n_ctx=1024, n_threads=threads, n_threads_batch=threads, verbose=False, seed=0)
        if f32_kv:
            kw.update(type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
        self.llm = llama_cpp.Llama(model_path=model_path, **kw)
        self.n_vocab = self.llm.n_vocab()
        self.eog = [t for t in range(self.n_vocab) if self.lc.llama_vocab_is_eog(self.llm._model.vocab, t)]

    def tokenize(self, text, special):
        return self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=special)

    def detokenize(self, ids):
        return self.llm.detokenize(ids).decode("utf-8", errors="replace")

    def _last_logits(self):
        ptr = self.lc.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).astype(np.float32).copy()

    def greedy(self, ids):
        """Prompt as one batch, then one token at a time; argmax at every step; stops after an
        end-of-generation id (kept)."""
        self.llm.reset()
        self.llm.eval(ids)
        first = self._last_logits()
        logits = first
        gen = []
        for _ in range(MAX_TOKENS):
            t = int(np.argmax(logits))
            gen.append(t)
            if t in self.eog:
                break
            self.llm.eval([t])
            logits = self._last_logits()
        return gen, first


def top(row):
    idx = np.argsort(-row)[:TOP_N]
    return {"ids": [int(i) for i in idx], "values": [float(row[i]) for i in idx]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.environ.get("GEMMA3_GGUF", DEFAULT_MODEL))
    ap.add_argument("--out", default=os.path.join(HERE, "gemma3.json"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    lc = LlamaRef(args.model, args.threads)
    tokenize = []
    for text in TEXTS:
        ids = lc.tokenize(text, special=False)
        tokenize.append({"text": text, "parse_special": False, "ids": ids, "decoded": lc.detokenize(ids[1:])})
    for text in SPECIAL_TEXTS:
        ids = lc.tokenize(text, special=True)
        tokenize.append({"text": text, "parse_special": True, "ids": ids, "decoded": lc.detokenize(ids[1:])})

    lc32 = LlamaRef(args.model, args.threads, f32_kv=True)
    generate = []
    for case in PROMPTS:
        ids = lc.tokenize(case["prompt"], special=False)
        gen, first = lc.greedy(ids)
        gen32, first32 = lc32.greedy(ids)
        generate.append(
            {
                "name": case["name"],
                "prompt": case["prompt"],
                "prompt_ids": ids,
                "greedy_ids_llamacpp": gen,
                "greedy_ids_llamacpp_f32kv": gen32,
                "first_logits_llamacpp_f32kv": top(first32),
                "first_logits_max_abs_f16kv_vs_f32kv": float(np.max(np.abs(first - first32))),
            }
        )
        print(case["name"], gen32[:8], "f16 == f32 kv:", gen == gen32)

    doc = {
        "model": os.path.basename(args.model),
        "model_sha256": sha256_file(args.model),
        "eog_ids": lc.eog,
        "peers": {
            "llama_cpp_python": pkg_version("llama_cpp_python"),
            "numpy": np.__version__,
            "machine": platform.machine(),
            "threads": args.threads,
        },
        "max_tokens": MAX_TOKENS,
        "tokenize": tokenize,
        "generate": generate,
    }
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write("\n")
    os.replace(tmp, args.out)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
