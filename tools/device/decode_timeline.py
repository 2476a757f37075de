#!/usr/bin/env python3
"""decode_timeline.py CSV: the decode steps of an Nsight Systems `cuda_gpu_trace` report (csv), as a timeline.

A decode step is the GPU work from one `embed` kernel to the next. Prints the mean step time over the last
steps (up to 16), the mean time of each kernel position in the step (duration and the gap from the previous
kernel's end to its start: negative when programmatic dependent launch overlaps them), and those summed per kernel.
Used by tools/device/profile_decode.sh; standard library only.
"""
import csv
import re
import statistics
import sys


def short(name: str) -> str:
    name = re.sub(r"^void\s+", "", name).replace("(anonymous namespace)::", "").replace("ropepp::", "")
    name = re.sub(r"\(.*$", "", name)  # arguments
    base = re.sub(r"<.*$", "", name)
    targs = re.search(r"<(.*)>", name)
    if targs:
        base += "<" + re.sub(r"\s", "", targs.group(1))[:40] + ">"
    return base[:70]


def main() -> int:
    rows = []
    with open(sys.argv[1], newline="") as f:
        for r in csv.DictReader(f):
            start = r.get("Start (ns)") or r.get("Start")
            dur = r.get("Duration (ns)") or r.get("Duration")
            name = r.get("Name", "")
            if start is None or dur is None:
                continue
            kernel = bool((r.get("GrdX") or "").strip())
            rows.append((int(start), int(dur), name, kernel))
    rows.sort()
    steps, cur = [], None
    for row in rows:
        if row[3] and "embed" in row[2]:
            if cur:
                steps.append(cur)
            cur = [row]
        elif cur is not None:
            cur.append(row)
    if cur:
        steps.append(cur)
    if not steps:
        print("no decode steps (no embed kernel) in the trace")
        return 1
    # the last step may run into the end of the benchmark; keep steps with the most common kernel count
    counts = [sum(1 for r in s if r[3]) for s in steps]
    mode = statistics.mode(counts)
    steps = [s for s, c in zip(steps, counts) if c == mode][-16:]
    walls = [s[-1][0] + s[-1][1] - s[0][0] for s in steps]
    kern = [[r for r in s if r[3]] for s in steps]
    busy = [sum(r[1] for r in k) for k in kern]
    print(f"steps {len(steps)} (of {len(counts)}), {mode} kernels each; step (first kernel start to last op end): "
          f"mean {statistics.mean(walls) / 1e3:.1f} us, min {min(walls) / 1e3:.1f}; kernel time summed "
          f"{statistics.mean(busy) / 1e3:.1f} us")
    print(f"{'#':>3} {'kernel':70} {'dur us':>8} {'gap us':>8}")
    totals = {}
    for i in range(mode):
        durs = [k[i][1] for k in kern]
        gaps = [k[i][0] - (k[i - 1][0] + k[i - 1][1]) for k in kern] if i else [0]
        name = short(kern[-1][i][2])
        t = totals.setdefault(name, [0, 0.0, 0.0])
        t[0] += 1
        t[1] += statistics.mean(durs)
        t[2] += statistics.mean(gaps)
        print(f"{i:>3} {name:70} {statistics.mean(durs) / 1e3:8.2f} {statistics.mean(gaps) / 1e3:8.2f}")
    print("per kernel (summed over the step): count, duration us, gaps before it us")
    for name, (n, d, g) in sorted(totals.items(), key=lambda kv: -kv[1][1]):
        print(f"    {name:70} x{n:<3} {d / 1e3:8.1f} {g / 1e3:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
