#!/usr/bin/python3
"""Tests compare_logits.py itself with fake_ropepp.py standing in for the engine: it must pass exact
float32 logits and fail on every kind of wrong answer (noise over tol, a swapped argmax, a wrong shape,
NaN, a crash, no output file).

    /usr/bin/python3 tests/e2e/test_compare_logits.py
"""
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
PY = sys.executable
CASES = {  # FAKE_ROPEPP behaviour -> expected exit status of compare_logits.py
    "exact": 0, "noise:2e-6": 0, "noise:5e-5": 1, "swap_argmax": 1, "short": 1, "nan": 1, "crash": 1,
    "no_output": 1,
}


class CompareLogits(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="ropepp_cmp_")
        cls.model = os.path.join(cls.tmp, "eh")
        subprocess.run([PY, os.path.join(HERE, "..", "..", "tools", "gen_checkpoint.py"), "--out", cls.model,
                        "--preset", "tiny", "--mode", "eh", "--dtype", "f32"], check=True, capture_output=True)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def run_case(self, how, *extra):
        env = dict(os.environ, FAKE_ROPEPP=how)
        r = subprocess.run([PY, os.path.join(HERE, "compare_logits.py"), "--model", self.model,
                            "--ropepp", os.path.join(HERE, "fake_ropepp.py"), "--random-ids", "40", "--tol", "1e-5",
                            *extra], env=env, capture_output=True, text=True)
        return r.returncode, r.stdout + r.stderr

    def test_cases(self):
        for how, want in CASES.items():
            rc, out = self.run_case(how)
            self.assertEqual(rc, want, f"FAKE_ROPEPP={how}:\n{out}")
            self.assertIn("PASS" if want == 0 else "FAIL", out.splitlines()[-1] if want == 0 else out)

    def test_mode_flag_reaches_the_engine(self):
        rc, out = self.run_case("exact", "--mode", "eh")
        self.assertEqual(rc, 0, out)
        rc, out = self.run_case("exact", "--mode", "ec")   # contradicts the shapes: both sides refuse
        self.assertEqual(rc, 1, out)


if __name__ == "__main__":
    unittest.main()
