"""model.py: a RoPE++ Llama decoder in plain PyTorch, written for readability (llama2.c style).

This is the oracle the C++ engine is tested against (in float64 on the CPU) and the model the trainer
trains (in bf16/fp32 on a GPU, attn_impl="sdpa"). Parameter names are the HF tensor names, so
`model.state_dict()` keys equal the checkpoint's.

RoPE++ in short. For a q head at position t and the RoPE tables cos/sin (emb = cat(freqs, freqs)):
    q_re = q*cos + rot(q)*sin          (ordinary RoPE)          rot(x) = cat(-x[d/2:], x[:d/2])
    q_im = q*sin - rot(q)*cos          (= -rot(q_re))
Both attend to the same RoPE'd keys and values as two attention heads with their own softmaxes,
interleaved [re0, im0, re1, im1, ...] into o_proj. Attention head j reads kv head j // (n_attn / n_kv).
    mode   q heads  kv heads  attention heads   rope_config
    rope   H        KV        H                 imag false (or absent)
    eh     H/2      KV/2      H                 imag true, imag_mode "imag1"
    ec     H        KV        2H                imag true, imag_mode "imag2"
H, KV are num_attention_heads / num_key_value_heads as written in config.json.

Incremental decoding (tools/bench/hf_compare.py): model(ids, cache=KVCache(model, max_len)) appends to a static
KV cache; the logits equal the full forward's (tests/test_reference_self.py, to 1e-10 in float64).
"""
import json
import math
import os
import re
import struct
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

MODES = ("rope", "eh", "ec")
_LOW_PRECISION = (torch.float16, torch.bfloat16)


# ----------------------------------------------------------------------------------------------------
# config

