#!/usr/bin/env python3
"""hf_compare.py: ropepp against HF transformers / PyTorch on the same checkpoints, side by side (issue #5).

Times, at batch 1 in --dtype on --device:
  * standard-RoPE checkpoints through transformers.LlamaForCausalLM (from_pretrained, attn_implementation="sdpa",
    HF's own DynamicCache), and through the PyTorch reference too (--ref-on-rope, on by default: it shows how far
    the reference is from HF on the same weights, i.e. how fair it is as the stand-in for RoPE++);
  * RoPE++ (EH/EC) checkpoints through the PyTorch reference tools/ropepp_ref (SDPA attention, its static KVCache),
    since no released transformers can run them;
the workloads of `ropepp bench`: pp<P> (prefill of P random tokens, logits of the last one only), tg<N> (greedy
decode of N tokens after a 1-token prompt) and tg<N> @ d<D> (the same after a D-token prompt). Each: a warm-up,
then the median of up to --reps timed runs, torch.cuda.synchronize() around each; every workload is capped at
--cap-s seconds (fewer reps, then fewer decode tokens; the JSON says how many) and the whole run at --budget-s.
The ropepp numbers come from `ropepp bench --json` files of the same run, matched to checkpoints by their
"model" path (else by directory name). Prints a table (workload | ropepp tok/s | HF/PyTorch tok/s | ratio) and
writes --out JSON after every row. A failure (transformers missing, a load or a workload failing, out of memory)
prints one line and the run goes on; the exit status is 0 unless the arguments are wrong.

    python3 tools/bench/hf_compare.py -m $WORK/models/rope-376m -m $WORK/models/eh-376m -m $WORK/models/ec-376m \\
        -j $OUT/bench_rope376.json -j $OUT/bench_eh376.json -j $OUT/bench_ec376.json --out $OUT/hf_compare.json
    /usr/bin/python3 tools/bench/hf_compare.py -m /tmp/hfc/ec --device cpu --dtype float32 -p 256 -n 16 -d 512
"""
import argparse
import gc
import json
import os
import signal
import statistics
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

T0 = time.monotonic()


def log(msg):
    print(f"[hf_compare {time.monotonic() - T0:6.1f}s] {msg}", flush=True)


def short_error(e):
    s = f"{type(e).__name__}: {e}".replace("\n", " ")
    return s if len(s) <= 300 else s[:297] + "..."


def parse_ints(s):
    return [int(x) for x in str(s).split(",") if x.strip() and int(x) > 0]


# ----------------------------------------------------------------------------------------------------
# ropepp bench JSON

def load_ropepp_results(paths):
    """[(model path or None, {test: tok_per_s}, file)] from `ropepp bench --json` outputs."""
    out = []
    for p in paths:
        try:
            with open(p) as f:
                j = json.load(f)
            tests = {r["test"]: float(r["tok_per_s"]) for r in j["results"]}
            out.append((j.get("model"), tests, p))
            log(f"ropepp results {p}: mode {j.get('mode')}, {len(tests)} tests ({', '.join(tests)})")
        except Exception as e:  # noqa: BLE001 - one bad file must not stop the run
            log(f"ropepp results {p}: unreadable ({short_error(e)}); its rows show '-'")
    return out


def match_ropepp(ckpt, results):
    """The results whose model is `ckpt`: same real path, else same directory name."""
    real = os.path.realpath(ckpt)
    for model, tests, _ in results:
        if model and os.path.realpath(model) == real:
            return tests
    base = os.path.basename(real.rstrip("/"))
    for model, tests, _ in results:
        if model and os.path.basename(os.path.realpath(model).rstrip("/")) == base:
            return tests
    return {}


# ----------------------------------------------------------------------------------------------------
# the two engines under test

class Engine:
    """prefill(ids [1, P]) -> last-row logits [1, V]; decode(prompt [1, D], n) -> (prefill s, decode s, last tok)."""
    label = "?"

    def __init__(self, torch, device):
        self.torch, self.device = torch, device

    def sync(self):
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()


