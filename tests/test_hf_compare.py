#!/usr/bin/python3
"""Smoke test of tools/bench/hf_compare.py on the CPU, on tiny checkpoints (the real run is on the device GPU).

    /usr/bin/python3 tests/test_hf_compare.py [-v]

transformers is not installed here, so the HF rows run against a stand-in `transformers` package (written to a
temporary directory and put first on PYTHONPATH) with the calls the script makes of transformers 5:
LlamaForCausalLM.from_pretrained(dir, attn_implementation=, dtype=), forward(input_ids, past_key_values,
use_cache, logits_to_keep) -> .logits / .past_key_values. The stand-in computes with the PyTorch reference, so
its logits equal the reference's exactly. Also checked: ropepp columns and ratios from hand-written bench JSONs,
and that a missing transformers or a failing load leaves the other rows running.
"""
import atexit
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
sys.path.insert(0, os.path.join(ROOT, "tools"))
import gen_checkpoint  # noqa: E402

SCRIPT = os.path.join(ROOT, "tools", "bench", "hf_compare.py")
TMP = tempfile.mkdtemp(prefix="hf_compare_test_")
atexit.register(shutil.rmtree, TMP, ignore_errors=True)

FAKE_TRANSFORMERS = '''
"""A stand-in for transformers 5 (the calls tools/bench/hf_compare.py makes), computing with the reference."""
import os
import sys
import torch
__version__ = "5.99.0-fake"
sys.path.insert(0, os.environ["ROPEPP_TOOLS"])
from ropepp_ref.model import load_checkpoint  # noqa: E402


class logging:
    @staticmethod
    def set_verbosity_error():
        pass


class _Out:
    def __init__(self, logits, past_key_values):
        self.logits, self.past_key_values = logits, past_key_values


class LlamaForCausalLM(torch.nn.Module):
    def __init__(self, ref):
        super().__init__()
        self.ref = ref

    @classmethod
    def from_pretrained(cls, path, attn_implementation=None, dtype=None, **kw):
        assert attn_implementation == "sdpa" and dtype is not None and not kw, (attn_implementation, dtype, kw)
        if os.environ.get("FAKE_HF_FAIL"):
            raise OSError("fake load failure")
        return cls(load_checkpoint(path, dtype=dtype, mode="rope", attn_impl="sdpa"))

    def forward(self, input_ids=None, past_key_values=None, use_cache=None, logits_to_keep=0):
        ids = input_ids if past_key_values is None else torch.cat([past_key_values, input_ids], dim=1)
        logits = self.ref(ids, logits_to_keep=logits_to_keep or input_ids.shape[1])
        return _Out(logits, ids if use_cache else None)
'''


def gen(name, *args):
    out = os.path.join(TMP, name)
    with contextlib.redirect_stdout(io.StringIO()):
        gen_checkpoint.main(["--out", out, "--preset", "tiny", "--dtype", "f32", *args])
    return out


def bench_json(name, model, rates):
    path = os.path.join(TMP, f"bench_{name}.json")
    with open(path, "w") as f:
        json.dump({"model": model, "mode": name, "results": [
            {"test": t, "tok_per_s": v, "tok_per_s_sd": 0.0} for t, v in rates.items()]}, f)
    return path


