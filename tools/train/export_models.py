#!/usr/bin/python3
"""Assemble the published HF directories of the default model and its siblings from a training run.

    python3 tools/train/export_models.py --run RUN_DIR [--data .device/default_model_data] [--models models]

RUN_DIR holds what tools/train/train.py --modes ... --export-dir wrote: model_{ec,eh,rope}.safetensors and
metrics.json. Writes models/default (EC), models/default-eh, models/default-rope, each with config.json
(LlamaForCausalLM + rope_config, rebuilt with train.py's make_config from the run's recipe),
model.safetensors (copied byte for byte), tokenizer.model, tokenizer_config.json, generation_config.json.
Every directory is then loaded back with ropepp_ref.load_checkpoint and its size checked (<= 16 MiB).
The model cards (README.md) are written by hand.
"""
import argparse
import json
import os
import shutil
import sys
from types import SimpleNamespace

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, ".."))
from train import make_config  # noqa: E402
from ropepp_ref import load_checkpoint  # noqa: E402

DIRS = {"ec": "default", "eh": "default-eh", "rope": "default-rope"}
LIMIT = 16 * 2**20


def tokenizer_config(max_len):
    return {
        "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None,
        "model_max_length": max_len, "clean_up_tokenization_spaces": False, "legacy": False,
        "add_prefix_space": False, "sp_model_kwargs": {}, "padding_side": "left",
        "spaces_between_special_tokens": False,
    }


def generation_config():
    return {"bos_token_id": 1, "eos_token_id": 2, "do_sample": True, "temperature": 0.8, "top_p": 0.95,
            "max_new_tokens": 256}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--data", default=os.path.join(ROOT, ".device", "default_model_data"))
    ap.add_argument("--models", default=os.path.join(ROOT, "models"))
    ap.add_argument("--modes", default="ec,eh,rope")
    args = ap.parse_args()
    with open(os.path.join(args.run, "metrics.json")) as f:
        metrics = json.load(f)
    r = metrics["recipe"]
    a = SimpleNamespace(vocab=r["vocab"], hidden=r["hidden"], ffn=r["ffn"], layers=r["layers"], heads=r["heads"],
                        kv_heads=r["kv_heads"], head_dim=r["head_dim"], seq=r["seq"])
    for mode in args.modes.split(","):
        d = os.path.join(args.models, DIRS[mode])
        os.makedirs(d, exist_ok=True)
        shutil.copyfile(os.path.join(args.run, f"model_{mode}.safetensors"), os.path.join(d, "model.safetensors"))
        shutil.copyfile(os.path.join(args.data, "tokenizer.model"), os.path.join(d, "tokenizer.model"))
        for name, obj in (("config.json", make_config(mode, a)), ("tokenizer_config.json", tokenizer_config(a.seq)),
                          ("generation_config.json", generation_config())):
            with open(os.path.join(d, name), "w") as f:
                json.dump(obj, f, indent=2)
                f.write("\n")
        m = load_checkpoint(d)
        assert m.mode == mode, (d, m.mode, mode)
        size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
        print(f"{d}: mode {m.mode}, {sum(p.numel() for p in m.parameters())} params, {size} bytes "
              f"({size / 2**20:.2f} MiB)")
        if size > LIMIT:
            sys.exit(f"error: {d} is {size} bytes > 16 MiB")


if __name__ == "__main__":
    main()