@dataclass
class RopePPConfig:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int            # H as written in config.json
    num_key_value_heads: int            # KV as written
    head_dim: int
    vocab_size: int
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = False
    mode: Optional[str] = None          # from rope_config; None: infer from tensor shapes
    scaling: str = "none"               # "none" | "linear" (PI) | "yarn" (the paper's YaRN)
    factor: float = 1.0
    raw: dict = field(default_factory=dict, repr=False)  # the config.json dict as read

    @classmethod
    def from_json(cls, path):
        with open(path) as f:
            return cls.from_dict(json.load(f))

    @classmethod
    def from_dict(cls, d):
        for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
            if k not in d:
                raise ValueError(f"config.json: missing key '{k}'")
        H = int(d["num_attention_heads"])
        KV = int(d.get("num_key_value_heads") or H)
        hd = int(d.get("head_dim") or d["hidden_size"] // H)
        mode, scaling, factor = None, "none", 1.0
        rc = d.get("rope_config") or None          # {} (ALiBi-style configs) counts as absent
        if rc is not None:
            if not rc.get("imag", False):
                mode = "rope"
            elif rc.get("imag_mode") == "imag1":
                mode = "eh"
            elif rc.get("imag_mode") == "imag2":
                mode = "ec"
            else:
                raise ValueError(f"config.json: rope_config.imag_mode {rc.get('imag_mode')!r} not supported "
                                 "(expected 'imag1' or 'imag2')")
            if rc.get("yarn", False):
                if "factor" not in rc:
                    raise ValueError("config.json: rope_config.yarn needs rope_config.factor")
                scaling, factor = "yarn", float(rc["factor"])
            elif "factor" in rc:
                scaling, factor = "linear", float(rc["factor"])
        elif d.get("rope_scaling"):
            rs = d["rope_scaling"]
            kind = rs.get("rope_type", rs.get("type"))
            if kind == "linear":
                scaling, factor = "linear", float(rs["factor"])
            elif kind not in (None, "default"):
                raise ValueError(f"config.json: rope_scaling type {kind!r} not supported (only 'linear')")
        if factor <= 0:
            raise ValueError(f"config.json: rope factor must be > 0, got {factor}")
        return cls(hidden_size=int(d["hidden_size"]), intermediate_size=int(d["intermediate_size"]),
                   num_hidden_layers=int(d["num_hidden_layers"]), num_attention_heads=H,
                   num_key_value_heads=KV, head_dim=hd, vocab_size=int(d["vocab_size"]),
                   max_position_embeddings=int(d.get("max_position_embeddings", 4096)),
                   rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
                   rope_theta=float(d.get("rope_theta", 10000.0)),
                   tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
                   mode=mode, scaling=scaling, factor=factor, raw=dict(d))

    def heads(self, mode):
        """(q heads, kv heads, attention heads) of `mode`."""
        H, KV = self.num_attention_heads, self.num_key_value_heads
        if mode == "rope":
            return H, KV, H
        if mode == "eh":
            if H % 2 or KV % 2:
                raise ValueError(f"EH needs even num_attention_heads/num_key_value_heads, got {H}/{KV}")
            return H // 2, KV // 2, H
        if mode == "ec":
            return H, KV, 2 * H
        raise ValueError(f"unknown mode {mode!r} (expected one of {MODES})")

    def expected_shapes(self, mode):
        """HF tensor name -> shape for `mode`."""
        D, Fi, V, hd = self.hidden_size, self.intermediate_size, self.vocab_size, self.head_dim
        nq, nkv, na = self.heads(mode)
        s = {"model.embed_tokens.weight": (V, D), "model.norm.weight": (D,)}
        if not self.tie_word_embeddings:
            s["lm_head.weight"] = (V, D)
        for i in range(self.num_hidden_layers):
            p = f"model.layers.{i}."
            s.update({p + "input_layernorm.weight": (D,), p + "post_attention_layernorm.weight": (D,),
                      p + "self_attn.q_proj.weight": (nq * hd, D), p + "self_attn.k_proj.weight": (nkv * hd, D),
                      p + "self_attn.v_proj.weight": (nkv * hd, D), p + "self_attn.o_proj.weight": (D, na * hd),
                      p + "mlp.gate_proj.weight": (Fi, D), p + "mlp.up_proj.weight": (Fi, D),
                      p + "mlp.down_proj.weight": (D, Fi)})
        return s


def infer_mode(config, q_shape, o_shape):
    """The modes whose q_proj/o_proj shapes match (a list; empty when none does)."""
    out = []
    for m in MODES:
        try:
            s = config.expected_shapes(m)
        except ValueError:
            continue
        if (tuple(q_shape) == s["model.layers.0.self_attn.q_proj.weight"]
                and tuple(o_shape) == s["model.layers.0.self_attn.o_proj.weight"]):
            out.append(m)
    return out


# ----------------------------------------------------------------------------------------------------
# rotary tables (always float64)

def inv_freq_and_mscale(config):
    """inv_freq [head_dim/2] float64 after PI/YaRN scaling, and the cos/sin magnitude scale."""
    d = config.head_dim
    inv_freq = 1.0 / config.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    if config.scaling == "linear":
        return inv_freq / config.factor, 1.0
    if config.scaling == "yarn":
        r = 4096 / 2 / math.pi * inv_freq
        gamma = torch.clamp((r - 1) / (32 - 1), min=0.0, max=1.0)
        inv_freq = (1 - gamma) * inv_freq / config.factor + gamma * inv_freq
        return inv_freq, 0.1 * math.log(config.factor) + 1
    return inv_freq, 1.0


def rope_tables(config, positions):
    """cos, sin [T, head_dim] float64 for integer positions [T]."""
    inv_freq, mscale = inv_freq_and_mscale(config)
    freqs = positions.to(torch.float64)[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos() * mscale, emb.sin() * mscale


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


# ----------------------------------------------------------------------------------------------------
# modules

def _linear(n_in, n_out, dtype, device):
    return nn.utils.skip_init(nn.Linear, n_in, n_out, bias=False, dtype=dtype, device=device)


class RMSNorm(nn.Module):
    def __init__(self, dim, eps, dtype, device):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype, device=device))

    def forward(self, x):
        xf = x.float() if x.dtype in _LOW_PRECISION else x
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def eager_attention(q, k, v, rep):
    """q [B, Ha, T, hd], k/v [B, Hkv, T, hd]; attention head j reads kv head j // rep. Causal."""
    T, hd = q.shape[2], q.shape[3]
    kv_of = torch.arange(q.shape[1], device=q.device) // rep
    k, v = k[:, kv_of], v[:, kv_of]
    scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(hd))           # [B, Ha, T, T]
    future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    scores = scores.masked_fill(future, float("-inf"))
    p = torch.softmax(scores, dim=-1, dtype=torch.float32 if q.dtype in _LOW_PRECISION else None)
    return p.to(v.dtype) @ v


