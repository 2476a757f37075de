#!/usr/bin/python3
"""Checks of the PyTorch reference (tools/ropepp_ref) itself, independent of the engine.

    /usr/bin/python3 tests/test_reference_self.py [-v]

Each check compares the reference against a second formulation that shares no attention or rotary code
with it (complex-number RoPE, per-head loops, closed-form tables), so a sign, layout or head-mapping
mistake in the reference fails here before it can be mistaken for an engine bug.
"""
import atexit
import contextlib
import io
import json
import math
import os
import shutil
import sys
import tempfile
import unittest

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tools"))
sys.path.insert(0, os.path.join(HERE, "e2e"))
import gen_checkpoint  # noqa: E402
from ropepp_ref import (KVCache, RopePPConfig, RopePPForCausalLM, load_checkpoint,  # noqa: E402
                        read_safetensors, rope_tables, rotate_half, save_checkpoint)
from ropepp_ref.model import infer_mode, inv_freq_and_mscale  # noqa: E402

TMP = tempfile.mkdtemp(prefix="ropepp_ref_self_")
atexit.register(shutil.rmtree, TMP, ignore_errors=True)


def gen(name, *args):
    """Generates a checkpoint (via gen_checkpoint's CLI entry point) and returns its directory."""
    out = os.path.join(TMP, name)
    with contextlib.redirect_stdout(io.StringIO()):
        gen_checkpoint.main(["--out", out, *args])
    return out


def ids_for(vocab, T, seed=0):
    return torch.randint(0, vocab, (1, T), generator=torch.Generator().manual_seed(seed))


def rel_err(a, b):
    """max over rows of ||a - b|| / ||b||"""
    a, b = a.reshape(-1, a.shape[-1]).double(), b.reshape(-1, b.shape[-1]).double()
    return float(((a - b).norm(dim=-1) / b.norm(dim=-1)).max())


# ---- a second, independent formulation: complex RoPE and explicit loops over heads and keys ----------