class HFCompare(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.rope, cls.ec = gen("rope", "--mode", "rope"), gen("ec", "--mode", "ec", "--yarn-factor", "4")
        cls.fake = os.path.join(TMP, "fake")
        os.makedirs(os.path.join(cls.fake, "transformers"), exist_ok=True)
        with open(os.path.join(cls.fake, "transformers", "__init__.py"), "w") as f:
            f.write(textwrap.dedent(FAKE_TRANSFORMERS))
        cls.missing = os.path.join(TMP, "missing")      # hides a real transformers where one is installed
        os.makedirs(os.path.join(cls.missing, "transformers"), exist_ok=True)
        with open(os.path.join(cls.missing, "transformers", "__init__.py"), "w") as f:
            f.write("raise ImportError(\"No module named 'transformers' (hidden by the test)\")\n")
        # the rope JSON names the model by another path to the same directory name: matched by name
        cls.jsons = [bench_json("rope", "/elsewhere/rope", {"pp48": 1000.0, "tg4": 500.0, "tg4 @ d40": 250.0}),
                     bench_json("ec", cls.ec, {"pp48": 2000.0, "tg4": 100.0})]

    def run_script(self, name, fake=True, extra_env=None, args=()):
        out = os.path.join(TMP, f"{name}.json")
        env = dict(os.environ, ROPEPP_TOOLS=os.path.join(ROOT, "tools"), **(extra_env or {}))
        env["PYTHONPATH"] = self.fake if fake else self.missing
        r = subprocess.run([sys.executable, SCRIPT, "-m", self.rope, "-m", self.ec, "-j", self.jsons[0],
                            "-j", self.jsons[1], "--device", "cpu", "--dtype", "float32", "-p", "48", "-n", "4",
                            "-d", "40", "-r", "2", "--threads", "1", "--out", out, *args],
                           capture_output=True, text=True, env=env, timeout=300)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        with open(out) as f:
            return json.load(f), r.stdout

    def rows(self, doc):
        return {(r["checkpoint"], r["peer"].split()[0], r["workload"]): r for r in doc["rows"]}

    def test_rows_ratios_and_hf_vs_reference(self):
        doc, stdout = self.run_script("full")
        rows = self.rows(doc)
        self.assertEqual(doc["transformers"], "5.99.0-fake")
        self.assertEqual(doc["errors"], [])
        want = {(c, e, w) for c, engines in (("rope", ("HF", "PyTorch")), ("ec", ("PyTorch",)))
                for e in engines for w in ("pp48", "tg4", "tg4 @ d40")}
        self.assertEqual(set(rows), want)
        for key, r in rows.items():
            self.assertGreater(r["peer_tok_per_s"], 0, key)
            self.assertTrue(1 <= len(r["peer_reps"]) <= 2, key)
            if r["ropepp_tok_per_s"] is None:
                self.assertIsNone(r["ratio"])
            else:
                self.assertAlmostEqual(r["ratio"], r["ropepp_tok_per_s"] / r["peer_tok_per_s"])
        self.assertEqual(rows[("rope", "HF", "tg4 @ d40")]["ropepp_tok_per_s"], 250.0)
        self.assertEqual(rows[("ec", "PyTorch", "pp48")]["ropepp_tok_per_s"], 2000.0)
        self.assertIsNone(rows[("ec", "PyTorch", "tg4 @ d40")]["ropepp_tok_per_s"])   # not in its JSON
        self.assertEqual(rows[("ec", "PyTorch", "tg4 @ d40")]["depth"], 40)
        (check,) = doc["hf_vs_reference"]
        self.assertEqual((check["checkpoint"], check["tokens"], check["same_top1"]), ("rope", 48, True))
        self.assertEqual(check["last_logits_rel_err"], 0.0)        # the stand-in computes with the reference
        self.assertIn("| workload", stdout.replace("checkpoint | HF/PyTorch engine ", ""))
        self.assertIn("ratio (ropepp / HF)", stdout)

    def test_missing_transformers_and_failed_load_keep_going(self):
        for name, fake, env in (("no_tf", False, {}), ("load_fails", True, {"FAKE_HF_FAIL": "1"})):
            doc, stdout = self.run_script(name, fake, env, ("--no-ref-on-rope",))
            rows = self.rows(doc)
            for w in ("pp48", "tg4", "tg4 @ d40"):
                self.assertEqual(rows[("rope", "HF", w)]["note"], "not run: load failed", name)
                self.assertGreater(rows[("ec", "PyTorch", w)]["peer_tok_per_s"], 0, name)
            self.assertNotIn(("rope", "PyTorch", "pp48"), rows)
            self.assertTrue(doc["errors"], name)
            self.assertIn("failed to load", stdout)

    def test_time_caps(self):
        # a zero cap: one rep each, decode cut to the warm-up's token count; a zero budget: everything skipped
        doc, _ = self.run_script("cap", args=("--cap-s", "0", "--no-ref-on-rope"))
        for r in doc["rows"]:
            self.assertEqual(len(r["peer_reps"]), 1, r)
        doc, _ = self.run_script("budget", args=("--budget-s", "0"))
        self.assertTrue(all(r["note"].startswith("skipped") for r in doc["rows"]))


if __name__ == "__main__":
    unittest.main()