def sdpa_attention(q, k, v, rep):
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    if hasattr(F, "scaled_dot_product_attention"):    # torch >= 2.0; scale defaults to 1/sqrt(hd)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return eager_attention(q, k, v, 1)


def cached_attention(q, k, v, rep, start, attn_impl="eager"):
    """Attention of T new queries over a KV cache. q [B, Ha, T, hd] at positions start..start+T-1;
    k/v [B, Hkv, start+T, hd] hold every position so far (the new ones last). Query t sees keys 0..start+t."""
    B, Ha, T, hd = q.shape
    L = k.shape[2]
    if attn_impl != "eager" and hasattr(F, "scaled_dot_product_attention"):
        if T == 1:   # one query per head: the `rep` heads of a kv head become its query rows; no mask, no K/V copy
            out = F.scaled_dot_product_attention(q.reshape(B, Ha // rep, rep, hd), k, v)
            return out.reshape(B, Ha, 1, hd)
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        if start == 0:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        seen = torch.ones(T, L, dtype=torch.bool, device=q.device).tril(start)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=seen)
    kv_of = torch.arange(Ha, device=q.device) // rep
    k, v = k[:, kv_of], v[:, kv_of]
    scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(hd))           # [B, Ha, T, L]
    future = torch.ones(T, L, dtype=torch.bool, device=q.device).triu(start + 1)
    scores = scores.masked_fill(future, float("-inf"))
    p = torch.softmax(scores, dim=-1, dtype=torch.float32 if q.dtype in _LOW_PRECISION else None)
    return p.to(v.dtype) @ v


class KVCache:
    """A static KV cache for incremental decoding: keys (after RoPE) and values of every layer,
    preallocated to max_len positions, plus the rotary tables of positions 0..max_len-1.

        cache = KVCache(model, max_len=T)
        logits = model(prompt_ids, cache=cache)          # positions 0..P-1
        logits = model(next_id[:, None], cache=cache)     # position P, and so on
    """

    def __init__(self, model, max_len, batch=1):
        p = model.model.embed_tokens.weight
        cfg, (_, n_kv, _) = model.config, model.config.heads(model.mode)
        shape = (batch, n_kv, max_len, cfg.head_dim)
        self.k = [torch.zeros(shape, dtype=p.dtype, device=p.device) for _ in range(cfg.num_hidden_layers)]
        self.v = [torch.zeros(shape, dtype=p.dtype, device=p.device) for _ in range(cfg.num_hidden_layers)]
        cos, sin = rope_tables(cfg, torch.arange(max_len))
        self.cos, self.sin = cos.to(device=p.device, dtype=p.dtype), sin.to(device=p.device, dtype=p.dtype)
        self.max_len, self.pos = max_len, 0          # pos: positions filled so far

    def layer(self, i):
        return _LayerCache(self, i)

    def reset(self):
        self.pos = 0


class _LayerCache:
    def __init__(self, cache, i):
        self.cache, self.i, self.start = cache, i, cache.pos

    def append(self, k, v):
        """Stores k/v [B, Hkv, T, hd] at positions start..start+T-1; returns the cache's k, v up to there."""
        end = self.start + k.shape[2]
        kb, vb = self.cache.k[self.i], self.cache.v[self.i]
        kb[:, :, self.start:end] = k
        vb[:, :, self.start:end] = v
        return kb[:, :, :end], vb[:, :, :end]


