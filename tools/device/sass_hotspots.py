#!/usr/bin/env python3
"""sass_hotspots.py: reads the per-instruction CSV of ncu_source.sh (Nsight Compute's source page, SASS rows with
warp-stall samples and executed counts; plain or .xz) and prints where a kernel's time goes: the stall reasons,
the opcode mix (executed instructions and stall samples), and the instructions with the most samples.

    python3 tools/device/sass_hotspots.py docs/device/2026-12-06-session18/run1_ncu_source/pf_sass.csv.xz [--top 40]
    ... --min-exec N --range A:B   list every instruction executed at least N times (rows A..B: one loop's body)
"""
import argparse
import collections
import csv
import io
import lzma
import sys


def load(path):
    raw = lzma.open(path, "rt") if path.endswith(".xz") else open(path, newline="")
    rows = list(csv.reader(io.StringIO(raw.read())))
    hdr = rows[1]  # row 0 names the kernel
    idx = {h: i for i, h in enumerate(hdr)}
    data = [r for r in rows[2:] if len(r) >= len(hdr)]
    return rows[0], hdr, idx, data


def num(r, idx, col):
    v = r[idx[col]]
    return int(v) if v and v not in "-" else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("csv")
    ap.add_argument("--top", type=int, default=30, help="instructions with the most stall samples")
    ap.add_argument("--min-exec", type=int, default=0, help="list instructions executed at least this often")
    ap.add_argument("--range", default="", help="A:B, rows of the listing (with --min-exec)")
    a = ap.parse_args()
    kernel, hdr, idx, data = load(a.csv)
    stalls = [h for h in hdr if h.startswith("stall_") and "Not Issued" not in h]
    samples_col, exec_col = "Warp Stall Sampling (All Samples)", "Instructions Executed"
    total_s = sum(num(r, idx, samples_col) for r in data)
    total_e = sum(num(r, idx, exec_col) for r in data)
    print(" ".join(kernel[:2]))
    print(f"stall samples {total_s}, instructions executed {total_e}")
    by_reason = collections.Counter()
    by_op_s, by_op_e = collections.Counter(), collections.Counter()
    for r in data:
        for c in stalls:
            by_reason[c[6:]] += num(r, idx, c)
        words = r[idx["Source"]].split()
        op = (words[1] if words and words[0].startswith("@") and len(words) > 1 else (words[0] if words else ""))
        op = op.split(".")[0]
        by_op_s[op] += num(r, idx, samples_col)
        by_op_e[op] += num(r, idx, exec_col)
    print("\nstall reasons (share of samples):")
    for c, v in by_reason.most_common(12):
        print(f"  {c:24s} {v:8d} {100 * v / max(total_s, 1):5.1f}%")
    print("\nopcodes (share of executed instructions, of stall samples):")
    for op, v in by_op_e.most_common(20):
        print(f"  {op:12s} {100 * v / max(total_e, 1):5.1f}%  {100 * by_op_s[op] / max(total_s, 1):5.1f}%")

    def line(n, r):
        top = sorted(((num(r, idx, c), c[6:]) for c in stalls), reverse=True)[:2]
        why = " ".join(f"{c}:{v}" for v, c in top if v > 0)
        return (f"  {n:5d} {num(r, idx, exec_col):10d} {num(r, idx, samples_col):6d}  "
                f"{r[idx['Source']].strip()[:70]:70s} {why}")

    print(f"\nthe {a.top} instructions with the most stall samples (row, executed, samples, SASS, top reasons):")
    order = sorted(range(len(data)), key=lambda n: -num(data[n], idx, samples_col))
    for n in order[:a.top]:
        print(line(n, data[n]))
    if a.min_exec:
        lo, hi = (int(x) for x in a.range.split(":")) if a.range else (0, len(data))
        print(f"\nrows {lo}..{hi} executed at least {a.min_exec} times:")
        for n in range(lo, min(hi, len(data))):
            if num(data[n], idx, exec_col) >= a.min_exec:
                print(line(n, data[n]))


if __name__ == "__main__":
    sys.exit(main())
