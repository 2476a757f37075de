#!/usr/bin/python3
"""Train the RoPE / EH / EC siblings of the embedded default model with one recipe and one token budget.

    # all three, concurrently (one process a mode), on the GPU:
    python3 tools/train/train.py --data .device/default_model_data --out OUTDIR --modes ec,eh,rope
    # what made models/default*: every mode at two step budgets (six processes at once on one H100, ~3 min);
    # the budget with the lowest mean val NLL wins; its three models + metrics.json + train.log are copied
    # to --export-dir (then tools/train/export_models.py --run THAT_DIR writes models/default*):
    python3 tools/train/train.py --out /tmp/run --export-dir $OUT --modes ec,eh,rope --budgets 600,800 \
        --max-train-seconds 330
    # one mode:
    python3 tools/train/train.py --data .device/default_model_data --out OUTDIR --mode ec

The model is tools/ropepp_ref's RopePPForCausalLM (the same definition the C++ engine is tested against),
trained with attn_impl="sdpa" under bf16 autocast (fp32 master weights), AdamW, linear warm-up + cosine
decay. Training samples are uniformly random windows of seq+1 tokens of train.bin (same seed, so the same
windows, for every mode). Every --eval-every steps the mean NLL on val.bin (non-overlapping windows of the
training length) is measured; the weights with the lowest one are kept ("early stopping"; with the cosine
schedule this is usually the last step) and then rounded to bf16, exactly as exported.

Final evaluation (the shipped bf16 weights, computed in fp32 on the device, TF32 off): val.bin and
wiki_test.bin, for each window N in --eval-windows, are cut into NON-OVERLAPPING windows of N tokens
starting at token 0 (the last, shorter window included); each window is one forward pass from position 0
and every token of a window except its first is scored. Mean NLL = total NLL / scored tokens; ppl = exp.

Outputs in --out: model_<mode>.safetensors (bf16, HF names, tied embeddings), config_<mode>.json,
metrics_<mode>.json and, with --modes, metrics.json (all modes merged) and train.log.
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from ropepp_ref import RopePPConfig, RopePPForCausalLM, save_checkpoint  # noqa: E402

ROPE_CONFIGS = {"rope": {"imag": False}, "eh": {"imag": True, "imag_mode": "imag1"},
                "ec": {"imag": True, "imag_mode": "imag2"}}


def make_config(mode, a):
    """The HF config.json dict of `mode` (the three differ only in rope_config)."""
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": a.vocab, "hidden_size": a.hidden, "intermediate_size": a.ffn,
        "num_hidden_layers": a.layers, "num_attention_heads": a.heads, "num_key_value_heads": a.kv_heads,
        "head_dim": a.head_dim, "hidden_act": "silu", "max_position_embeddings": a.seq,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "rope_scaling": None, "attention_bias": False,
        "attention_dropout": 0.0, "mlp_bias": False, "initializer_range": 0.02, "tie_word_embeddings": True,
        "bos_token_id": 1, "eos_token_id": 2, "use_cache": True, "torch_dtype": "bfloat16",
        "rope_config": dict(ROPE_CONFIGS[mode]),
    }


def log(fh, msg):
    line = f"[{time.strftime('%H:%M:%S')}] {msg}"
    print(line, flush=True)
    if fh:
        fh.write(line + "\n")
        fh.flush()


@torch.no_grad()
def init_weights(model, seed, n_layers):
    """N(0, 0.02); o_proj and down_proj (residual outputs) N(0, 0.02/sqrt(2 L)); norms 1."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.fill_(1.0)
            continue
        std = 0.02 / math.sqrt(2 * n_layers) if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
        p.copy_((torch.randn(p.shape, generator=g) * std).to(p))