class Attention(nn.Module):
    def __init__(self, config, mode, dtype, device):
        super().__init__()
        D, hd = config.hidden_size, config.head_dim
        self.n_q, self.n_kv, self.n_attn = config.heads(mode)
        self.imag, self.hd = mode != "rope", hd
        self.q_proj = _linear(D, self.n_q * hd, dtype, device)
        self.k_proj = _linear(D, self.n_kv * hd, dtype, device)
        self.v_proj = _linear(D, self.n_kv * hd, dtype, device)
        self.o_proj = _linear(self.n_attn * hd, D, dtype, device)

    def forward(self, x, cos, sin, attn_impl="eager", cache=None):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_q, self.hd).transpose(1, 2)     # [B, Hq, T, hd]
        k = self.k_proj(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)    # [B, Hkv, T, hd]
        v = self.v_proj(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)    # [B, Hkv, T, hd]
        q_re = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if self.imag:
            q_im = q * sin - rotate_half(q) * cos
            q_re = torch.stack([q_re, q_im], dim=2).reshape(B, 2 * self.n_q, T, self.hd)  # [re0, im0, ...]
        if cache is not None:                                                # incremental: attend over the cache
            k, v = cache.append(k, v)
            out = cached_attention(q_re, k, v, self.n_attn // self.n_kv, cache.start, attn_impl)
        else:
            attend = eager_attention if attn_impl == "eager" else sdpa_attention
            out = attend(q_re, k, v, self.n_attn // self.n_kv)               # [B, Ha, T, hd]
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.n_attn * self.hd))


class MLP(nn.Module):
    def __init__(self, config, dtype, device):
        super().__init__()
        D, Fi = config.hidden_size, config.intermediate_size
        self.gate_proj = _linear(D, Fi, dtype, device)
        self.up_proj = _linear(D, Fi, dtype, device)
        self.down_proj = _linear(Fi, D, dtype, device)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config, mode, dtype, device):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype, device)
        self.self_attn = Attention(config, mode, dtype, device)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype, device)
        self.mlp = MLP(config, dtype, device)

    def forward(self, h, cos, sin, attn_impl, cache=None):
        h = h + self.self_attn(self.input_layernorm(h), cos, sin, attn_impl, cache)
        return h + self.mlp(self.post_attention_layernorm(h))


class Backbone(nn.Module):
    def __init__(self, config, mode, dtype, device):
        super().__init__()
        self.embed_tokens = nn.utils.skip_init(nn.Embedding, config.vocab_size, config.hidden_size,
                                               dtype=dtype, device=device)
        self.layers = nn.ModuleList(DecoderLayer(config, mode, dtype, device)
                                    for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype, device)


