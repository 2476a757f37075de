#!/usr/bin/python3
"""compare_logits.py: the engine's logits against the float64 PyTorch reference.

    /usr/bin/python3 tests/e2e/compare_logits.py --model DIR --ropepp build/ropepp --ids 1,2,3 --tol 1e-5
    /usr/bin/python3 tests/e2e/compare_logits.py --model DIR --ropepp build/ropepp --random-ids 67 --seed 3

Runs `ropepp score -m DIR --ids 1,2,3 --logits-out X.npy` (contract: float32 .npy [T, vocab], exit 0),
computes the reference logits in float64, and checks per row t: ||engine - ref|| / ||ref|| <= tol, and
that the argmax agrees (unless the reference's top two are within --tie of each other). Prints one
PASS/FAIL line; exit status 0 only on PASS. --engine-logits FILE compares a ready .npy instead of
running the binary.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools"))
from reference_logits import add_ids_args, get_ids, reference_logits  # noqa: E402


def run_engine(binary, model, ids, out, mode, extra, timeout):
    cmd = [binary, "score", "-m", model, "--ids", ",".join(map(str, ids)), "--logits-out", out]
    if mode and mode != "auto":
        cmd += ["--rope-mode", mode]
    cmd += extra
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` exited {r.returncode}\nstdout:\n{r.stdout[-3000:]}\n"
                           f"stderr:\n{r.stderr[-3000:]}")
    return time.time() - t0


def compare(engine, ref, tol, tie):
    """Returns a list of failure messages (empty: pass) and the per-row relative errors."""
    fails = []
    if engine.shape != ref.shape:
        return [f"engine logits shape {list(engine.shape)} != reference {list(ref.shape)}"], None
    if not np.all(np.isfinite(engine)):
        bad = np.argwhere(~np.isfinite(engine))[0]
        return [f"engine logits not finite (first at row {bad[0]}, col {bad[1]})"], None
    e = engine.astype(np.float64)
    rel = np.linalg.norm(e - ref, axis=1) / np.maximum(np.linalg.norm(ref, axis=1), 1e-300)
    for t in np.nonzero(rel > tol)[0][:5]:
        fails.append(f"row {t}: relative error {rel[t]:.3e} > tol {tol:.1e}")
    if (rel > tol).sum() > 5:
        fails.append(f"... {(rel > tol).sum()} rows over tolerance in all")
    ea, ra = e.argmax(1), ref.argmax(1)
    rows = np.arange(len(ref))
    wrong = np.nonzero((ea != ra) & (ref[rows, ra] - ref[rows, ea] > tie))[0]
    for t in wrong[:5]:
        fails.append(f"row {t}: argmax {ea[t]} != reference {ra[t]} (reference gap {ref[t, ra[t]] - ref[t, ea[t]]:.3e})")
    if len(wrong) > 5:
        fails.append(f"... argmax differs in {len(wrong)} of {len(ref)} rows")
    return fails, rel


def nll(logits, ids):
    if len(ids) < 2:
        return float("nan")
    x = logits[:-1].astype(np.float64)
    m = x.max(1, keepdims=True)
    lse = (m[:, 0] + np.log(np.exp(x - m).sum(1)))
    return float((lse - x[np.arange(len(ids) - 1), ids[1:]]).mean())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--ropepp", help="path to the ropepp binary")
    p.add_argument("--engine-logits", help="compare this .npy instead of running the binary")
    add_ids_args(p)
    p.add_argument("--tol", type=float, default=1e-5, help="max per-row ||a-b||/||b||")
    p.add_argument("--tie", type=float, default=1e-6, help="argmax may differ when the reference's gap is below")
    p.add_argument("--mode", default="auto", help="passed to both as --rope-mode / mode (auto: not passed)")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--name", default=None, help="label for the PASS/FAIL line")
    p.add_argument("extra", nargs="*", help="extra arguments for `ropepp score` (after --)")
    a = p.parse_args()
    if not (a.ropepp or a.engine_logits):
        p.error("give --ropepp or --engine-logits")
    name = a.name or os.path.basename(os.path.normpath(a.model))
    try:
        ids = get_ids(a)
        with tempfile.TemporaryDirectory() as tmp:
            path, secs = a.engine_logits, 0.0
            if not path:
                path = os.path.join(tmp, "engine_logits.npy")
                secs = run_engine(a.ropepp, a.model, ids, path, a.mode, a.extra, a.timeout)
            engine = np.load(path)
        ref, ref_nll, mode = reference_logits(a.model, ids, mode=a.mode)
    except Exception as ex:  # a crash, a missing file, a bad checkpoint: all are failures
        print(f"FAIL {name}: {type(ex).__name__}: {ex}")
        return 1
    fails, rel = compare(engine, ref, a.tol, a.tie)
    if fails:
        print(f"FAIL {name} (mode {mode}, {len(ids)} tokens, tol {a.tol:.1e}):\n  " + "\n  ".join(fails))
        return 1
    print(f"PASS {name}: mode {mode}, {len(ids)} tokens, vocab {ref.shape[1]}, max rel err {rel.max():.3e} "
          f"(tol {a.tol:.1e}), NLL engine {nll(engine, ids):.6f} ref {ref_nll:.6f}, engine {secs:.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
