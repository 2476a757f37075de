#!/usr/bin/python3
"""gen_checkpoint.py: writes a random-weight RoPE++ Llama checkpoint in HF layout (config.json +
model.safetensors, or N shards + model.safetensors.index.json). Tensors are generated and written in
chunks, so the 376M/776M presets need no full-size copies in memory.

    /usr/bin/python3 tools/gen_checkpoint.py --out /tmp/ec_tiny --preset tiny --mode ec
    /usr/bin/python3 tools/gen_checkpoint.py --out /tmp/ec_376m --preset 376m --mode ec --dtype bf16
    /usr/bin/python3 tools/gen_checkpoint.py --out /tmp/x --hidden 64 --layers 2 --heads 4 --kv-heads 2 \\
        --ffn 128 --vocab 512 --head-dim 16 --mode eh --no-rope-config --tied --yarn-factor 8

Weights (default, --std auto) are scaled so the model is far from degenerate: every linear input
sees unit-variance activations, q/k are large enough that attention scores spread over ~±2 (so RoPE
and the real/imaginary heads change the output visibly), logits have std ~1, and norm weights are
1 + 0.1·N(0,1). --std X instead draws every matrix from N(0, X) (the usual init; near-uniform attention).
"""
import argparse
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ropepp_ref.model import RopePPConfig, write_checkpoint_files  # noqa: E402

PRESETS = {
    "tiny": dict(hidden=64, layers=2, heads=4, kv_heads=2, ffn=128, head_dim=16, vocab=512),
    "376m": dict(hidden=1024, layers=8, heads=8, kv_heads=4, ffn=3584, head_dim=128, vocab=128256),
    "776m": dict(hidden=1536, layers=12, heads=12, kv_heads=6, ffn=5376, head_dim=128, vocab=128256),
}
DTYPES = {"bf16": ("BF16", "bfloat16"), "f16": ("F16", "float16"), "f32": ("F32", "float32")}
IMAG_MODE = {"rope": (False, "imag1"), "eh": (True, "imag1"), "ec": (True, "imag2")}


def build_config(a):
    imag, imag_mode = IMAG_MODE[a.mode]
    big_vocab = a.vocab == 128256
    cfg = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": a.hidden, "intermediate_size": a.ffn, "num_hidden_layers": a.layers,
        "num_attention_heads": a.heads, "num_key_value_heads": a.kv_heads, "head_dim": a.head_dim,
        "vocab_size": a.vocab, "max_position_embeddings": a.max_pos, "rms_norm_eps": a.eps,
        "rope_theta": a.theta, "tie_word_embeddings": a.tied,
        "bos_token_id": 128000 if big_vocab else 1, "eos_token_id": 128001 if big_vocab else 2,
        "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0, "initializer_range": 0.02,
        "torch_dtype": DTYPES[a.dtype][1], "use_cache": True, "rope_scaling": None,
    }
    if a.no_rope_config:
        if a.yarn_factor:
            sys.exit("error: --yarn-factor needs rope_config (the paper's YaRN has no HF rope_scaling form)")
        if a.pi_factor:
            cfg["rope_scaling"] = {"rope_type": "linear", "type": "linear", "factor": a.pi_factor}
    else:
        rc = {"imag": imag, "imag_mode": imag_mode}
        if a.yarn_factor:
            rc.update(factor=a.yarn_factor, yarn=True)
        elif a.pi_factor:
            rc["factor"] = a.pi_factor
        cfg["rope_config"] = rc
    return cfg


def tensor_std(name, a, n_attn):
    """Standard deviation of a weight matrix (see the module docstring)."""
    if a.std != "auto":
        return float(a.std)
    D = a.hidden
    if name == "model.embed_tokens.weight":
        return D ** -0.25 if a.tied else 1.0   # tied: also the output matrix, keep logits moderate
    if name == "lm_head.weight":
        return D ** -0.5
    if name.endswith(("q_proj.weight", "k_proj.weight")):
        return a.qk_gain * D ** -0.5
    if name.endswith("o_proj.weight"):
        return (n_attn * a.head_dim) ** -0.5
    if name.endswith("down_proj.weight"):
        return a.ffn ** -0.5
    return D ** -0.5                            # v, gate, up


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--preset", choices=sorted(PRESETS))
    for k in ("hidden", "layers", "heads", "kv-heads", "ffn", "vocab", "head-dim"):
        p.add_argument(f"--{k}", type=int)
    p.add_argument("--mode", choices=sorted(IMAG_MODE), default="ec")
    p.add_argument("--no-rope-config", action="store_true", help="omit rope_config (mode only from shapes)")
    p.add_argument("--tied", action="store_true", help="tie_word_embeddings (no lm_head.weight)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--theta", type=float, default=10000.0)
    p.add_argument("--pi-factor", type=float, default=None, help="linear position interpolation factor")
    p.add_argument("--yarn-factor", type=float, default=None, help="the paper's YaRN factor")
    p.add_argument("--shards", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-pos", type=int, default=4096)
    p.add_argument("--eps", type=float, default=1e-5, help="rms_norm_eps")
    p.add_argument("--std", default="auto", help="'auto' (scaled, see above) or a fixed std for all matrices")
    p.add_argument("--qk-gain", type=float, default=1.2, help="auto: q/k entries have std ~ this")
    a = p.parse_args(argv)
    if a.pi_factor and a.yarn_factor:
        p.error("--pi-factor and --yarn-factor are exclusive")
    for k, v in (PRESETS[a.preset] if a.preset else {}).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    missing = [k for k in ("hidden", "layers", "heads", "ffn", "vocab") if getattr(a, k) is None]
    if missing:
        p.error(f"give --preset or all of --hidden --layers --heads --ffn --vocab (missing {missing})")
    a.kv_heads = a.kv_heads or a.heads
    a.head_dim = a.head_dim or a.hidden // a.heads
    if a.shards < 1:
        p.error("--shards must be >= 1")

    cfg_dict = build_config(a)
    cfg = RopePPConfig.from_dict(cfg_dict)
    shapes = cfg.expected_shapes(a.mode)
    n_attn = cfg.heads(a.mode)[2]
    st_dtype = DTYPES[a.dtype][0]
    names = list(shapes)
    specs = [(n, st_dtype, shapes[n]) for n in names]

    def produce(name):
        g = torch.Generator().manual_seed(a.seed * 1000003 + names.index(name))
        shape = shapes[name]
        if name.endswith("norm.weight"):
            yield 1.0 + 0.1 * torch.randn(shape, generator=g)
            return
        std, cols = tensor_std(name, a, n_attn), shape[1]
        rows_per_chunk = max(1, (1 << 23) // cols)
        for r in range(0, shape[0], rows_per_chunk):
            n = min(rows_per_chunk, shape[0] - r)
            yield torch.randn((n, cols), generator=g).mul_(std)

    t0 = time.time()
    write_checkpoint_files(a.out, specs, produce, a.shards)
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(cfg_dict, f, indent=2)
    n_params = sum(math.prod(s) for s in shapes.values())
    print(f"wrote {a.out}: mode {a.mode}, {n_params / 1e6:.2f}M params, {a.dtype}, {a.shards} shard(s), "
          f"{time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