class RopePPForCausalLM(nn.Module):
    """forward(input_ids [B, T]) -> logits [B, T, V]. Weights are uninitialised: load them or init_weights()."""

    def __init__(self, config, mode=None, dtype=torch.float32, device=None, attn_impl="eager"):
        super().__init__()
        mode = mode or config.mode
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}: config has no rope_config; pass mode= one of {MODES} "
                             "(load_checkpoint infers it from the tensor shapes)")
        self.config, self.mode, self.attn_impl = config, mode, attn_impl
        device = torch.device("cpu") if device is None else torch.device(device)
        self.model = Backbone(config, mode, dtype, device)
        if not config.tie_word_embeddings:
            self.lm_head = _linear(config.hidden_size, config.vocab_size, dtype, device)
        self._tables = {}

    def output_weight(self):
        return self.model.embed_tokens.weight if self.config.tie_word_embeddings else self.lm_head.weight

    def tables(self, start, T, device, dtype):
        key = (start, T, str(device), dtype)
        if key not in self._tables:
            cos, sin = rope_tables(self.config, torch.arange(start, start + T))
            self._tables = {key: (cos.to(device=device, dtype=dtype), sin.to(device=device, dtype=dtype))}
        return self._tables[key]

    def forward(self, input_ids, position_offset=0, attn_impl=None, cache=None, logits_to_keep=0):
        """logits [B, T, V]; logits_to_keep > 0: only the last that many rows. cache (a KVCache): the ids
        continue the cached sequence (positions cache.pos.., position_offset is ignored) and are appended."""
        h = self.model.embed_tokens(input_ids)                                # [B, T, D]
        T = input_ids.shape[1]
        if cache is not None:
            start = cache.pos
            if start + T > cache.max_len:
                raise ValueError(f"KVCache holds {cache.max_len} positions; {start} + {T} do not fit")
            cos, sin = cache.cos[start:start + T], cache.sin[start:start + T]
            for i, layer in enumerate(self.model.layers):
                h = layer(h, cos, sin, attn_impl or self.attn_impl, cache.layer(i))
            cache.pos = start + T
        else:
            cos, sin = self.tables(position_offset, T, h.device, h.dtype)
            for layer in self.model.layers:
                h = layer(h, cos, sin, attn_impl or self.attn_impl)
        if logits_to_keep:
            h = h[:, -logits_to_keep:]
        return F.linear(self.model.norm(h), self.output_weight())            # [B, T, V]

    @torch.no_grad()
    def init_weights(self, std=0.02, generator=None):
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float32).to(p) * std)
        return self


# ----------------------------------------------------------------------------------------------------
# safetensors I/O (no safetensors package needed)

_ST_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}
_ST_BYTES = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8}


def _nbytes(dt, shape):
    return int(np.prod(shape, dtype=np.int64)) * _ST_BYTES[dt]