class HFLlama(Engine):
    label = "HF LlamaForCausalLM (sdpa)"

    def __init__(self, torch, device, dtype, path, transformers):
        super().__init__(torch, device)
        from transformers import LlamaForCausalLM
        major = int(transformers.__version__.split(".")[0])
        keys = ("dtype", "torch_dtype") if major >= 5 else ("torch_dtype", "dtype")   # v5 renamed torch_dtype
        model, err = None, None
        for key in keys:
            try:
                model = LlamaForCausalLM.from_pretrained(path, attn_implementation="sdpa", **{key: dtype})
                break
            except TypeError as e:
                err = e
        if model is None:
            raise err
        if next(model.parameters()).dtype != dtype:
            model = model.to(dtype)
        self.model = model.to(device).eval()
        import inspect
        params = inspect.signature(self.model.forward).parameters
        self.keep = next(({k: 1} for k in ("logits_to_keep", "num_logits_to_keep") if k in params), {})

    def prefill(self, ids):
        return self.model(input_ids=ids, use_cache=False, **self.keep).logits[:, -1]

    def decode(self, prompt, n):
        t0 = time.perf_counter()
        out = self.model(input_ids=prompt, past_key_values=None, use_cache=True, **self.keep)  # HF's DynamicCache
        cache, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
        self.sync()
        t1 = time.perf_counter()
        for _ in range(n):
            out = self.model(input_ids=tok, past_key_values=cache, use_cache=True)
            cache, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
        self.sync()
        return t1 - t0, time.perf_counter() - t1, tok


class Reference(Engine):
    label = "PyTorch reference (sdpa)"

    def __init__(self, torch, device, dtype, path, mode=None):
        super().__init__(torch, device)
        from ropepp_ref.model import load_checkpoint
        self.model = load_checkpoint(path, dtype=dtype, mode=mode, device=device, attn_impl="sdpa")

    def prefill(self, ids):
        return self.model(ids, logits_to_keep=1)[:, -1]

    def decode(self, prompt, n):
        from ropepp_ref.model import KVCache
        cache = KVCache(self.model, prompt.shape[1] + n)
        t0 = time.perf_counter()
        tok = self.model(prompt, cache=cache, logits_to_keep=1)[:, -1:].argmax(-1)
        self.sync()
        t1 = time.perf_counter()
        for _ in range(n):
            tok = self.model(tok, cache=cache)[:, -1:].argmax(-1)
        self.sync()
        return t1 - t0, time.perf_counter() - t1, tok


# ----------------------------------------------------------------------------------------------------
# workloads

def time_prefill(eng, ids, reps, cap_s):
    """(tok/s median, per-rep tok/s, reps, last logits)"""
    t = time.perf_counter()
    logits = eng.prefill(ids)                   # warm-up (also the logits kept for the HF/reference check)
    eng.sync()
    warm = time.perf_counter() - t
    reps = max(1, min(reps, int(cap_s / max(warm, 1e-6))))
    rates = []
    for _ in range(reps):
        eng.sync()
        t = time.perf_counter()
        eng.prefill(ids)
        eng.sync()
        rates.append(ids.shape[1] / (time.perf_counter() - t))
    return statistics.median(rates), rates, logits


def time_decode(eng, prompt, n, reps, cap_s, min_tokens=8):
    """(tok/s median, per-rep tok/s, tokens per rep)"""
    pre_s, dec_s, _ = eng.decode(prompt, min(n, min_tokens))           # warm-up, and the cost estimate
    per_tok = dec_s / min(n, min_tokens)
    per_rep = pre_s + n * per_tok
    if per_rep > cap_s:                                                # one rep, and fewer tokens
        reps, n = 1, max(min(n, min_tokens), int((cap_s - pre_s) / per_tok))
    else:
        reps = max(1, min(reps, int(cap_s / per_rep)))
    rates = []
    for _ in range(reps):
        _, dec_s, _ = eng.decode(prompt, n)
        rates.append(n / dec_s)
    return statistics.median(rates), rates, n