@torch.no_grad()
def evaluate(model, tokens, window, device, batch_tokens=32768, max_windows=None):
    """Non-overlapping windows of `window` tokens of the 1-D LongTensor `tokens` (the last one shorter).
    Returns (total nll, scored tokens). The model runs in its own dtype (fp32 for the reported numbers)."""
    n = tokens.numel()
    starts = list(range(0, n - 1, window))
    if max_windows:
        starts = starts[:max_windows]
    full = [s for s in starts if s + window <= n]
    tail = [s for s in starts if s + window > n]
    total, count = 0.0, 0
    per = max(1, batch_tokens // window) if window <= 2048 else 1
    for i in range(0, len(full), per):
        x = torch.stack([tokens[s:s + window] for s in full[i:i + per]]).to(device)
        logits = model(x).float()
        nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                              reduction="sum")
        total += float(nll)
        count += x.shape[0] * (window - 1)
    for s in tail:
        x = tokens[s:].unsqueeze(0).to(device)
        if x.shape[1] < 2:
            continue
        logits = model(x).float()
        total += float(F.cross_entropy(logits[0, :-1], x[0, 1:], reduction="sum"))
        count += x.shape[1] - 1
    return total, count


def lr_at(step, a):
    if step < a.warmup:
        return a.lr * (step + 1) / a.warmup
    t = min(1.0, (step - a.warmup) / max(1, a.steps - a.warmup))
    return a.lr * (a.min_lr_ratio + (1 - a.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def load_bin(path):
    return torch.from_numpy(np.fromfile(path, dtype=np.uint16).astype(np.int64))


def train_one(a):
    os.makedirs(a.out, exist_ok=True)
    fh = open(os.path.join(a.out, f"train_{a.mode}.log"), "w")
    device = torch.device(a.device if a.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(a.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    cfg_dict = make_config(a.mode, a)
    cfg = RopePPConfig.from_dict(cfg_dict)
    model = RopePPForCausalLM(cfg, a.mode, dtype=torch.float32, device=device, attn_impl="sdpa")
    init_weights(model, a.seed, a.layers)
    n_params = sum(p.numel() for p in model.parameters())
    log(fh, f"mode={a.mode} device={device} torch={torch.__version__} params={n_params} "
            f"(bf16 {2 * n_params / 2**20:.2f} MiB) config={json.dumps(cfg_dict['rope_config'])}")

    train = load_bin(os.path.join(a.data, "train.bin")).to(device)
    val = load_bin(os.path.join(a.data, "val.bin"))
    wiki = load_bin(os.path.join(a.data, "wiki_test.bin"))
    if a.eval_limit:  # smoke tests only
        val, wiki = val[:a.eval_limit], wiki[:a.eval_limit]
    log(fh, f"tokens: train {train.numel()} val {val.numel()} wiki {wiki.numel()}; "
            f"budget {a.steps} steps x {a.batch} x {a.seq} = {a.steps * a.batch * a.seq} tokens "
            f"({a.steps * a.batch * a.seq / train.numel():.2f} epochs)")

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    fused = {"fused": True} if device.type == "cuda" else {}
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.wd}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8, **fused)
    fwd = torch.compile(model) if a.compile else model
    gen = torch.Generator(device=device).manual_seed(a.seed)
    ar = torch.arange(a.seq + 1, device=device)
    amp = torch.autocast(device_type=device.type, dtype=torch.bfloat16)

    def val_nll():
        model.eval()
        tot, cnt = evaluate(model, val, a.seq, device, max_windows=a.eval_max_windows)
        model.train()
        return tot / cnt

    curve, best, best_step, best_state = [], float("inf"), -1, None
    t0, truncated, step, loss_ema = time.time(), False, 0, None
    model.train()
    for step in range(a.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, a)
        starts = torch.randint(0, train.numel() - a.seq - 1, (a.batch,), device=device, generator=gen)
        xy = train[starts[:, None] + ar[None, :]]
        with amp:
            logits = fwd(xy[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), xy[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip)
        opt.step()
        if (step + 1) % a.log_every == 0 or step == 0:
            lv = float(loss.detach())
            loss_ema = lv if loss_ema is None else 0.9 * loss_ema + 0.1 * lv
            el = time.time() - t0
            log(fh, f"step {step + 1}/{a.steps} loss {lv:.4f} gnorm {float(gn):.3f} lr {lr_at(step, a):.2e} "
                    f"{(step + 1) * a.batch * a.seq / el:.0f} tok/s {el:.0f}s")
        last = step + 1 == a.steps
        if (step + 1) % a.eval_every == 0 or last:
            v = val_nll()
            curve.append([step + 1, v])
            if v < best:
                best, best_step = v, step + 1
                best_state = {k: t.detach().clone() for k, t in model.state_dict().items()}
            log(fh, f"step {step + 1} val_nll@{a.seq} {v:.4f} ppl {math.exp(v):.2f} (best {best:.4f} @ {best_step})")
        if time.time() - t0 > a.max_train_seconds and not last:
            truncated = True
            v = val_nll()
            curve.append([step + 1, v])
            if v < best:
                best, best_step = v, step + 1
                best_state = {k: t.detach().clone() for k, t in model.state_dict().items()}
            log(fh, f"time limit {a.max_train_seconds}s reached at step {step + 1}: stopping")
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_s = time.time() - t0
    steps_done = step + 1

    model.load_state_dict(best_state)
    with torch.no_grad():  # evaluate exactly what is exported: bf16 weights, computed in fp32
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    model.eval()
    tmp = os.path.join(a.out, f"hf_{a.mode}")
    save_checkpoint(model, cfg_dict, tmp, dtype=torch.bfloat16)
    os.replace(os.path.join(tmp, "model.safetensors"), os.path.join(a.out, f"model_{a.mode}.safetensors"))
    os.replace(os.path.join(tmp, "config.json"), os.path.join(a.out, f"config_{a.mode}.json"))
    os.rmdir(tmp)

    t1 = time.time()
    ev = {}
    for name, toks in (("val", val), ("wikitext2_test", wiki)):
        ev[name] = {}
        for w in a.eval_windows:
            tot, cnt = evaluate(model, toks, w, device)
            ev[name][str(w)] = {"nll": tot / cnt, "ppl": math.exp(tot / cnt), "scored_tokens": cnt}
            log(fh, f"eval {name} window {w}: nll {tot / cnt:.4f} ppl {math.exp(tot / cnt):.3f} ({cnt} tokens)")
    metrics = {
        "mode": a.mode, "rope_config": cfg_dict["rope_config"], "params": n_params,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "train": {"steps": steps_done, "steps_planned": a.steps, "truncated_by_time": truncated,
                  "tokens": steps_done * a.batch * a.seq, "seconds": train_s,
                  "tokens_per_s": steps_done * a.batch * a.seq / train_s, "final_train_loss_ema": loss_ema,
                  "val_curve": curve, "selected_step": best_step, "selected_val_nll_fp32_model": best},
        "eval_seconds": time.time() - t1, "eval": ev,
    }
    with open(os.path.join(a.out, f"metrics_{a.mode}.json"), "w") as f:
        json.dump(metrics, f, indent=1)
    log(fh, f"done: {json.dumps(ev)}")


def recipe(a):
    keys = ("vocab", "hidden", "ffn", "layers", "heads", "kv_heads", "head_dim", "seq", "batch", "steps", "lr",
            "min_lr_ratio", "warmup", "wd", "clip", "seed", "eval_every", "eval_windows", "compile")
    r = {k: getattr(a, k) for k in keys}
    r.update({"optimizer": "AdamW(betas=(0.9, 0.95), eps=1e-8), weight decay on matrices only",
              "schedule": "linear warm-up then cosine to min_lr_ratio*lr",
              "precision": "fp32 master weights, bf16 autocast, sdpa attention",
              "sampling": "uniform random windows of seq+1 tokens of train.bin",
              "selection": "lowest val NLL (windows of seq) among the eval_every checkpoints",
              "eval": "bf16 weights in fp32, non-overlapping windows from position 0 (last one shorter), "
                      "every token but a window's first scored"})
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=".device/default_model_data")
    ap.add_argument("--out", required=True)
    ap.add_argument("--mode", choices=sorted(ROPE_CONFIGS))
    ap.add_argument("--modes", help="comma list: run one process per mode (concurrently) and merge")
    ap.add_argument("--sequential", action="store_true", help="with --modes: one after the other")
    ap.add_argument("--budgets", help="with --modes: comma list of step budgets to train (each for every mode)")
    ap.add_argument("--export-dir", help="with --modes: copy the chosen budget's models, metrics.json, train.log")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--ffn", type=int, default=768)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr-ratio", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--eval-max-windows", type=int, default=0, help="cap val windows during training (0: all)")
    ap.add_argument("--eval-windows", default="512,2048,8192")
    ap.add_argument("--max-train-seconds", type=float, default=1e9)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--eval-limit", type=int, default=0, help="smoke tests: only the first N val/wiki tokens")
    a = ap.parse_args()
    a.eval_windows = [int(x) for x in str(a.eval_windows).split(",")]
    if a.mode:
        train_one(a)
        return
    if not a.modes:
        ap.error("--mode or --modes is required")
    drive(a)


def child_args(argv, drop):
    """argv without the driver-only options in `drop` (each with its value unless a flag)."""
    out, skip = [], False
    for x in argv:
        if skip:
            skip = False
            continue
        name = x.split("=")[0]
        if name in drop:
            skip = "=" not in x and drop[name]
            continue
        out.append(x)
    return out


def drive(a):
    """One process per (budget, mode), all concurrently; the budget with the lowest mean (over modes) val
    NLL of the selected checkpoints wins; its models + metrics.json + train.log go to --export-dir."""
    modes = a.modes.split(",")
    budgets = [int(x) for x in (a.budgets or str(a.steps)).split(",")]
    base = child_args(sys.argv[1:], {"--modes": True, "--budgets": True, "--export-dir": True,
                                     "--sequential": False, "--steps": True, "--out": True})
    os.makedirs(a.out, exist_ok=True)
    runs = [(b, m) for b in budgets for m in modes]
    procs, rcs = [], {}
    for b, m in runs:
        cmd = [sys.executable, os.path.abspath(__file__)] + base + [
            "--mode", m, "--steps", str(b), "--out", os.path.join(a.out, f"steps_{b}")]
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT if a.sequential else None)
        if a.sequential:
            rcs[f"{b}/{m}"] = p.wait()
        else:
            procs.append((f"{b}/{m}", p))
    for k, p in procs:
        rcs[k] = p.wait()
    rec = recipe(a)
    rec["budgets_steps"] = budgets
    rec["budgets_tokens"] = [b * a.batch * a.seq for b in budgets]
    rec["steps"] = None  # set to the chosen budget below
    merged = {"recipe": rec, "return_codes": rcs, "runs": {}}
    meta = os.path.join(a.data, "meta.json")
    if os.path.exists(meta):
        with open(meta) as f:
            merged["data"] = json.load(f)
    logs = []
    for b in budgets:
        d = os.path.join(a.out, f"steps_{b}")
        merged["runs"][str(b)] = {}
        for m in modes:
            mp = os.path.join(d, f"metrics_{m}.json")
            if os.path.exists(mp):
                with open(mp) as f:
                    merged["runs"][str(b)][m] = json.load(f)
            lp = os.path.join(d, f"train_{m}.log")
            if os.path.exists(lp):
                with open(lp) as f:
                    logs.append(f"===== steps {b} mode {m} =====\n" + f.read())
    complete = [b for b in budgets if len(merged["runs"][str(b)]) == len(modes)]
    if complete:
        def score(b):
            r = merged["runs"][str(b)]
            return sum(r[m]["train"]["selected_val_nll_fp32_model"] for m in modes) / len(modes)
        chosen = min(complete, key=score)
        merged["chosen_budget_steps"] = chosen
        rec["steps"] = chosen
        merged["chosen_rule"] = "the complete budget with the lowest mean over modes of the selected val NLL"
        merged["budget_scores"] = {str(b): score(b) for b in complete}
        merged["models"] = merged["runs"][str(chosen)]
    with open(os.path.join(a.out, "train.log"), "w") as f:
        f.write("".join(logs))
    with open(os.path.join(a.out, "metrics.json"), "w") as f:
        json.dump(merged, f, indent=1)
    if a.export_dir and complete:
        os.makedirs(a.export_dir, exist_ok=True)
        src = os.path.join(a.out, f"steps_{merged['chosen_budget_steps']}")
        for m in modes:
            shutil.copy(os.path.join(src, f"model_{m}.safetensors"), a.export_dir)
        for fn in ("metrics.json", "train.log"):
            shutil.copy(os.path.join(a.out, fn), a.export_dir)
    summary = {b: {m: {k: {w: round(v["ppl"], 3) for w, v in e.items()} for k, e in r["eval"].items()}
                   for m, r in merged["runs"][b].items()} for b in merged["runs"]}
    print(json.dumps({"chosen": merged.get("chosen_budget_steps"), "scores": merged.get("budget_scores"),
                      "ppl": summary, "rc": rcs}, indent=1))
    sys.exit(0 if all(rc == 0 for rc in rcs.values()) else 1)


if __name__ == "__main__":
    main()