def read_safetensors_header(path):
    """(header dict without __metadata__, absolute offset of the data section)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header, 8 + n


def _tensor_from(mm, start, info):
    b, e = info["data_offsets"]
    raw = mm[start + b:start + e]
    shape = tuple(info["shape"])
    if info["dtype"] == "BF16":   # exact: bf16 bits are the top half of an f32
        arr = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    elif info["dtype"] in ("F16", "F32", "F64"):
        arr = raw.view({"F16": np.float16, "F32": np.float32, "F64": np.float64}[info["dtype"]])
    else:
        raise ValueError(f"dtype {info['dtype']} not supported")
    return torch.from_numpy(arr.reshape(shape).copy())


def read_safetensors(path, dtype=None):
    """name -> tensor (converted to `dtype` when given)."""
    header, start = read_safetensors_header(path)
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for name, info in header.items():
        t = _tensor_from(mm, start, info)
        out[name] = t.to(dtype) if dtype is not None else t
    return out


def write_safetensors(path, specs, produce):
    """Streams a safetensors file. specs: [(name, "BF16"|"F16"|"F32", shape)] in file order;
    produce(name) yields tensors (any shape) whose bytes, concatenated, are that tensor's data."""
    header, off = {"__metadata__": {"format": "pt"}}, 0
    for name, dt, shape in specs:
        n = _nbytes(dt, shape)
        header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    hj = json.dumps(header, separators=(",", ":")).encode()
    hj += b" " * (-len(hj) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for name, dt, shape in specs:
            written = 0
            for chunk in produce(name):
                chunk = chunk.detach().to("cpu", _ST_DTYPES[dt]).contiguous()
                if dt == "BF16":   # numpy has no bf16: write the bits
                    chunk = chunk.view(torch.int16)
                buf = chunk.numpy()
                f.write(buf.data)
                written += buf.nbytes
            b, e = header[name]["data_offsets"]
            if written != e - b:
                raise RuntimeError(f"{path}: tensor {name} produced {written} bytes, expected {e - b}")
    return off


def shard_names(shards):
    if shards == 1:
        return ["model.safetensors"]
    return [f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]


def write_checkpoint_files(out_dir, specs, produce, shards=1):
    """Splits specs in order into `shards` files of about equal bytes; writes the index when shards > 1."""
    os.makedirs(out_dir, exist_ok=True)
    for old in os.listdir(out_dir):   # stale weights of an earlier save would shadow or mix with these
        if old in ("model.safetensors", "model.safetensors.index.json") or re.fullmatch(
                r"model-\d{5}-of-\d{5}\.safetensors", old):
            os.remove(os.path.join(out_dir, old))
    sizes = [_nbytes(dt, s) for _, dt, s in specs]
    total, groups, acc = sum(sizes), [[] for _ in range(shards)], 0
    for spec, n in zip(specs, sizes):
        i = min(shards - 1, int(acc * shards // max(total, 1)))
        groups[i].append(spec)
        acc += n
    files = shard_names(shards)
    for fname, group in zip(files, groups):
        write_safetensors(os.path.join(out_dir, fname), group, produce)
    if shards > 1:
        index = {"metadata": {"total_size": total},
                 "weight_map": {name: fname for fname, g in zip(files, groups) for name, _, _ in g}}
        with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
            json.dump(index, f, indent=2)


def save_checkpoint(model, config_dict=None, out_dir=".", dtype=torch.bfloat16, shards=1):
    """Writes config.json + model.safetensors (or `shards` files + index) in HF layout."""
    config_dict = dict(config_dict if config_dict is not None else model.config.raw)
    config_dict["torch_dtype"] = str(dtype).replace("torch.", "")
    sd = model.state_dict()
    specs = [(name, _ST_NAMES[dtype], tuple(t.shape)) for name, t in sd.items()]
    write_checkpoint_files(out_dir, specs, lambda name: [sd[name]], shards)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config_dict, f, indent=2)


# ----------------------------------------------------------------------------------------------------
# checkpoint loading

def load_checkpoint(path, dtype=torch.float64, mode=None, device="cpu", attn_impl="eager"):
    """Loads an HF-layout directory (config.json + model.safetensors or a sharded index).
    mode: None = rope_config, else inferred from q_proj/o_proj shapes; a given mode must fit the shapes."""
    config = RopePPConfig.from_json(os.path.join(path, "config.json"))
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    elif os.path.exists(os.path.join(path, "model.safetensors")):
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"{path}: neither model.safetensors nor model.safetensors.index.json")
    where = {}
    for fname in files:
        header, start = read_safetensors_header(os.path.join(path, fname))
        for name, info in header.items():
            where[name] = (fname, start, info)
    if config.tie_word_embeddings:
        where.pop("lm_head.weight", None)   # tied: the embedding is the output matrix
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.o_proj.weight"):
        if name not in where:
            raise KeyError(f"{path}: tensor {name} missing")
    fits = infer_mode(config, where["model.layers.0.self_attn.q_proj.weight"][2]["shape"],
                      where["model.layers.0.self_attn.o_proj.weight"][2]["shape"])
    wanted = mode if mode not in (None, "auto") else config.mode
    if wanted is None:
        if len(fits) != 1:
            raise ValueError(f"{path}: cannot infer the mode from q_proj/o_proj shapes (matching: {fits})")
        wanted = fits[0]
    expected = config.expected_shapes(wanted)
    if set(expected) != set(where):
        raise KeyError(f"{path}: tensors missing {sorted(set(expected) - set(where))[:5]}, "
                       f"unexpected {sorted(set(where) - set(expected))[:5]}")
    for name, shape in expected.items():
        got = tuple(where[name][2]["shape"])
        if got != shape:
            raise ValueError(f"{path}: tensor {name} has shape {list(got)}, mode {wanted} needs {list(shape)}")
    model = RopePPForCausalLM(config, wanted, dtype=dtype, device=device, attn_impl=attn_impl)
    params = dict(model.named_parameters())
    maps = {}
    with torch.no_grad():
        for name, (fname, start, info) in where.items():
            if fname not in maps:
                maps[fname] = np.memmap(os.path.join(path, fname), dtype=np.uint8, mode="r")
            params[name].copy_(_tensor_from(maps[fname], start, info).to(dtype))
    return model.eval()
