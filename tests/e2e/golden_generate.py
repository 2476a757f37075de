#!/usr/bin/python3
"""golden_generate.py: greedy generation of the shipped default model, ropepp vs the PyTorch reference.

    /usr/bin/python3 tests/e2e/golden_generate.py --ropepp build/ropepp [--model models/default] [-n 32]
    /usr/bin/python3 tests/e2e/golden_generate.py --reference-only        # print the reference's ids

Reference: tools/ropepp_ref in float64 on the CPU; prompt ids = [BOS] + sentencepiece(prompt) (the Python
binding, or Debian's spm_encode when it is missing, see spm_text.py); n greedy steps, each a full forward
over the sequence so far (no cache), stopping after EOS.
Engine: `ropepp generate -m MODEL -p PROMPT -n N --temp 0 --json` (contract: one JSON object on stdout with
"prompt_tokens" (ids incl. BOS), "tokens" (generated ids), "text").
Checks: prompt_tokens equal; generated ids equal (the engine may leave out a final EOS). If they differ at a
step where the reference's top two logits are within --tie, that is reported as a near tie and passes (it
never happened for the fixed prompts: the smallest margin is printed). Prints PASS/FAIL; exit 0 on PASS.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tools"))
sys.path.insert(0, HERE)
from ropepp_ref import load_checkpoint  # noqa: E402
import spm_text  # noqa: E402

DEFAULT_PROMPT = "Fellow citizens, the state of our Union"


@torch.no_grad()
def reference_greedy(model, prompt_ids, n, eos):
    """(generated ids, top-1 minus top-2 logit margin of every step)."""
    ids, out, margins = list(prompt_ids), [], []
    for _ in range(n):
        logits = model(torch.tensor([ids]))[0, -1]
        top = torch.topk(logits, 2)
        nxt = int(top.indices[0])
        margins.append(float(top.values[0] - top.values[1]))
        out.append(nxt)
        ids.append(nxt)
        if nxt == eos:
            break
    return out, margins


def run_engine(binary, model, prompt, n, extra, timeout):
    cmd = [binary, "generate", "-m", model, "-p", prompt, "-n", str(n), "--temp", "0", "--json"] + extra
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` exited {r.returncode}\nstdout:\n{r.stdout[-3000:]}\n"
                           f"stderr:\n{r.stderr[-3000:]}")
    lines = [l for l in r.stdout.splitlines() if l.strip().startswith("{")]
    if not lines:
        raise RuntimeError(f"`{' '.join(cmd)}` printed no JSON object on stdout:\n{r.stdout[-3000:]}")
    return json.loads(lines[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ropepp", help="the ropepp binary")
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "default"))
    ap.add_argument("--prompt", default=DEFAULT_PROMPT)
    ap.add_argument("-n", type=int, default=32)
    ap.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    ap.add_argument("--tie", type=float, default=1e-3, help="top-2 logit margin treated as a tie")
    ap.add_argument("--extra", default="", help="extra engine arguments, space separated (e.g. '--device cuda')")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--reference-only", action="store_true")
    a = ap.parse_args()
    name = os.path.basename(os.path.normpath(a.model))

    cfg = json.load(open(os.path.join(a.model, "config.json")))
    bos, eos = int(cfg.get("bos_token_id", 1)), cfg.get("eos_token_id", 2)
    eos = int(eos[0] if isinstance(eos, list) else eos)
    prompt_ids = [bos] + spm_text.encode(spm_text.model_path(a.model), a.prompt)
    t0 = time.time()
    model = load_checkpoint(a.model, dtype=getattr(torch, a.dtype))
    ref, margins = reference_greedy(model, prompt_ids, a.n, eos)
    ref_text = spm_text.decode(spm_text.model_path(a.model), [t for t in ref if t != eos])
    info = (f"{name} mode {model.mode}: prompt {len(prompt_ids)} tokens, {len(ref)} generated, smallest top-2 "
            f"margin {min(margins):.4g} (tokenizer via {spm_text.backend()}, reference {time.time() - t0:.1f} s)")
    if a.reference_only or not a.ropepp:
        print(json.dumps({"prompt_tokens": prompt_ids, "tokens": ref, "text": ref_text, "margins": margins}))
        print(info, file=sys.stderr)
        return 0

    try:
        eng = run_engine(a.ropepp, a.model, a.prompt, a.n, a.extra.split(), a.timeout)
    except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as e:
        print(f"FAIL golden_generate {name}: {e}")
        return 1
    fails = []
    if list(eng.get("prompt_tokens", [])) != prompt_ids:
        fails.append(f"prompt_tokens {eng.get('prompt_tokens')} != reference {prompt_ids}")
    got = list(eng.get("tokens", []))
    want = ref if got == ref or not (ref and ref[-1] == eos and got == ref[:-1]) else ref[:-1]
    if got != want:
        k = next((i for i in range(min(len(got), len(want))) if got[i] != want[i]), min(len(got), len(want)))
        if k < len(want) and k < len(got) and margins[k] < a.tie:
            print(f"note: step {k} is a near tie in the reference (margin {margins[k]:.3g} < {a.tie}): "
                  f"engine {got[k]} vs reference {want[k]}; not counted")
        else:
            fails.append(f"generated ids differ from step {k} (reference margin there "
                         f"{margins[k] if k < len(margins) else float('nan'):.4g}):\n  engine    {got}\n  reference {want}")
    if "text" in eng and eng["text"] != ref_text and got == want:
        print(f"note: engine text {eng['text']!r} != reference decode {ref_text!r}")
    print(info)
    print(f"text: {a.prompt!r} -> {ref_text!r}")
    if fails:
        print(f"FAIL golden_generate {name}:\n" + "\n".join(fails))
        return 1
    print(f"PASS golden_generate {name}: {len(got)} greedy tokens identical")
    return 0


if __name__ == "__main__":
    sys.exit(main())
