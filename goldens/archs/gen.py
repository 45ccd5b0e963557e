#!/usr/bin/env python3
"""Tiny random-weight Qwen2, Phi-3, Mistral, scaled-RoPE LLaMA and Gemma 3 models, and their golden
outputs -> goldens/archs/.

No real Qwen2 / Phi-3 weights are needed: the script builds small models with fixed seeds (2 layers,
d = 64, 4 query heads / 2 KV heads, FFN 128) over a small byte-level BPE vocabulary trained here on
a fixed text, writes each as

* an HF folder (`<name>-hf/`: config.json, model.safetensors in f16, tokenizer.json) through
  transformers' `save_pretrained`, and
* GGUF files (`<name>.f16.gguf`, `<name>.q8_0.gguf`, plus `qwen2.q4_0.gguf`) through the `gguf`
  package, with llama.cpp's tensor names and metadata (Qwen2 and Phi-3 only: llama.cpp runs
  Mistral as `llama`, without a sliding window),

and records in `archs.json`, for a few prompts: transformers' f32 logits at the last prompt position
and its greedy ids (20 tokens, with the top-1/top-2 logit gap of each step), and llama.cpp's greedy
ids for each GGUF file (llama-cpp-python over the peers' llama.cpp build).

Weights are scaled so logits spread (std of a few units) and greedy choices are rarely near-ties.

Run with the peers venv:

    LLAMA_CPP_LIB_PATH=$CANON_PEERS/llama.cpp-build/bin $CANON_PEERS/venv/bin/python goldens/archs/gen.py

`--only llama3,llamalin` regenerates just those models and merges them into the existing
archs.json (the other models' files and records stay as they are).
"""

import argparse
import copy
import hashlib
import json
import os
import shutil
import sys
from importlib import metadata

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
MAX_TOKENS = 20
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village, there lived a tiny model that",
]

TEXT = """
The quick brown fox jumps over the lazy dog. A tiny model reads the text and learns to merge the
pairs of bytes it sees most often. Once upon a time, in a small village, there lived an old
baker who made bread every morning. The capital of France is Paris; the capital of Italy is Rome.
def fibonacci(n):
    if n < 2:
        return n
    return fibonacci(n - 1) + fibonacci(n - 2)
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 2024. Shopping list: apples, bread, milk, cheese and tea.
"""

COMMON = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read())
    return h.hexdigest()


def pkg_version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


# ------------------------------------------------------------------------------------------------
# vocabulary
# ------------------------------------------------------------------------------------------------
def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([TEXT] * 4, trainer=trainer)
    return tok


def vocab_lists(tok):
    """Tokens by id, llama.cpp token types, merges as 'a b' strings (from the tokenizer's JSON)."""
    doc = json.loads(tok.to_str())
    vocab = doc["model"]["vocab"]
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    special = {a["content"] for a in doc["added_tokens"]}
    types = [3 if t in special else 1 for t in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in doc["model"]["merges"]]
    return tokens, types, merges


