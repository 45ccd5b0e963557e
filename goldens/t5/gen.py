#!/usr/bin/env python3
"""Golden values for T5 (paper 8) -> goldens/t5/t5.json and goldens/t5/tiny_t5.safetensors.

1. The relative-position bucket of every offset rp = key - query in [-300, 300] (plus +-1000), from
   transformers' own `T5Attention._relative_position_bucket` (num_buckets 32, max_distance 128),
   bidirectional (encoder) and causal (decoder).
2. A tiny T5ForConditionalGeneration with random weights (seed 0; relu and gated-gelu variants):
   its weights under HF names (safetensors), a padded batch of source ids with its mask, target
   decoder inputs, the encoder states and the logits, all float32 on the CPU, eval mode.

    $CANON_PEERS/venv/bin/python goldens/t5/gen.py [--out-dir goldens/t5]

Needs torch, transformers and safetensors (the peers venv of bench/setup_peers.sh).
"""

import argparse
import json
import os
import platform
from importlib import metadata

import torch
from safetensors.torch import save_file
from transformers import T5Config, T5ForConditionalGeneration
from transformers.models.t5.modeling_t5 import T5Attention

HERE = os.path.dirname(os.path.abspath(__file__))


def buckets(bidirectional):
    rps = list(range(-300, 301)) + [-1000, 1000]
    rp = torch.tensor(rps, dtype=torch.long)
    b = T5Attention._relative_position_bucket(
        rp, bidirectional=bidirectional, num_buckets=32, max_distance=128
    )
    return {"rp": rps, "bucket": b.tolist()}


def tiny_model(ffn, seed):
    torch.manual_seed(seed)
    cfg = T5Config(
        vocab_size=40,
        d_model=16,
        d_kv=4,
        d_ff=24,
        num_layers=2,
        num_decoder_layers=3,
        num_heads=3,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        dropout_rate=0.0,
        layer_norm_epsilon=1e-6,
        feed_forward_proj=ffn,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    m = T5ForConditionalGeneration(cfg).eval()
    # The default init is already random; make the relative-bias tables larger so that a bucket
    # mix-up changes the logits visibly.
    with torch.no_grad():
        for stack in (m.encoder, m.decoder):
            t = stack.block[0].layer[0].SelfAttention.relative_attention_bias.weight
            t.normal_(0.0, 1.0)
    return cfg, m


def case(ffn, seed, out_dir):
    cfg, m = tiny_model(ffn, seed)
    g = torch.Generator().manual_seed(seed + 100)
    # Two sources: the second is padded after 5 tokens. Length 9 spans exact and log buckets
    # only up to 8; a second, long case (150 tokens) reaches the saturated buckets.
    src = torch.randint(2, cfg.vocab_size, (2, 9), generator=g)
    mask = torch.ones(2, 9, dtype=torch.long)
    src[1, 5:] = 0
    mask[1, 5:] = 0
    tgt = torch.randint(2, cfg.vocab_size, (2, 7), generator=g)
    tgt[:, 0] = 0  # decoder start
    long_src = torch.randint(2, cfg.vocab_size, (1, 150), generator=g)
    long_tgt = torch.randint(2, cfg.vocab_size, (1, 140), generator=g)
    long_tgt[:, 0] = 0
    with torch.no_grad():
        out = m(input_ids=src, attention_mask=mask, decoder_input_ids=tgt)
        enc = m.encoder(input_ids=src, attention_mask=mask).last_hidden_state
        lout = m(
            input_ids=long_src,
            attention_mask=torch.ones_like(long_src),
            decoder_input_ids=long_tgt,
        )
    sd = {k: v.contiguous() for k, v in m.state_dict().items()}
    # encoder.embed_tokens / decoder.embed_tokens / lm_head alias `shared` (tied).
    for alias in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"):
        sd.pop(alias, None)
    name = "tiny_t5_%s.safetensors" % ffn.replace("-", "_")
    save_file(sd, os.path.join(out_dir, name))

    def r(t):
        return [round(float(x), 7) for x in t.flatten().tolist()]

    return {
        "weights": name,
        "config": {
            "vocab_size": cfg.vocab_size,
            "d_model": cfg.d_model,
            "d_kv": cfg.d_kv,
            "d_ff": cfg.d_ff,
            "num_layers": cfg.num_layers,
            "num_decoder_layers": cfg.num_decoder_layers,
            "num_heads": cfg.num_heads,
            "feed_forward_proj": ffn,
            "layer_norm_epsilon": cfg.layer_norm_epsilon,
            "scale_decoder_outputs": bool(cfg.scale_decoder_outputs),
        },
        "src": src.tolist(),
        "src_mask": mask.tolist(),
        "tgt": tgt.tolist(),
        "encoder_out": r(enc),
        "logits_shape": list(out.logits.shape),
        "logits": r(out.logits),
        "long_src": long_src.tolist(),
        "long_tgt": long_tgt.tolist(),
        # only the last 4 target positions (the long offsets), to keep the file small
        "long_logits_last4": r(lout.logits[:, -4:, :]),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out-dir", default=HERE)
    a = ap.parse_args()
    torch.set_num_threads(2)
    doc = {
        "generated_by": "goldens/t5/gen.py",
        "packages": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": metadata.version("transformers"),
            "safetensors": metadata.version("safetensors"),
        },
        "buckets": {"bidirectional": buckets(True), "causal": buckets(False)},
        "models": [case("relu", 0, a.out_dir), case("gated-gelu", 1, a.out_dir)],
    }
    with open(os.path.join(a.out_dir, "t5.json"), "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