# ----------------------------------------------------------------------------------------------------

def checkpoint_mode(path):
    from ropepp_ref.model import RopePPConfig, infer_mode, read_safetensors_header
    cfg = RopePPConfig.from_json(os.path.join(path, "config.json"))
    if cfg.mode:
        return cfg.mode
    index = os.path.join(path, "model.safetensors.index.json")
    files = (sorted(set(json.load(open(index))["weight_map"].values())) if os.path.exists(index)
             else ["model.safetensors"])
    shapes = {}
    for fname in files:
        header, _ = read_safetensors_header(os.path.join(path, fname))
        shapes.update({k: v["shape"] for k, v in header.items()})
    fits = infer_mode(cfg, shapes["model.layers.0.self_attn.q_proj.weight"],
                      shapes["model.layers.0.self_attn.o_proj.weight"])
    if len(fits) != 1:
        raise ValueError(f"cannot tell the mode from the q_proj/o_proj shapes (matching: {fits})")
    return fits[0]


class Report:
    def __init__(self, args, meta):
        self.args, self.meta, self.rows, self.errors = args, meta, [], []

    def error(self, what, e):
        msg = f"{what}: {short_error(e)}"
        log(msg)
        self.errors.append(msg)
        self.save()

    def add(self, row):
        r, p = row.get("ropepp_tok_per_s"), row.get("peer_tok_per_s")
        row["ratio"] = r / p if r and p else None
        self.rows.append(row)
        log(f"{row['checkpoint']} | {row['peer']} | {row['workload']} | ropepp {fmt(r)} | peer {fmt(p)} | "
            f"ratio {fmt(row['ratio'], 2)}{' | ' + row['note'] if row.get('note') else ''}")
        self.save()

    def save(self):
        if not self.args.out:
            return
        doc = dict(self.meta, elapsed_s=round(time.monotonic() - T0, 1), rows=self.rows, errors=self.errors)
        tmp = self.args.out + ".tmp"
        try:
            with open(tmp, "w") as f:
                json.dump(doc, f, indent=2)
            os.replace(tmp, self.args.out)
        except OSError as e:
            log(f"cannot write {self.args.out}: {short_error(e)}")

    def table(self):
        head = ("checkpoint", "HF/PyTorch engine", "workload", "ropepp tok/s", "HF/PyTorch tok/s",
                "ratio (ropepp / HF)", "note")
        lines = [head] + [(r["checkpoint"], r["peer"], r["workload"], fmt(r.get("ropepp_tok_per_s")),
                           fmt(r.get("peer_tok_per_s")), fmt(r.get("ratio"), 2) + ("x" if r.get("ratio") else ""),
                           r.get("note", "")) for r in self.rows]
        w = [max(len(str(l[i])) for l in lines) for i in range(len(head))]
        out = ["| " + " | ".join(str(c).ljust(w[i]) if i in (0, 1, 2, 6) else str(c).rjust(w[i])
                                 for i, c in enumerate(l)) + " |" for l in lines]
        out.insert(1, "|" + "|".join("-" * (x + 2) for x in w) + "|")
        return "\n".join(out)