def naive_logits(model, ids, imag_factor=-1j):
    """Logits [T, V] of `model` for ids [T], by loops. Pair i of a head is the complex number
    x[i] + 1j*x[i + hd/2]; RoPE multiplies it by mscale*exp(1j*t*inv_freq[i]); the imaginary query is
    -1j times the real one; a real dot product a·b is Re(sum a*conj(b))."""
    cfg, mode = model.config, model.mode
    W = {k: v.detach().to(torch.float64).numpy() for k, v in model.state_dict().items()}
    nq, nkv, na = cfg.heads(mode)
    hd, half, T = cfg.head_dim, cfg.head_dim // 2, len(ids)
    inv_freq, mscale = inv_freq_and_mscale(cfg)
    phase = mscale * np.exp(1j * np.arange(T)[:, None] * inv_freq.numpy()[None, :])       # [T, hd/2]

    def rms(x, w):
        return w * x / np.sqrt((x * x).mean(-1, keepdims=True) + cfg.rms_norm_eps)

    def to_complex(x):                                                                   # [T, n, hd]
        return x[..., :half] + 1j * x[..., half:]

    x = W["model.embed_tokens.weight"][ids]
    for l in range(cfg.num_hidden_layers):
        p = f"model.layers.{l}."
        h = rms(x, W[p + "input_layernorm.weight"])
        q = to_complex((h @ W[p + "self_attn.q_proj.weight"].T).reshape(T, nq, hd)) * phase[:, None]
        k = to_complex((h @ W[p + "self_attn.k_proj.weight"].T).reshape(T, nkv, hd)) * phase[:, None]
        v = (h @ W[p + "self_attn.v_proj.weight"].T).reshape(T, nkv, hd)
        out = np.zeros((T, na, hd))
        for j in range(na):                        # attention head j
            if mode == "rope":
                qj = q[:, j]
            else:                                  # j = 2h (real) or 2h+1 (imaginary) of q head h
                qj = q[:, j // 2] * (imag_factor if j % 2 else 1)
            kv = j // (na // nkv)
            for t in range(T):
                s = np.array([(qj[t] * np.conj(k[u, kv])).real.sum() for u in range(t + 1)]) / math.sqrt(hd)
                w = np.exp(s - s.max())
                out[t, j] = (w / w.sum()) @ v[: t + 1, kv]
        x = x + out.reshape(T, na * hd) @ W[p + "self_attn.o_proj.weight"].T
        h = rms(x, W[p + "post_attention_layernorm.weight"])
        g = h @ W[p + "mlp.gate_proj.weight"].T
        x = x + ((g / (1 + np.exp(-g))) * (h @ W[p + "mlp.up_proj.weight"].T)) @ W[p + "mlp.down_proj.weight"].T
    out_w = W["model.embed_tokens.weight"] if cfg.tie_word_embeddings else W["lm_head.weight"]
    return rms(x, W["model.norm.weight"]) @ out_w.T


class NaiveEquivalence(unittest.TestCase):
    def check(self, name, *args, T=20):
        model = load_checkpoint(gen(name, "--preset", "tiny", *args))
        ids = ids_for(model.config.vocab_size, T)
        with torch.no_grad():
            got = model(ids)[0]
        want = torch.from_numpy(naive_logits(model, ids[0].numpy()))
        self.assertLess(rel_err(got, want), 1e-12, name)
        return model

    def test_eh_matches_per_head_loops(self):
        # 8 heads / 4 kv heads: EH has 4 q heads over 2 kv heads, so the kv mapping j // rep is exercised.
        m = self.check("eh_loop", "--mode", "eh", "--heads", "8", "--kv-heads", "4", "--head-dim", "8")
        self.assertEqual(m.config.heads("eh"), (4, 2, 8))

    def test_ec_matches_per_head_loops(self):
        self.check("ec_loop", "--mode", "ec", "--theta", "500000", "--yarn-factor", "8")

    def test_rope_matches_per_head_loops(self):
        self.check("rope_loop", "--mode", "rope", "--pi-factor", "4", "--tied")

    def test_loops_see_the_imaginary_sign(self):
        # guards against the two formulations trivially agreeing: +1j instead of -1j must not match
        model = load_checkpoint(gen("ec_sign", "--preset", "tiny", "--mode", "ec"))
        ids = ids_for(512, 16)
        with torch.no_grad():
            got = model(ids)[0]
        wrong = torch.from_numpy(naive_logits(model, ids[0].numpy(), imag_factor=1j))
        self.assertGreater(rel_err(got, wrong), 1e-3)


class RealHeadsAreRope(unittest.TestCase):
    def test_ec_with_zero_imag_columns_is_standard_rope(self):
        ec = load_checkpoint(gen("ec_zero", "--preset", "tiny", "--mode", "ec", "--theta", "500000"))
        cfg = ec.config
        rope = RopePPForCausalLM(cfg, "rope", dtype=torch.float64)
        hd, H = cfg.head_dim, cfg.num_attention_heads
        sd = ec.state_dict()
        ids = ids_for(cfg.vocab_size, 40)
        with torch.no_grad():
            before = ec(ids)
            for name, p in rope.named_parameters():
                w = sd[name]
                if name.endswith("o_proj.weight"):
                    cols = w.view(w.shape[0], H, 2, hd)          # [D, q head, re/im, hd]
                    p.copy_(cols[:, :, 0].reshape(w.shape[0], H * hd))
                    cols[:, :, 1] = 0                           # zero the imaginary columns in ec (in place)
                else:
                    p.copy_(w)
            after = ec(ids)
            want = rope(ids)
        self.assertLess(rel_err(after, want), 1e-13)
        self.assertGreater(rel_err(before, want), 1e-2)        # the imaginary heads did matter


class RotaryIdentities(unittest.TestCase):
    def setUp(self):
        self.cfg = RopePPConfig.from_dict(dict(hidden_size=64, intermediate_size=64, num_hidden_layers=1,
                                               num_attention_heads=4, vocab_size=8, head_dim=16,
                                               rope_config={"imag": True, "imag_mode": "imag2"}))
        g = torch.Generator().manual_seed(1)
        self.q = torch.randn(16, generator=g, dtype=torch.float64)
        self.k = torch.randn(16, generator=g, dtype=torch.float64)

    def rope(self, x, t):
        cos, sin = rope_tables(self.cfg, torch.tensor([t]))
        return x * cos[0] + rotate_half(x) * sin[0], x * sin[0] - rotate_half(x) * cos[0]

    def test_imag_query_dot_key_is_real_query_dot_rotated_key(self):
        for t, s in ((5, 3), (100, 0), (37, 37), (2000, 1234)):
            q_re, q_im = self.rope(self.q, t)
            k, _ = self.rope(self.k, s)
            self.assertAlmostEqual(float(q_im @ k), float(q_re @ rotate_half(k)), places=12)
            self.assertTrue(torch.allclose(q_im, -rotate_half(q_re), atol=1e-14))

    def test_scores_depend_only_on_relative_position(self):
        for delta in (0, 1, 7, 300):
            re0, im0 = self.rope(self.q, delta)
            k0, _ = self.rope(self.k, 0)
            re1, im1 = self.rope(self.q, 1000 + delta)
            k1, _ = self.rope(self.k, 1000)
            self.assertAlmostEqual(float(re0 @ k0), float(re1 @ k1), places=10)
            self.assertAlmostEqual(float(im0 @ k0), float(im1 @ k1), places=10)
        # and the imaginary score is the sine part: for q = k it is 0 at distance 0 (sin 0)
        re, im = self.rope(self.q, 9)
        k, _ = self.rope(self.q, 9)
        self.assertAlmostEqual(float(im @ k), 0.0, places=12)
        self.assertAlmostEqual(float(re @ k), float(self.q @ self.q), places=12)


class Tables(unittest.TestCase):
    def cfg(self, **rc):
        d = dict(hidden_size=128, intermediate_size=64, num_hidden_layers=1, num_attention_heads=1,
                 vocab_size=8, head_dim=128, rope_theta=500000.0)
        if rc:
            d["rope_config"] = dict({"imag": True, "imag_mode": "imag2"}, **rc)
        return RopePPConfig.from_dict(d)

    def test_plain_and_pi(self):
        for cfg, f in ((self.cfg(), 1.0), (self.cfg(factor=4.0), 4.0)):
            cos, sin = rope_tables(cfg, torch.tensor([0, 1, 777, 4095]))
            for pi, pos in enumerate((0, 1, 777, 4095)):
                for i in (0, 1, 20, 63):
                    ang = pos / 500000.0 ** (2 * i / 128) / f
                    for col in (i, i + 64):
                        self.assertAlmostEqual(float(cos[pi, col]), math.cos(ang), places=12)
                        self.assertAlmostEqual(float(sin[pi, col]), math.sin(ang), places=12)

    def test_yarn(self):
        cfg = self.cfg(factor=8.0, yarn=True)
        inv, mscale = inv_freq_and_mscale(cfg)
        self.assertAlmostEqual(mscale, 0.1 * math.log(8) + 1, places=14)
        cos, sin = rope_tables(cfg, torch.tensor([3000]))
        regimes = set()
        for i in range(64):
            base = 500000.0 ** (-2 * i / 128)
            r = 4096 / (2 * math.pi) * base
            gamma = min(1.0, max(0.0, (r - 1) / 31))
            regimes.add(0 if gamma == 0 else 2 if gamma == 1 else 1)
            want = (1 - gamma) * base / 8 + gamma * base
            self.assertAlmostEqual(float(inv[i]) / want, 1.0, places=12)
            self.assertAlmostEqual(float(cos[0, i + 64]), mscale * math.cos(3000 * want), places=11)
            self.assertAlmostEqual(float(sin[0, i]), mscale * math.sin(3000 * want), places=11)
        self.assertEqual(regimes, {0, 1, 2})   # the test covered interpolated, mixed and kept frequencies


class ConfigParsing(unittest.TestCase):
    base = dict(hidden_size=64, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=8)

    def parse(self, **kw):
        return RopePPConfig.from_dict(dict(self.base, **kw))

    def test_modes_and_scaling(self):
        self.assertEqual(self.parse().mode, None)
        self.assertEqual(self.parse(rope_config={"imag": False, "imag_mode": "imag2"}).mode, "rope")
        self.assertEqual(self.parse(rope_config={"imag": True, "imag_mode": "imag1"}).mode, "eh")
        self.assertEqual(self.parse(rope_config={"imag": True, "imag_mode": "imag2"}).mode, "ec")
        self.assertEqual(self.parse().head_dim, 16)
        c = self.parse(rope_config={"imag": True, "imag_mode": "imag1", "factor": 4})
        self.assertEqual((c.scaling, c.factor), ("linear", 4.0))
        c = self.parse(rope_config={"imag": True, "imag_mode": "imag1", "factor": 8, "yarn": True})
        self.assertEqual((c.scaling, c.factor), ("yarn", 8.0))
        c = self.parse(rope_scaling={"type": "linear", "factor": 2.0})
        self.assertEqual((c.scaling, c.factor), ("linear", 2.0))
        c = self.parse(rope_scaling={"rope_type": "linear", "factor": 2.0}, rope_config={"imag": False})
        self.assertEqual(c.scaling, "none")   # rope_config present: rope_scaling is not read (as the paper)
        for bad in (dict(rope_config={"imag": True, "imag_mode": "imagh"}),
                    dict(rope_config={"imag": True, "imag_mode": "imag1", "yarn": True}),
                    dict(rope_scaling={"rope_type": "llama3", "factor": 8.0})):
            self.assertRaises(ValueError, self.parse, **bad)

    def test_infer_mode_from_shapes(self):
        c = self.parse()
        self.assertEqual(infer_mode(c, (64, 64), (64, 64)), ["rope"])
        self.assertEqual(infer_mode(c, (32, 64), (64, 64)), ["eh"])
        self.assertEqual(infer_mode(c, (64, 64), (64, 128)), ["ec"])
        self.assertEqual(infer_mode(c, (32, 64), (64, 128)), [])


class Checkpoints(unittest.TestCase):
    def test_mode_inferred_without_rope_config(self):
        for mode in ("rope", "eh", "ec"):
            d = gen(f"norc_{mode}", "--preset", "tiny", "--mode", mode, "--no-rope-config")
            with open(os.path.join(d, "config.json")) as f:
                self.assertNotIn("rope_config", json.load(f))
            self.assertEqual(load_checkpoint(d).mode, mode)
            other = "ec" if mode != "ec" else "eh"
            with self.assertRaisesRegex(ValueError, "q_proj|o_proj"):
                load_checkpoint(d, mode=other)

    def test_shards_and_dtypes_hold_the_same_model(self):
        one = load_checkpoint(gen("s1", "--preset", "tiny", "--dtype", "f32", "--seed", "7"))
        two = load_checkpoint(gen("s2", "--preset", "tiny", "--dtype", "f32", "--seed", "7", "--shards", "2"))
        b16 = load_checkpoint(gen("sb", "--preset", "tiny", "--dtype", "bf16", "--seed", "7"))
        other = load_checkpoint(gen("s3", "--preset", "tiny", "--dtype", "f32", "--seed", "8"))
        self.assertTrue(os.path.exists(os.path.join(TMP, "s2", "model.safetensors.index.json")))
        ids = ids_for(512, 24)
        with torch.no_grad():
            a, b, c, d = one(ids), two(ids), b16(ids), other(ids)
        self.assertEqual(rel_err(a, b), 0.0)
        self.assertLess(rel_err(c, a), 0.1)          # the same weights, rounded to bf16
        self.assertGreater(rel_err(c, a), 1e-6)
        self.assertGreater(rel_err(d, a), 0.3)       # another seed: another model
        # bf16 values are read exactly: bf16 -> float64 -> bf16 round trip is the identity
        raw = read_safetensors(os.path.join(TMP, "sb", "model.safetensors"))
        for name, p in b16.state_dict().items():
            self.assertTrue(torch.equal(p.to(torch.bfloat16).float(), raw[name].float()), name)

    def test_save_load_round_trip(self):
        m = load_checkpoint(gen("rt", "--preset", "tiny", "--mode", "eh", "--tied", "--dtype", "f32"))
        out = os.path.join(TMP, "rt_saved")
        save_checkpoint(m, None, out, dtype=torch.float32, shards=3)
        m2 = load_checkpoint(out)
        self.assertEqual(set(m.state_dict()), set(m2.state_dict()))
        self.assertNotIn("lm_head.weight", m2.state_dict())
        for k, v in m.state_dict().items():
            self.assertTrue(torch.equal(v, m2.state_dict()[k]), k)

    def test_generated_models_are_not_degenerate(self):
        m = load_checkpoint(gen("nd", "--preset", "tiny", "--mode", "ec"))
        ids = ids_for(512, 64)
        with torch.no_grad():
            logits = m(ids)[0]
            # attention is far from uniform: scores of layer 0 have spread > 1
            attn = m.model.layers[0].self_attn
            h = m.model.layers[0].input_layernorm(m.model.embed_tokens(ids))
            q = attn.q_proj(h).view(64, -1, 16)
            k = attn.k_proj(h).view(64, -1, 16)
        self.assertGreater(float(logits.std(dim=-1).min()), 0.5)
        self.assertGreater(float(logits.argmax(-1).unique().numel()), 10)
        self.assertGreater(float((q[:, 0] @ k[:, 0].T / 4).std()), 1.0)


class Numerics(unittest.TestCase):
    def test_float32_matches_float64(self):
        d = gen("num", "--preset", "tiny", "--mode", "ec", "--yarn-factor", "8", "--theta", "500000")
        ids = ids_for(512, 70)
        with torch.no_grad():
            a = load_checkpoint(d, dtype=torch.float64)(ids)
            b = load_checkpoint(d, dtype=torch.float32)(ids)
            c = load_checkpoint(d, dtype=torch.bfloat16)(ids)
        self.assertEqual(b.dtype, torch.float32)
        self.assertLess(rel_err(b, a), 1e-4)
        self.assertLess(rel_err(c, a), 0.1)          # bf16 compute path runs and is roughly right

    def test_sdpa_path_matches_eager(self):
        for mode in ("rope", "eh", "ec"):
            m = load_checkpoint(gen(f"sdpa_{mode}", "--preset", "tiny", "--mode", mode))
            ids = ids_for(512, 33).repeat(3, 1)
            ids[1, 5:] = ids_for(512, 28, seed=5)
            with torch.no_grad():
                self.assertLess(rel_err(m(ids, attn_impl="sdpa"), m(ids)), 1e-12, mode)

    def test_causal_and_batch_independent(self):
        m = load_checkpoint(gen("causal", "--preset", "tiny", "--mode", "eh"))
        ids = ids_for(512, 40)
        with torch.no_grad():
            full = m(ids)
            prefix = m(ids[:, :17])
            batch = m(torch.cat([ids, ids_for(512, 40, seed=3)]))
        self.assertLess(rel_err(prefix, full[:, :17]), 1e-13)
        self.assertLess(rel_err(batch[:1], full), 1e-13)
        self.assertGreater(rel_err(full[:, 17:18], prefix[:, 16:17]), 1e-3)


@contextlib.contextmanager
def _sdpa_available():
    """torch < 2.0 has no F.scaled_dot_product_attention: stand in a plain one with its documented semantics
    (bool attn_mask: True = attend; is_causal: query i sees keys <= i) so the sdpa branches of the reference
    run here too. With torch >= 2.0 the real one is used."""
    F = torch.nn.functional
    if hasattr(F, "scaled_dot_product_attention"):
        yield
        return

    def sdpa(q, k, v, attn_mask=None, is_causal=False):
        s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        if is_causal:
            attn_mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril()
        if attn_mask is not None:
            s = s.masked_fill(~attn_mask, float("-inf"))
        return torch.softmax(s, dim=-1) @ v

    F.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        del F.scaled_dot_product_attention


class IncrementalDecode(unittest.TestCase):
    """The KV-cache path (KVCache, used by tools/bench/hf_compare.py) against the full forward."""

    def run_incremental(self, m, ids, chunks, attn_impl=None, max_len=None):
        cache = KVCache(m, max_len or ids.shape[1], batch=ids.shape[0])
        rows, at = [], 0
        for n in chunks:
            rows.append(m(ids[:, at:at + n], cache=cache, attn_impl=attn_impl))
            at += n
        self.assertEqual(cache.pos, ids.shape[1])
        return torch.cat(rows, dim=1)

    def test_matches_full_forward(self):
        with _sdpa_available():
            self.check_matches_full_forward()

    def check_matches_full_forward(self):
        impls = ("eager", "sdpa")
        for name, args in (("kv_rope", ("--mode", "rope", "--pi-factor", "4")),
                           ("kv_eh", ("--mode", "eh", "--heads", "8", "--kv-heads", "4", "--head-dim", "8")),
                           ("kv_ec", ("--mode", "ec", "--yarn-factor", "8", "--theta", "500000", "--tied"))):
            m = load_checkpoint(gen(name, "--preset", "tiny", *args))
            ids = torch.cat([ids_for(m.config.vocab_size, 37), ids_for(m.config.vocab_size, 37, seed=4)])
            with torch.no_grad():
                full = m(ids)
                for impl in impls:
                    # a prompt, then single tokens (decode), then a chunk appended to a non-empty cache
                    got = self.run_incremental(m, ids, [20] + [1] * 9 + [8], impl, max_len=50)
                    self.assertLess(rel_err(got, full), 1e-10, f"{name} {impl}")
                    got = self.run_incremental(m, ids[:1], [1] * 37, impl)
                    self.assertLess(rel_err(got, full[:1]), 1e-10, f"{name} {impl} token by token")
                last = m(ids, logits_to_keep=1)
            self.assertEqual(tuple(last.shape), (2, 1, m.config.vocab_size))
            self.assertEqual(rel_err(last, full[:, -1:]), 0.0)

    def test_cache_overflow_and_reset(self):
        m = load_checkpoint(gen("kv_over", "--preset", "tiny", "--mode", "eh"))
        ids = ids_for(m.config.vocab_size, 12)
        cache = KVCache(m, 10)
        with torch.no_grad():
            with self.assertRaisesRegex(ValueError, "KVCache holds 10"):
                m(ids, cache=cache)
            a = m(ids[:, :10], cache=cache)
            cache.reset()
            b = m(ids[:, :10], cache=cache)
        self.assertEqual(rel_err(a, b), 0.0)


if __name__ == "__main__":
    unittest.main()