# ------------------------------------------------------------------------------------------------
# models
# ------------------------------------------------------------------------------------------------
def randomize(model, seed, out_scale, norm_center=1.0, embed_std=1.0, post_norm_center=None):
    """Weights with spread logits: N(0, 1/fan_in) matrices (the output projections of attention
    and FFN × `out_scale`), N(0, embed_std²) embeddings, norms near `norm_center` (1; Gemma's
    stored `w` of its `(1 + w)` norms near 0; Gemma's norms of the attention and FFN outputs near
    `post_norm_center`), biases N(0, 0.5)."""
    g = torch.Generator().manual_seed(seed)
    post = ("post_attention_layernorm.weight", "post_feedforward_layernorm.weight")
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if post_norm_center is not None and name.endswith(post):
                p.copy_(post_norm_center + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("norm.weight"):
                p.copy_(norm_center + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                p.copy_(embed_std * torch.randn(p.shape, generator=g))
            else:
                scale = out_scale if name.endswith(("o_proj.weight", "down_proj.weight")) else 1.0
                p.copy_(scale * torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
            # Rounded to f16, the precision of the files: every format holds the same values.
            p.copy_(p.half().float())


def make_model(arch, vocab, seed):
    import transformers as tf

    if arch == "qwen2":
        cfg = tf.Qwen2Config(
            vocab_size=vocab,
            rope_theta=500.0,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            use_sliding_window=False,
            bos_token_id=0,
            eos_token_id=0,
            **COMMON,
        )
        m = tf.Qwen2ForCausalLM(cfg)
    elif arch == "phi3":
        cfg = tf.Phi3Config(
            vocab_size=vocab,
            rope_theta=10000.0,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            original_max_position_embeddings=256,
            rope_scaling=None,
            sliding_window=None,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
            **COMMON,
        )
        m = tf.Phi3ForCausalLM(cfg)
    elif arch == "mistral":
        cfg = tf.MistralConfig(
            vocab_size=vocab,
            rope_theta=10000.0,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            sliding_window=4,
            bos_token_id=0,
            eos_token_id=0,
            **COMMON,
        )
        m = tf.MistralForCausalLM(cfg)
    elif arch in ("llama3", "llamalin"):
        # Scaled RoPE: Llama 3's per-frequency factors (an original context of 64 positions, so
        # that most of these 8 rotary pairs are slowed, one blended) or linear interpolation.
        scaling = (
            {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
             "original_max_position_embeddings": 64}
            if arch == "llama3"
            else {"rope_type": "linear", "factor": 4.0}
        )
        cfg = tf.LlamaConfig(
            vocab_size=vocab,
            rope_theta=50000.0,
            rope_scaling=scaling,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            bos_token_id=0,
            eos_token_id=0,
            **COMMON,
        )
        m = tf.LlamaForCausalLM(cfg)
    elif arch == "gemma3":
        # Gemma 3's block: 6 layers so that the default pattern of 6 (llama.cpp's fixed one) has
        # one global layer (5); a 4-token window on the others; head_dim 32 (not d / heads) with
        # one KV head, as gemma-3-270m; RoPE base 1,000 on local layers and 50,000 with linear
        # scaling (factor 4) on the global one (Gemma 3 4B+ scale only global layers); final
        # logit soft-capping. llama.cpp scales queries by 1/sqrt(head_dim) (1/sqrt(d / heads)
        # only for the 62-layer 27B model), so query_pre_attn_scalar = head_dim here.
        cfg = tf.Gemma3TextConfig(
            vocab_size=vocab,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=6,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=32,
            query_pre_attn_scalar=32,
            sliding_window=4,
            max_position_embeddings=256,
            rope_parameters={
                "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 50000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 1000.0},
            },
            final_logit_softcapping=GEMMA_SOFTCAP,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
        )
        m = tf.Gemma3ForCausalLM(cfg)
        # Norm weights are HF's w of `norm(x)·(1 + w)`: near 0, except the norms of the attention
        # and FFN outputs (near GEMMA_POST_NORM): the embeddings are multiplied by sqrt(64) = 8,
        # and with the tied head larger block outputs keep the current token from winning.
        randomize(m, seed, 1.0, norm_center=0.0, embed_std=GEMMA_EMBED_STD, post_norm_center=GEMMA_POST_NORM)
        return m.eval().float()
    else:
        raise ValueError(arch)
    # A tied head favours the current token's own embedding: larger block outputs counter it.
    randomize(m, seed, 4.0 if cfg.tie_word_embeddings else 1.0)
    return m.eval().float()


GEMMA_SOFTCAP = 30.0
GEMMA_EMBED_STD = 1.0
GEMMA_POST_NORM = 12.0

GGUF_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.qkv_proj.weight": "attn_qkv.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    # Phi-3: gate rows first, then up rows, stored as one `ffn_up` (llama.cpp's swiglu splits it)
    "mlp.gate_up_proj.weight": "ffn_up.weight",
}


# Gemma 3's four block norms and q/k norms (llama.cpp's converter: `ffn_norm` is HF's
# pre-feedforward norm; `post_attention_layernorm` is the norm of the attention output).
GEMMA3_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "post_attention_norm.weight",
    "pre_feedforward_layernorm.weight": "ffn_norm.weight",
    "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
}


def gguf_name(hf, arch=None):
    if hf in GGUF_NAMES:
        return GGUF_NAMES[hf]
    parts = hf.split(".")
    assert parts[0] == "model" and parts[1] == "layers", hf
    tail = ".".join(parts[3:])
    if arch == "gemma3" and tail in GEMMA3_LAYER_NAMES:
        return "blk.%s.%s" % (parts[2], GEMMA3_LAYER_NAMES[tail])
    return "blk.%s.%s" % (parts[2], LAYER_NAMES[tail])


def llama3_rope_factors(cfg):
    """The divisors of each rotary frequency for Llama 3's scaling, as llama.cpp's converter
    writes them into `rope_freqs.weight`."""
    import math

    sc = cfg.rope_scaling if getattr(cfg, "rope_scaling", None) else cfg.rope_parameters
    dim = cfg.hidden_size // cfg.num_attention_heads
    base = float(sc.get("rope_theta", getattr(cfg, "rope_theta", 10000.0)))
    factor, low, high = sc["factor"], sc.get("low_freq_factor", 1.0), sc.get("high_freq_factor", 4.0)
    old = sc.get("original_max_position_embeddings", 8192)
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    out = []
    for f in freqs.tolist():
        wavelen = 2 * math.pi / f
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def permute_llama(a, n_head):
    """llama.cpp's converter reorders LLaMA's Q/K rows for its interleaved (GPT-J) RoPE."""
    return a.reshape(n_head, 2, a.shape[0] // n_head // 2, *a.shape[1:]).swapaxes(1, 2).reshape(a.shape)


def rope_scaling_of(cfg):
    sc = getattr(cfg, "rope_scaling", None) or getattr(cfg, "rope_parameters", None) or {}
    return sc.get("rope_type", sc.get("type", "default"))


def write_gguf(model, arch, tok, path, qtype):
    import gguf

    cfg = model.config
    tokens, types, merges = vocab_lists(tok)
    llama = arch in ("llama3", "llamalin")
    w = gguf.GGUFWriter(path, "llama" if llama else arch)
    # (not "phi3" in the name: llama.cpp then expects Phi-3's own special tokens)
    w.add_name("tiny random model")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    gemma = arch == "gemma3"
    if gemma:
        # The keys of the real gemma-3-270m file (no rope.dimension_count), plus the local
        # RoPE base, the soft-capping and the global layers' linear scaling.
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
        w.add_sliding_window(cfg.sliding_window)
        full, local = cfg.rope_parameters["full_attention"], cfg.rope_parameters["sliding_attention"]
        w.add_rope_freq_base(float(full["rope_theta"]))
        w.add_rope_freq_base_swa(float(local["rope_theta"]))
        w.add_final_logit_softcapping(float(cfg.final_logit_softcapping))
        kind = full.get("rope_type", "default")
        sc = full
    else:
        w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
        theta = getattr(cfg, "rope_theta", None) or cfg.rope_parameters["rope_theta"]
        w.add_rope_freq_base(float(theta))
        kind = rope_scaling_of(cfg)
        sc = getattr(cfg, "rope_scaling", None) or cfg.rope_parameters
    if kind == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(sc["factor"]))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    if arch == "phi3":
        w.add_rope_scaling_orig_ctx_len(cfg.original_max_position_embeddings)
    w.add_file_type({"f16": 1, "q8_0": 7, "q4_0": 2}[qtype])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    w.add_add_bos_token(False)
    qt = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}.get(qtype)
    if kind == "llama3":
        w.add_tensor("rope_freqs.weight", llama3_rope_factors(cfg))
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        a = t.detach().float().numpy()
        if gemma and name.endswith("norm.weight"):
            # llama.cpp's converter stores Gemma's `1 + w` (in f32, as transformers adds it).
            a = a + 1.0
        if llama and name.endswith("q_proj.weight"):
            a = permute_llama(a, cfg.num_attention_heads)
        elif llama and name.endswith("k_proj.weight"):
            a = permute_llama(a, cfg.num_key_value_heads)
        g = gguf_name(name, arch)
        if a.ndim == 1:
            w.add_tensor(g, a.astype(np.float32))
        elif qt is not None:
            q = gguf.quants.quantize(a, qt)
            w.add_tensor(g, q, raw_shape=q.shape, raw_dtype=qt)
        else:
            w.add_tensor(g, a.astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# ------------------------------------------------------------------------------------------------
# references
# ------------------------------------------------------------------------------------------------
def hf_greedy(model, ids):
    """Greedy decoding over full forward passes (no cache): ids, last-prompt logits, step gaps."""
    seq = list(ids)
    gaps = []
    first = None
    with torch.no_grad():
        for _ in range(MAX_TOKENS):
            x = torch.tensor([seq])
            logits = model(input_ids=x).logits[0, -1].float()
            if first is None:
                first = logits.numpy().tolist()
            top = torch.topk(logits, 2).values
            gaps.append(float(top[0] - top[1]))
            seq.append(int(torch.argmax(logits)))
    return seq[len(ids):], first, gaps


def llamacpp_greedy(path, ids, threads):
    import llama_cpp

    llm = llama_cpp.Llama(model_path=path, n_ctx=256, n_threads=threads, n_threads_batch=threads, verbose=False, seed=0)
    n_vocab = llm.n_vocab()

    def last():
        ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(n_vocab,)).astype(np.float32).copy()

    out = []
    llm.reset()
    llm.eval(list(ids))
    logits = last()
    first = logits
    for _ in range(MAX_TOKENS):
        t = int(np.argmax(logits))
        out.append(t)
        llm.eval([t])
        logits = last()
    return out, first


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", default=HERE)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-llamacpp", action="store_true")
    ap.add_argument("--only", default="", help="comma list of models to regenerate, merged into the existing archs.json")
    args = ap.parse_args()
    only = [a for a in args.only.split(",") if a]
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)

    tok = build_tokenizer()
    vocab = tok.get_vocab_size()
    print("vocabulary:", vocab, "tokens", file=sys.stderr)
    prompt_ids = [tok.encode(p).ids for p in PROMPTS]

    out = {"generated_by": "goldens/archs/gen.py", "max_tokens": MAX_TOKENS, "vocab_size": vocab, "models": {}}
    files = {}
    if only:
        with open(os.path.join(args.out_dir, "archs.json")) as f:
            out = json.load(f)
        files = out.pop("files_sha256")
        out.pop("packages", None)
        for arch in only:
            out["models"].pop(arch, None)
            files = {k: v for k, v in files.items() if not k.startswith(arch + "-hf/") and not k.startswith(arch + ".")}
    for seed, arch in enumerate(["qwen2", "phi3", "mistral", "llama3", "llamalin", "gemma3"], start=1):
        if only and arch not in only:
            continue
        model = make_model(arch, vocab, seed)
        hf_dir = os.path.join(args.out_dir, "%s-hf" % arch)
        shutil.rmtree(hf_dir, ignore_errors=True)
        # A copy: `.to(float16)` would also round the RoPE frequency buffers of `model`.
        copy.deepcopy(model).to(torch.float16).save_pretrained(hf_dir, safe_serialization=True)
        tok.save(os.path.join(hf_dir, "tokenizer.json"))
        for f in ("generation_config.json",):
            p = os.path.join(hf_dir, f)
            if os.path.exists(p):
                os.remove(p)
        rec = {"hf_dir": os.path.basename(hf_dir), "cases": [], "gguf": {}}
        for p, ids in zip(PROMPTS, prompt_ids):
            gen, first, gaps = hf_greedy(model, ids)
            rec["cases"].append(
                {
                    "prompt": p,
                    "prompt_ids": ids,
                    "hf_greedy": gen,
                    "hf_gaps": [round(g, 4) for g in gaps],
                    "hf_last_logits": [round(x, 6) for x in first],
                }
            )
        for f in sorted(os.listdir(hf_dir)):
            files["%s/%s" % (os.path.basename(hf_dir), f)] = sha256_file(os.path.join(hf_dir, f))
        if arch != "mistral":
            qtypes = ["f16", "q8_0"] + (["q4_0"] if arch == "qwen2" else [])
            for qtype in qtypes:
                name = "%s.%s.gguf" % (arch, qtype)
                path = os.path.join(args.out_dir, name)
                write_gguf(model, arch, tok, path, qtype)
                files[name] = sha256_file(path)
                g = {"cases": []}
                if not args.no_llamacpp:
                    import llama_cpp

                    llm = llama_cpp.Llama(model_path=path, n_ctx=256, verbose=False)
                    for p, ids in zip(PROMPTS, prompt_ids):
                        lc_ids = llm.tokenize(p.encode(), add_bos=False, special=True)
                        gen, first = llamacpp_greedy(path, ids, args.threads)
                        g["cases"].append(
                            {
                                "prompt_ids_llamacpp": lc_ids,
                                "llamacpp_greedy": gen,
                                "llamacpp_last_logits_top8": np.argsort(-first)[:8].tolist(),
                            }
                        )
                    del llm
                rec["gguf"][name] = g
        out["models"][arch] = rec
    out["files_sha256"] = files
    out["packages"] = {
        k: pkg_version(k) for k in ["torch", "transformers", "tokenizers", "gguf", "numpy", "llama_cpp_python", "safetensors"]
    }
    with open(os.path.join(args.out_dir, "archs.json"), "w") as f:
        json.dump(out, f, indent=1)
    # summary
    for arch, rec in out["models"].items():
        if only and arch not in only:
            continue
        for i, c in enumerate(rec["cases"]):
            line = "%s case %d: min gap %.3f hf %s" % (arch, i, min(c["hf_gaps"]), c["hf_greedy"][:8])
            print(line, file=sys.stderr)
            for name, g in rec["gguf"].items():
                if g["cases"]:
                    lc = g["cases"][i]
                    same = sum(1 for _ in iter_eq(lc["llamacpp_greedy"], c["hf_greedy"]))
                    tok_eq = lc["prompt_ids_llamacpp"] == c["prompt_ids"]
                    print("   %s: equal prefix %d/%d, tokenization equal %s" % (name, same, MAX_TOKENS, tok_eq), file=sys.stderr)


def iter_eq(a, b):
    for x, y in zip(a, b):
        if x != y:
            return
        yield x


if __name__ == "__main__":
    main()