def fmt(x, digits=1):
    if x is None:
        return "-"
    return f"{x:,.{digits}f}" if x < 1e4 or digits > 1 else f"{x:,.0f}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("-m", "--model", action="append", required=True, help="checkpoint directory (repeatable)")
    ap.add_argument("-j", "--ropepp", action="append", default=[], help="`ropepp bench --json` output (repeatable)")
    ap.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu (default cuda)")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32", "float64"))
    ap.add_argument("-p", "--prefill", default="4096", help="prefill sizes, comma-separated (default 4096)")
    ap.add_argument("-n", "--gen", type=int, default=128, help="decode length (default 128)")
    ap.add_argument("-d", "--depth", default="16384",
                    help="context depths to decode at besides the short one, comma-separated; 0 or '' = none")
    ap.add_argument("-r", "--reps", type=int, default=5, help="timed repetitions at most (default 5)")
    ap.add_argument("--cap-s", type=float, default=8.0, help="time cap per workload, warm-up included (default 8)")
    ap.add_argument("--budget-s", type=float, default=110.0,
                    help="skip the remaining workloads after this many seconds in all (default 110)")
    ap.add_argument("--no-ref-on-rope", dest="ref_on_rope", action="store_false",
                    help="time standard-RoPE checkpoints with HF only, not also with the PyTorch reference")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads for torch (default: torch's choice)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write the results as JSON here (rewritten after every row)")
    args = ap.parse_args(argv)
    if args.gen < 1 or args.reps < 1:
        ap.error("-n and -r must be >= 1")

    meta = dict(device=args.device, dtype=args.dtype, batch=1, torch=None, transformers=None,
                models=args.model, ropepp_json=args.ropepp, cap_s=args.cap_s)
    rep = Report(args, meta)
    try:
        import torch
    except Exception as e:  # noqa: BLE001
        rep.error("import torch", e)
        print("hf_compare: PyTorch is not importable here; no rows.")
        return 0
    meta["torch"] = torch.__version__
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = torch.device(args.device)
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise RuntimeError("torch.cuda.is_available() is False")
            torch.cuda.init()
            meta["gpu"] = torch.cuda.get_device_name(device)
    except Exception as e:  # noqa: BLE001
        rep.error(f"device {args.device}", e)
        print("hf_compare: no usable device; no rows.")
        return 0
    dtype = getattr(torch, args.dtype)
    log(f"torch {torch.__version__}, device {args.device} {meta.get('gpu', '')}, {args.dtype}, batch 1")

    state = {"transformers": None}

    def get_transformers():
        if state["transformers"] is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            try:
                import transformers
                transformers.logging.set_verbosity_error()
                state["transformers"] = transformers
                meta["transformers"] = transformers.__version__
                log(f"transformers {transformers.__version__}")
            except Exception as e:  # noqa: BLE001
                state["transformers"] = False
                rep.error("import transformers (the HF rows are skipped)", e)
        return state["transformers"]

    def on_term(signum, frame):    # `timeout` sends SIGTERM: stop measuring, still print the table
        raise Interrupted(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    try:
        run_models(args, rep, meta, torch, device, dtype, get_transformers)
    except (Interrupted, KeyboardInterrupt) as e:
        rep.error("interrupted, rows so far only", e)
    rep.save()
    print()
    print(f"HF transformers / PyTorch vs ropepp, batch 1, {args.dtype}, device {meta.get('gpu', args.device)}, "
          f"torch {meta['torch']}, transformers {meta['transformers'] or '-'}")
    print(rep.table())
    for e in rep.errors:
        print("error:", e)
    if args.out:
        print(f"(written to {args.out})")
    return 0


class Interrupted(BaseException):    # not an Exception: the per-row handlers must not swallow it
    pass


def run_models(args, rep, meta, torch, device, dtype, get_transformers):
    prefills, depths = parse_ints(args.prefill), parse_ints(args.depth)
    ropepp = load_ropepp_results(args.ropepp)
    gen = torch.Generator().manual_seed(args.seed)
    n = args.gen
    for path in args.model:
        name = os.path.basename(os.path.realpath(path).rstrip("/"))
        try:
            mode = checkpoint_mode(path)
            with open(os.path.join(path, "config.json")) as f:
                vocab = int(json.load(f)["vocab_size"])
        except Exception as e:  # noqa: BLE001
            rep.error(f"{name}: unreadable checkpoint", e)
            continue
        tests = match_ropepp(path, ropepp)
        if ropepp and not tests:
            log(f"{name}: no ropepp bench JSON names this checkpoint; its ropepp column shows '-'")
        engines = []
        if mode == "rope":
            engines.append("hf")
            if args.ref_on_rope:
                engines.append("ref")
        else:
            engines.append("ref")
        # the same ids for every engine on this checkpoint
        ids = {P: torch.randint(0, vocab, (1, P), generator=gen) for P in prefills}
        prompts = {D: torch.randint(0, vocab, (1, max(D, 1)), generator=gen) for D in [0] + depths}
        last_logits = {}
        for which in engines:
            label = HFLlama.label if which == "hf" else Reference.label
            eng, why = None, "not run: load failed"
            if time.monotonic() - T0 > args.budget_s:
                why = f"skipped: past --budget-s {args.budget_s:g}"
            else:
                try:
                    t = time.perf_counter()
                    with torch.inference_mode():
                        if which == "ref":
                            eng = Reference(torch, device, dtype, path, mode)
                        elif get_transformers():
                            eng = HFLlama(torch, device, dtype, path, get_transformers())
                        else:
                            raise RuntimeError("transformers is not importable")
                        eng.sync()
                    log(f"{name} ({mode}): {label} loaded in {time.perf_counter() - t:.1f} s")
                except Exception as e:  # noqa: BLE001
                    rep.error(f"{name}: {label} failed to load", e)
                    if os.environ.get("HF_COMPARE_TRACE"):
                        traceback.print_exc()
                    eng = None
            workloads = ([(f"pp{P}", "pp", P) for P in prefills] + [(f"tg{n}", "tg", 0)] +
                         [(f"tg{n} @ d{D}", "tg", D) for D in depths])
            for wl, kind, size in workloads:
                row = dict(checkpoint=name, mode=mode, peer=label, workload=wl, ropepp_tok_per_s=tests.get(wl))
                if eng is None:
                    row["note"] = why
                    rep.add(row)
                    continue
                if time.monotonic() - T0 > args.budget_s:
                    row["note"] = f"skipped: past --budget-s {args.budget_s:g}"
                    rep.add(row)
                    continue
                try:
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats(device)
                    t = time.perf_counter()
                    with torch.inference_mode():
                        if kind == "pp":
                            x = ids[size].to(device)
                            tps, rates, logits = time_prefill(eng, x, args.reps, args.cap_s)
                            last_logits[(which, size)] = logits.float().cpu()
                            row.update(tokens=size)
                        else:
                            x = prompts[size].to(device)
                            tps, rates, ntok = time_decode(eng, x, n, args.reps, args.cap_s)
                            row.update(tokens=ntok, depth=size)
                            if ntok != n:
                                row["note"] = f"{ntok} tokens (time cap)"
                    row.update(peer_tok_per_s=tps, peer_reps=[round(r, 2) for r in rates],
                               seconds=round(time.perf_counter() - t, 2))
                    if device.type == "cuda":
                        row["peak_mem_GiB"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
                except Exception as e:  # noqa: BLE001 - e.g. out of memory: note it, go on
                    row["note"] = f"failed: {short_error(e)}"[:200]
                    rep.errors.append(f"{name} {label} {wl}: {short_error(e)}")
                    if os.environ.get("HF_COMPARE_TRACE"):
                        traceback.print_exc()
                rep.add(row)
            del eng
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        # the same weights through HF and the reference: their last-token logits should agree (bf16 noise)
        for P in prefills:
            a, b = last_logits.get(("hf", P)), last_logits.get(("ref", P))
            if a is not None and b is not None:
                err = float((a - b).norm() / b.norm())
                top = bool(a.argmax() == b.argmax())
                meta.setdefault("hf_vs_reference", []).append(
                    dict(checkpoint=name, tokens=P, last_logits_rel_err=err, same_top1=top))
                log(f"{name}: HF vs reference last-token logits of pp{P}: rel err {err:.2e}, same top-1 {top}")


if __name__ == "__main__":
    sys.exit(main())
