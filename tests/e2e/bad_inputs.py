#!/usr/bin/python3
"""bad_inputs.py: the bad-input matrix through the `ropepp` binary (docs/RELIABILITY.md).

Every case must end with exit status 1 and an `error: ...` line on stderr (naming what is wrong where the
case says so), within the time limit, with no crash (status >= 128 or a signal), no sanitizer report and no
uncaught-exception message. A few "ok" cases check that the valid baseline and the tolerated inputs
(--keep-end, --lossy, --help) still work.

    /usr/bin/python3 tests/e2e/bad_inputs.py --ropepp build/ropepp --work build/hardening_bad_inputs
    ... -k config       only the cases whose name contains "config"

The valid tiny checkpoint comes from tools/gen_checkpoint.py; the tokenizer is a tiny byte-level BPE
tokenizer.json written here. Each case gets its own directory (unchanged files are symlinks to the base).
"""
import argparse
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SANITIZER = re.compile(rb"AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer|runtime error:|"
                       rb"terminate called|Segmentation fault|core dumped|std::bad_alloc|stack-overflow")


# ---- files ---------------------------------------------------------------------------------------------

def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def tiny_tokenizer():
    """A byte-level BPE tokenizer.json with 256 byte tokens, a few merges and Llama-3-like special tokens
    (ids < 300, so it fits the tiny checkpoint's vocabulary of 512)."""
    b2u = bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    merges = []
    for a, b in [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("e", "r"), ("o", "r"), ("l", "d"),
                 ("Ġ", "w"), ("Ġw", "or"), ("Ġwor", "ld"), ("l", "l"), ("e", "ll"), ("h", "ell")]:
        if a + b not in vocab:
            vocab[a + b] = len(vocab)
        merges.append(f"{a} {b}")
    n = len(vocab)
    added = [{"id": n + k, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True}
             for k, c in enumerate(["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                                    "<|end_header_id|>", "<|eot_id|>"])]
    return {"version": "1.0", "added_tokens": added, "normalizer": None,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
            "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                      "vocab": vocab, "merges": merges}}


TOKENIZER_CONFIG = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "add_bos_token": True,
                    "chat_template": "{{ '<|start_header_id|>' + role + '<|end_header_id|>' }}"}


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    return raw, n, json.loads(raw[8:8 + n]), raw[8 + n:]


def safetensors_bytes(header, data):
    """header: dict (serialised) or bytes (raw)."""
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + data


# ---- the runner ----------------------------------------------------------------------------------------

class Matrix:
    def __init__(self, ropepp, work, timeout, pattern):
        self.ropepp, self.work, self.timeout, self.pattern = ropepp, work, timeout, pattern
        self.failures, self.passed, self.skipped = [], 0, 0
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ROPEPP_")}
        self.env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
        self.env["SPDLOG_LEVEL"] = "warn"
        self.base = os.path.join(work, "base")
        self.cases = os.path.join(work, "cases")

    def case_dir(self, name, files=None, drop=()):
        """A checkpoint directory: the base's files as symlinks, `files` {name: bytes|dict|None} written
        (dict: as JSON; None: removed), `drop` names left out."""
        d = os.path.join(self.cases, re.sub(r"[^A-Za-z0-9_.-]+", "_", name))
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        files = files or {}
        for f in os.listdir(self.base):
            if f not in files and f not in drop:
                os.symlink(os.path.join(self.base, f), os.path.join(d, f))
        for f, content in files.items():
            if content is None:
                continue
            if isinstance(content, (dict, list)):
                content = json.dumps(content).encode()
            elif isinstance(content, str):
                content = content.encode()
            with open(os.path.join(d, f), "wb") as fh:
                fh.write(content)
        return d

    def run(self, name, args, expect="error", needles=(), stdin=b"", timeout=None):
        """expect: "error" (status 1 + an error: line holding every needle, case-insensitive) or "ok"."""
        if self.pattern and self.pattern not in name:
            self.skipped += 1
            return
        argv = [self.ropepp] + [a if isinstance(a, bytes) else str(a) for a in args]
        t0 = time.time()
        try:
            p = subprocess.run(argv, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env,
                               timeout=timeout or self.timeout)
        except subprocess.TimeoutExpired:
            self.fail(name, argv, f"no exit within {timeout or self.timeout} s (hang?)", b"")
            return
        dt = time.time() - t0
        rc, err = p.returncode, p.stderr
        problems = []
        if rc < 0 or rc >= 128:
            problems.append(f"killed / crashed: status {rc}")
        if SANITIZER.search(err):
            problems.append("sanitizer report or crash message on stderr")
        if expect == "ok":
            if rc != 0:
                problems.append(f"expected success, got status {rc}")
        else:
            if rc != 1:
                problems.append(f"expected status 1, got {rc}")
            lines = [l for l in err.decode("utf-8", "replace").splitlines() if l.startswith("error: ")]
            if not lines:
                problems.append("no 'error: ' line on stderr")
            else:
                text = " ".join(lines).lower()
                missing = [n for n in needles if n.lower() not in text]
                if missing:
                    problems.append(f"error line lacks {missing}")
        if problems:
            self.fail(name, argv, "; ".join(problems), err)
        else:
            self.passed += 1
            first = next((l for l in err.decode("utf-8", "replace").splitlines() if l.startswith("error: ")), "")
            print(f"ok    {name} ({dt:.1f}s) {first[:150]}", flush=True)

    def fail(self, name, argv, why, err):
        self.failures.append(name)
        shown = " ".join(a.decode("utf-8", "replace") if isinstance(a, bytes) else a for a in argv)
        print(f"FAIL  {name}: {why}\n      $ {shown[:300]}\n      stderr: "
              f"{err.decode('utf-8', 'replace')[-1500:]}", flush=True)


# ---- the cases -----------------------------------------------------------------------------------------

def safetensors_cases(m):
    raw, n, header, data = read_safetensors(os.path.join(m.base, "model.safetensors"))
    size = len(raw)
    info = lambda d: ["info", "-m", d]

    # Truncation at many offsets: inside the length prefix, the header, the data, the last tensor.
    for cut in sorted({0, 1, 4, 7, 8, 9, 12, 8 + n // 3, 8 + n // 2, 8 + n - 1, 8 + n, 8 + n + 1, 8 + n + 100,
                       8 + n + len(data) // 2, size - 100, size - 4, size - 1}):
        m.run(f"safetensors_truncated_at_{cut}", info(m.case_dir(f"trunc{cut}", {"model.safetensors": raw[:cut]})),
              needles=["model.safetensors"])

    # Hostile header lengths.
    for hl in [0, 1, 7, n - 8, n + 1, size - 8, size - 7, 100_000_001, 2 ** 32, 2 ** 63, 2 ** 64 - 1]:
        m.run(f"safetensors_header_length_{hl}",
              info(m.case_dir(f"hlen{hl}", {"model.safetensors": struct.pack("<Q", hl) + raw[8:]})),
              needles=["model.safetensors"])

    first = "model.embed_tokens.weight"
    b, e = header[first]["data_offsets"]

    def patched(name, fn, needles=(), cmd=info):
        h = json.loads(json.dumps(header))
        fn(h)
        m.run(f"safetensors_{name}", cmd(m.case_dir(name, {"model.safetensors": safetensors_bytes(h, data)})),
              needles=needles)

    def set_offsets(v):
        return lambda h: h[first].__setitem__("data_offsets", v)

    patched("offsets_reversed", set_offsets([e, b]), [first, "reversed"])
    patched("offsets_past_end", set_offsets([b, len(data) + 4]), [first, "past the end"])
    patched("offsets_begin_past_end", set_offsets([len(data) + 8, len(data) + 8 + (e - b)]), [first])
    patched("offsets_u64_max", set_offsets([2 ** 64 - 1, 2 ** 64 - 1]), [first])
    patched("offsets_2pow63", set_offsets([0, 2 ** 63]), [first])
    patched("offsets_negative", set_offsets([-4, 0]), [first, "non-negative"])
    patched("offsets_float", set_offsets([0.5, 8]), [first])
    patched("offsets_strings", set_offsets(["0", "8"]), [first])
    patched("offsets_one_element", set_offsets([0]), [first, "data_offsets"])
    patched("offsets_missing", lambda h: h[first].pop("data_offsets"), [first, "data_offsets"])
    patched("offsets_overlap", lambda h: h["model.norm.weight"].__setitem__(
        "data_offsets", [b, b + (h["model.norm.weight"]["data_offsets"][1] - h["model.norm.weight"]["data_offsets"][0])]),
        ["overlaps"])
    patched("offsets_same_range", lambda h: h["lm_head.weight"].__setitem__("data_offsets", [b, e]), ["overlaps"])
    patched("size_mismatch", set_offsets([b, e - 2]), [first, "bytes"])
    for shape, label in [([2 ** 32, 2 ** 32, 4], "64bit_overflow"), ([2 ** 62, 4], "bytes_overflow"),
                         ([2 ** 63], "2pow63"), ([2 ** 64], "2pow64"), ([-1, 64], "negative"), ([1e10], "float"),
                         (["512"], "string"), ([[512]], "nested"), (5, "not_array")]:
        patched(f"shape_{label}", lambda h, s=shape: h[first].__setitem__("shape", s), [first])
    for dt in ["I64", "F64", "F8_E4M3", "BOOL", "bf16", "", 5, None]:
        patched(f"dtype_{dt}", lambda h, d=dt: h[first].__setitem__("dtype", d), [first, "dtype"])
    patched("metadata_not_object", lambda h: h.__setitem__("__metadata__", [1, 2]), ["__metadata__"])
    patched("entry_not_object", lambda h: h.__setitem__(first, [1, 2]), [first])
    patched("missing_tensor", lambda h: h.pop("model.layers.1.mlp.up_proj.weight"),
            ["missing tensor", "model.layers.1.mlp.up_proj.weight"])
    patched("wrong_shape", lambda h: h["model.layers.0.self_attn.k_proj.weight"].__setitem__(
        "shape", list(reversed(h["model.layers.0.self_attn.k_proj.weight"]["shape"]))),
        ["model.layers.0.self_attn.k_proj.weight", "expected shape"])
    patched("bias_tensor", lambda h: h.__setitem__("model.layers.0.self_attn.q_proj.bias",
                                                   {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}),
            ["bias"])

    text = json.dumps(header)
    dup = text[:-1] + ', "model.norm.weight": ' + json.dumps(header["model.norm.weight"]) + "}"
    for name, hdr, needles in [
        ("duplicate_name", dup.encode(), ["duplicate", "model.norm.weight"]),
        ("header_array", b"[1, 2, 3]", ["object"]),
        ("header_string", b'"x"', ["object"]),
        ("header_cut_json", text[: len(text) // 2].encode(), ["malformed json"]),
        ("header_invalid_utf8", text.replace("model.norm.weight", "model.norm.w\udcffight", 1).encode(
            "utf-8", "surrogateescape"), ["model.safetensors"]),
        ("header_nul_bytes", text[:40].encode() + b"\0\0\0\0" + text[40:].encode(), ["malformed json"]),
        ("header_deep_nesting", ('{"x": ' + "[" * 100000 + "]" * 100000 + "}").encode(), ["nested deeper"]),
        ("header_empty_object_no_tensors", b"{}", ["missing tensor"]),
    ]:
        m.run(f"safetensors_{name}", info(m.case_dir(name, {"model.safetensors": safetensors_bytes(hdr, data)})),
              needles=needles)
    many = "{" + ",".join(f'"t{i}":{{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}' for i in range(1_000_001)) + "}"
    m.run("safetensors_too_many_tensors",
          info(m.case_dir("many", {"model.safetensors": safetensors_bytes(many.encode(), b"")})),
          needles=["more than 1000000 tensor names", "limit"])

    m.run("safetensors_empty_file", info(m.case_dir("empty", {"model.safetensors": b""})), needles=["empty"])
    d = m.case_dir("weights_dir", drop=("model.safetensors",))
    os.makedirs(os.path.join(d, "model.safetensors"))
    m.run("safetensors_is_a_directory", info(d), needles=["model.safetensors"])
    m.run("safetensors_missing", info(m.case_dir("noweights", drop=("model.safetensors",))),
          needles=["model.safetensors"])

    # Sharded checkpoints: escapes, missing shards, contradictions.
    shard = "model-00001-of-00001.safetensors"
    wm = {k: shard for k in header if k != "__metadata__"}
    for name, index, needles in [
        ("index_escape", {"weight_map": {**wm, first: "../model.safetensors"}}, ["plain file name"]),
        ("index_absolute", {"weight_map": {**wm, first: "/etc/passwd"}}, ["plain file name"]),
        ("index_missing_shard", {"weight_map": {**wm, first: "model-00002-of-00002.safetensors"}}, ["does not exist"]),
        ("index_tensor_not_in_shard", {"weight_map": {**wm, "extra.weight": shard}}, ["extra.weight"]),
        ("index_empty", {"weight_map": {}}, ["empty"]),
        ("index_not_object", [1, 2], ["weight_map"]),
        ("index_shard_not_string", {"weight_map": {**wm, first: 3}}, [first]),
    ]:
        d = m.case_dir(name, {"model.safetensors.index.json": index, shard: raw}, drop=("model.safetensors",))
        m.run(f"safetensors_{name}", info(d), needles=needles)
    d = m.case_dir("index_not_json", {"model.safetensors.index.json": b"{weight_map", shard: raw},
                   drop=("model.safetensors",))
    m.run("safetensors_index_not_json", info(d), needles=["malformed json"])


def config_cases(m):
    with open(os.path.join(m.base, "config.json")) as f:
        cfg = json.load(f)
    info = lambda d: ["info", "-m", d]

    def patched(name, key, value, needles=(), extra=()):
        c = json.loads(json.dumps(cfg))
        if value is KeyError:
            c.pop(key, None)
        elif isinstance(key, tuple):
            c[key[0]][key[1]] = value
        else:
            c[key] = value
        m.run(f"config_{name}", info(m.case_dir(f"cfg_{name}", {"config.json": c})) + list(extra), needles=needles)

    for key in ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size"]:
        for label, v in [("zero", 0), ("negative", -1), ("float", 1.5), ("string", "64"), ("bool", True),
                         ("array", [64]), ("2pow31", 2 ** 31), ("2pow64", 2 ** 64), ("missing", KeyError)]:
            patched(f"{key}_{label}", key, v, [key])
    patched("num_key_value_heads_not_divisor", "num_key_value_heads", 3, ["num_key_value_heads"])
    patched("num_key_value_heads_zero", "num_key_value_heads", 0, ["num_key_value_heads"])
    patched("head_dim_odd", "head_dim", 15, ["head_dim"])
    patched("head_dim_zero", "head_dim", 0, ["head_dim"])
    patched("head_dim_huge", "head_dim", 2 ** 30, ["head_dim"])
    patched("num_hidden_layers_2pow31m1", "num_hidden_layers", 2 ** 31 - 1, ["missing tensor", "model.layers.2."])
    patched("num_hidden_layers_more_than_tensors", "num_hidden_layers", 3, ["missing tensor", "model.layers.2."])
    patched("vocab_size_inconsistent", "vocab_size", 100, ["model.embed_tokens.weight", "expected shape"])
    patched("hidden_size_inconsistent", "hidden_size", 32, ["expected shape"])
    patched("max_position_embeddings_zero", "max_position_embeddings", 0, ["max_position_embeddings"])
    patched("rms_norm_eps_zero", "rms_norm_eps", 0, ["rms_norm_eps"])
    patched("rms_norm_eps_negative", "rms_norm_eps", -1e-5, ["rms_norm_eps"])
    patched("rope_theta_string", "rope_theta", "1e4", ["rope_theta"])
    patched("rope_config_not_object", "rope_config", "ec", ["rope_config"])
    patched("rope_config_imag_mode_unknown", "rope_config", {"imag": True, "imag_mode": "imag3"}, ["imag3"])
    patched("rope_config_imag_not_bool", "rope_config", {"imag": "yes", "imag_mode": "imag2"}, ["rope_config.imag"])
    patched("rope_config_imag_mode_missing", "rope_config", {"imag": True}, ["imag_mode"])
    patched("rope_config_factor_zero", "rope_config", {"imag": True, "imag_mode": "imag2", "factor": 0}, ["factor"])
    patched("rope_config_factor_negative", "rope_config", {"imag": True, "imag_mode": "imag2", "factor": -2}, ["factor"])
    patched("rope_config_yarn_without_factor", "rope_config", {"imag": True, "imag_mode": "imag2", "yarn": True},
            ["factor"])
    patched("rope_config_contradicts_shapes", "rope_config", {"imag": True, "imag_mode": "imag1"},
            ["rope_config", "shapes"])
    c = json.loads(json.dumps(cfg))
    c.pop("rope_config", None)
    c["rope_scaling"] = {"type": "dynamic", "factor": 2.0}
    m.run("config_rope_scaling_dynamic", info(m.case_dir("cfg_rope_scaling_dynamic", {"config.json": c})),
          needles=["dynamic"])
    patched("hidden_act_gelu", "hidden_act", "gelu", ["hidden_act"])
    patched("attention_bias", "attention_bias", True, ["attention_bias"])
    patched("eos_negative", "eos_token_id", -3, ["eos_token_id"])
    patched("bos_string", "bos_token_id", "1", ["bos_token_id"])

    for name, content, needles in [
        ("not_json", b"{hidden_size: 64", ["config.json", "malformed json"]),
        ("empty", b"", ["config.json"]),
        ("array", b"[]", ["config.json", "object"]),
        ("invalid_utf8", b'{"hidden_size": 64, "x": "\xff\xfe"}', ["config.json"]),
        ("deep_nesting", b'{"a": ' + b"[" * 100000 + b"]" * 100000 + b"}", ["config.json", "nested deeper"]),
        ("nan", b'{"hidden_size": NaN}', ["config.json"]),
        ("rope_theta_1e400", json.dumps({**cfg, "rope_theta": 12345.5}).replace("12345.5", "1e400").encode(),
         ["rope_theta"]),
    ]:
        m.run(f"config_{name}", info(m.case_dir(f"cfg_{name}", {"config.json": content})), needles=needles)
    m.run("config_missing", info(m.case_dir("cfg_missing", drop=("config.json",))), needles=["config.json"])
    d = m.case_dir("cfg_dir", drop=("config.json",))
    os.makedirs(os.path.join(d, "config.json"))
    m.run("config_is_a_directory", info(d), needles=["config.json"])


def tokenizer_cases(m):
    tok = tiny_tokenizer()
    gen = lambda d, *extra: ["generate", "-m", d, "-p", "hello world", "-n", "2", *extra]

    def patched(name, fn, needles=(), cmd=gen, files=None):
        t = json.loads(json.dumps(tok))
        fn(t)
        m.run(f"tokenizer_{name}", cmd(m.case_dir(f"tok_{name}", {"tokenizer.json": t, **(files or {})})),
              needles=needles)

    patched("no_model", lambda t: t.pop("model"), ["tokenizer.json", "model"])
    patched("vocab_missing_byte", lambda t: t["model"]["vocab"].pop("A"), ["tokenizer.json", "byte 0x41"])
    patched("vocab_not_object", lambda t: t["model"].__setitem__("vocab", [1, 2]), ["tokenizer.json", "vocab"])
    patched("vocab_negative_id", lambda t: t["model"]["vocab"].__setitem__("zz", -1), ["tokenizer.json", "zz"])
    patched("vocab_huge_id", lambda t: t["model"]["vocab"].__setitem__("zz", 2 ** 31 - 1), ["tokenizer.json", "zz"])
    patched("vocab_id_string", lambda t: t["model"]["vocab"].__setitem__("zz", "5"), ["tokenizer.json", "zz"])
    patched("merge_unknown_token", lambda t: t["model"]["merges"].append("q zz"), ["tokenizer.json", "zz"])
    patched("merge_malformed", lambda t: t["model"]["merges"].append("abc"), ["tokenizer.json", "merges"])
    patched("merge_wrong_type", lambda t: t["model"]["merges"].append(5), ["tokenizer.json", "merges"])
    patched("model_type_unigram", lambda t: t["model"].__setitem__("type", "Unigram"), ["tokenizer.json", "Unigram"])
    patched("model_type_number", lambda t: t["model"].__setitem__("type", 5), ["tokenizer.json"])
    patched("added_huge_id", lambda t: t["added_tokens"].append({"id": 2 ** 31 - 1, "content": "<x>"}),
            ["tokenizer.json"])
    patched("added_content_number", lambda t: t["added_tokens"][0].__setitem__("content", 5), ["tokenizer.json"])
    patched("added_flag_string", lambda t: t["added_tokens"][0].__setitem__("special", "yes"), ["tokenizer.json"])
    # `generate` loads the tokenizer itself and does not compare its size with the model's (`score` / `chat`
    # do): the id fails when the prompt uses it.
    patched("added_id_beyond_model_vocab", lambda t: t["added_tokens"].append({"id": 600, "content": "<x>"}),
            ["600", "512"], cmd=lambda d: ["generate", "-m", d, "-p", "hello <x>", "-n", "2"])
    patched("added_id_beyond_model_vocab_chat", lambda t: t["added_tokens"].append({"id": 600, "content": "<x>"}),
            ["tokenizer has 601 ids", "vocab_size is 512"], cmd=lambda d: ["chat", "-m", d])
    patched("pre_tokenizer_null", lambda t: t.__setitem__("pre_tokenizer", None), ["tokenizer.json", "pre_tokenizer"])
    patched("pre_tokenizer_unsupported", lambda t: t.__setitem__("pre_tokenizer", {"type": "Whitespace"}),
            ["tokenizer.json", "Whitespace"])
    patched("pre_tokenizer_number", lambda t: t.__setitem__("pre_tokenizer", 3), ["tokenizer.json"])
    patched("normalizer_unsupported", lambda t: t.__setitem__("normalizer", {"type": "Lowercase"}),
            ["tokenizer.json", "Lowercase"])
    patched("decoder_unsupported", lambda t: t.__setitem__("decoder", {"type": "WordPiece"}),
            ["tokenizer.json", "WordPiece"])
    patched("post_processor_missing_special", lambda t: t.__setitem__("post_processor", {
        "type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>"}}], "special_tokens": {}}),
        ["tokenizer.json", "<s>"])
    patched("post_processor_id_out_of_range", lambda t: t.__setitem__("post_processor", {
        "type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>"}}],
        "special_tokens": {"<s>": {"ids": [99999]}}}), ["99999"])
    patched("bos_not_a_token", lambda t: None, ["bos_token", "<nope>"],
            files={"tokenizer_config.json": {**TOKENIZER_CONFIG, "bos_token": "<nope>"}})
    patched("add_bos_not_bool", lambda t: None, ["add_bos_token"],
            files={"tokenizer_config.json": {**TOKENIZER_CONFIG, "add_bos_token": "yes"}})
    patched("chat_template_number", lambda t: None, ["chat_template"],
            files={"tokenizer_config.json": {**TOKENIZER_CONFIG, "chat_template": 5}})
    patched("chat_template_list_bad", lambda t: None, ["tokenizer_config.json"],
            files={"tokenizer_config.json": {**TOKENIZER_CONFIG, "chat_template": [{"name": "default", "template": 1}]}})
    patched("generation_eos_out_of_range", lambda t: None, ["eos_token_id", "99999"],
            files={"generation_config.json": {"eos_token_id": [99999]}})
    patched("generation_eos_string", lambda t: None, ["generation_config.json"],
            files={"generation_config.json": {"eos_token_id": "x"}})
    for name, content, needles in [
        ("not_json", b'{"model": ', ["tokenizer.json"]),
        ("empty", b"", ["tokenizer.json"]),
        ("invalid_utf8", json.dumps(tok, ensure_ascii=False).replace('"Ġt"', '"\udcff"', 1).encode("utf-8", "surrogateescape"),
         ["tokenizer.json"]),
        ("deep_nesting", b'{"model": ' + b"[" * 100000 + b"]" * 100000 + b"}", ["tokenizer.json", "nested deeper"]),
    ]:
        m.run(f"tokenizer_{name}", gen(m.case_dir(f"tok_{name}", {"tokenizer.json": content})), needles=needles)
    m.run("tokenizer_absent", gen(m.case_dir("tok_absent", drop=("tokenizer.json", "tokenizer_config.json"))),
          needles=["tokenizer.json", "tokenizer.model"])
    m.run("tokenizer_model_garbage", gen(m.case_dir("tok_spm_garbage", {"tokenizer.model": b"\x00garbage" * 10},
                                                  drop=("tokenizer.json", "tokenizer_config.json"))),
          needles=["tokenizer.model"])


def prompt_cases(m):
    b = m.base
    long_text = "hello world " * 200
    bad = os.path.join(m.work, "invalid_utf8.txt")
    with open(bad, "wb") as f:
        f.write(b"hello \xff\xfe world \xc3")
    empty = os.path.join(m.work, "empty.txt")
    open(empty, "wb").close()
    m.run("prompt_baseline_ok", ["generate", "-m", b, "-p", "hello world", "-n", "4", "--temp", "0"], expect="ok")
    m.run("prompt_invalid_utf8_argv", ["generate", "-m", b, "-p", b"hello \xff world", "-n", "2"],
          needles=["invalid utf-8", "byte offset 6"])
    m.run("prompt_invalid_utf8_file", ["generate", "-m", b, "-f", bad, "-n", "2"], needles=["invalid utf-8"])
    m.run("prompt_invalid_utf8_tokenize_lossy_ok", ["tokenize", "-m", b, "-f", bad, "--lossy", "--ids"], expect="ok")
    m.run("prompt_invalid_utf8_tokenize", ["tokenize", "-m", b, "-f", bad], needles=["invalid utf-8"])
    m.run("prompt_empty_argv", ["generate", "-m", b, "-p", "", "-n", "2"], needles=["-p"])
    m.run("prompt_empty_file", ["generate", "-m", b, "-f", empty, "-n", "2"], needles=["empty"])
    m.run("prompt_missing_file", ["generate", "-m", b, "-f", os.path.join(m.work, "nope.txt"), "-n", "2"],
          needles=["nope.txt"])
    m.run("prompt_file_is_directory", ["generate", "-m", b, "-f", m.work, "-n", "2"])
    m.run("prompt_no_bos_empty", ["generate", "-m", b, "-p", "", "--no-bos", "-n", "2"])
    m.run("prompt_longer_than_context", ["generate", "-m", b, "-c", "32", "-p", long_text, "-n", "4"],
          needles=["-c/--ctx-size"])
    m.run("prompt_longer_than_context_keep_end_ok",
          ["generate", "-m", b, "-c", "32", "-p", long_text, "-n", "4", "--keep-end", "--temp", "0"], expect="ok")
    m.run("prompt_fills_context_ok", ["generate", "-m", b, "-c", "16", "-p", "hello world", "-n", "-1",
                                      "--ignore-eos", "--temp", "0"], expect="ok")
    m.run("prompt_special_tokens_only_ok", ["generate", "-m", b, "-p", "<|eot_id|>" * 5, "-n", "2", "--temp", "0"],
          expect="ok")
    m.run("prompt_nul_and_controls_ok", ["generate", "-m", b, "-f", _write(m, "ctl.txt", b"a\x00b\x01\x7f\r\n"),
                                         "-n", "2", "--temp", "0"], expect="ok")
    m.run("score_ids_out_of_vocab", ["score", "-m", b, "--ids", "1,2,99999"], needles=["99999"])
    m.run("detokenize_id_out_of_range", ["detokenize", "-m", b, "--ids", "1,99999"], needles=["99999"])
    m.run("detokenize_id_not_a_number", ["detokenize", "-m", b, "--ids", "1,x"], needles=["'x'"])
    m.run("detokenize_id_negative", ["detokenize", "-m", b, "--ids", "-5"])
    m.run("detokenize_id_2pow32", ["detokenize", "-m", b, "--ids", "4294967296"], needles=["4294967296"])


def _write(m, name, content):
    p = os.path.join(m.work, name)
    with open(p, "wb") as f:
        f.write(content)
    return p


def memory_cases(m, python):
    """A checkpoint whose KV cache at -c 65536 needs ~2x the memory available (MemAvailable); its weights are
    tiny (hidden_size 1: about MemAvailable / 32768 bytes of bf16)."""
    avail = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    if not avail:
        print("skip  memory cases: no MemAvailable")
        return
    per_token = 2 * avail // 65536              # bytes of K+V per token (f32 on the CPU)
    heads, head_dim = 64, 256
    layers = max(1, -(-per_token // (2 * heads * head_dim * 4)))
    big = os.path.join(m.work, "big_kv")
    if not os.path.exists(os.path.join(big, "model.safetensors")):
        subprocess.run([python, os.path.join(ROOT, "tools", "gen_checkpoint.py"), "--out", big, "--hidden", "1",
                        "--layers", str(layers), "--heads", str(heads), "--kv-heads", str(heads), "--head-dim",
                        str(head_dim), "--ffn", "1", "--vocab", "512", "--mode", "rope", "--dtype", "bf16"],
                       check=True, stdout=subprocess.DEVNULL)
        for f, c in [("tokenizer.json", tiny_tokenizer()), ("tokenizer_config.json", TOKENIZER_CONFIG)]:
            with open(os.path.join(big, f), "w") as fh:
                json.dump(c, fh)
    print(f"      big_kv: {layers} layers x {heads} kv heads x {head_dim}: "
          f"{2 * layers * heads * head_dim * 4 * 65536 / 2**30:.0f} GiB of KV at 65536 tokens, "
          f"{avail / 2**30:.0f} GiB available", flush=True)
    m.run("memory_context_larger_than_memory", ["generate", "-m", big, "-c", "65536", "-p", "hello", "-n", "1"],
          needles=["-c/--ctx-size", "65536", "memavailable"])
    m.run("memory_small_context_ok", ["generate", "-m", big, "-c", "64", "-p", "hello", "-n", "1"], expect="ok")


def flag_cases(m):
    b = m.base
    gen = ["generate", "-m", b, "-p", "hello"]
    for name, args, needles in [
        ("no_subcommand", [], ["subcommand"]),
        ("unknown_subcommand", ["frobnicate"], []),
        ("unknown_flag", gen + ["--bogus"], ["--bogus"]),
        ("n_not_a_number", gen + ["-n", "abc"], ["abc"]),
        ("n_below_minus_one", gen + ["-n", "-5"], ["-n"]),
        ("ctx_too_large", gen + ["-c", "65537"], ["65537"]),
        ("ctx_negative", gen + ["-c", "-1"], []),
        ("ctx_huge", gen + ["-c", "99999999999999999999"], []),
        ("temp_negative", gen + ["--temp", "-1"], ["temp"]),
        ("temp_nan", gen + ["--temp", "nan"], []),
        ("top_p_above_one", gen + ["--top-p", "2"], ["top-p"]),
        ("top_k_negative", gen + ["--top-k", "-3"], ["top-k"]),
        ("seed_not_a_number", gen + ["--seed", "x"], []),
        ("threads_negative", gen + ["-t", "-1"], []),
        ("threads_huge", gen + ["-t", "100000"], []),
        ("batch_zero", gen + ["-b", "0"], []),
        ("kv_block_zero", gen + ["--kv-block", "0"], ["--kv-block"]),
        ("kv_block_huge", gen + ["--kv-block", "4096"], ["--kv-block"]),
        ("device_unknown", gen + ["--device", "tpu"], ["tpu"]),
        ("device_cuda_99", gen + ["--device", "cuda:99"], []),
        ("rope_mode_unknown", gen + ["--rope-mode", "xx"], ["xx"]),
        ("rope_mode_contradicts", gen + ["--rope-mode", "eh"], ["--rope-mode eh"]),
        ("model_missing_dir", ["generate", "-m", os.path.join(m.work, "nope"), "-p", "x"], ["nope"]),
        ("model_is_a_file", ["generate", "-m", os.path.join(b, "config.json"), "-p", "x"], ["config.json"]),
        ("model_empty_dir", ["info", "-m", m.case_dir("empty_dir", drop=os.listdir(b))], []),
        ("both_prompt_and_file", gen + ["-f", os.path.join(b, "config.json")], ["-p"]),
        ("chat_template_unknown", ["chat", "-m", b, "--chat-template", "jinja2"], ["jinja2"]),
        ("chat_load_missing", ["chat", "-m", b, "--load", os.path.join(m.work, "nope.json")], ["nope.json"]),
        ("chat_load_deep_nesting", ["chat", "-m", b, "--load",
                                    _write(m, "deep_chat.json", b'{"format": ' + b"[" * 100000 + b"]" * 100000 + b"}")],
         ["nested deeper"]),
        ("chat_load_not_json", ["chat", "-m", b, "--load", _write(m, "bad_chat.json", b"{messages")], ["bad_chat.json"]),
        ("chat_load_bad_role", ["chat", "-m", b, "--load", _write(m, "role_chat.json",
                                b'{"messages": [{"role": "system", "content": "x"}]}')], ["role"]),
        ("detokenize_without_ids", ["detokenize", "-m", b], ["--ids"]),
        ("info_extra_positional", ["info", "-m", b, "extra"], ["extra"]),
        ("bench_timeline_too_few_steps", ["bench", "-m", b, "-p", "4", "-n", "0", "--timeline", "2"], ["--timeline 2"]),
        # (a build without CUDA says so instead)
        ("bench_timeline_on_cpu", ["bench", "-m", b, "-p", "4", "-n", "0", "--timeline", "8"], ["--timeline"]),
        ("bench_repetitions_zero", ["bench", "-m", b, "-p", "4", "-r", "0"], ["-r"]),
    ]:
        m.run(f"flags_{name}", args, needles=needles)
    m.run("flags_help_ok", ["generate", "--help"], expect="ok")
    m.run("flags_version_ok", ["--version"], expect="ok")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ropepp", required=True)
    ap.add_argument("--work", required=True, help="scratch directory (recreated)")
    ap.add_argument("--python", default="/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable,
                    help="python with torch, for tools/gen_checkpoint.py (default: Debian's)")
    ap.add_argument("--timeout", type=float, default=120, help="seconds per case before it counts as a hang")
    ap.add_argument("-k", default="", help="run only cases whose name contains this")
    a = ap.parse_args()

    a.work = os.path.abspath(a.work)
    shutil.rmtree(os.path.join(a.work, "cases"), ignore_errors=True)
    os.makedirs(a.work, exist_ok=True)
    m = Matrix(os.path.abspath(a.ropepp), a.work, a.timeout, a.k)
    if not os.path.exists(os.path.join(m.base, "model.safetensors")):
        subprocess.run([a.python, os.path.join(ROOT, "tools", "gen_checkpoint.py"), "--out", m.base, "--preset", "tiny",
                        "--mode", "ec", "--dtype", "f32", "--seed", "3"], check=True, stdout=subprocess.DEVNULL)
    with open(os.path.join(m.base, "tokenizer.json"), "w") as f:
        json.dump(tiny_tokenizer(), f)
    with open(os.path.join(m.base, "tokenizer_config.json"), "w") as f:
        json.dump(TOKENIZER_CONFIG, f)

    t0 = time.time()
    safetensors_cases(m)
    config_cases(m)
    tokenizer_cases(m)
    prompt_cases(m)
    memory_cases(m, a.python)
    flag_cases(m)
    print(f"\nbad_inputs: {m.passed} passed, {len(m.failures)} failed, {m.skipped} skipped in {time.time() - t0:.0f} s")
    if m.failures:
        print("failed: " + " ".join(m.failures))
        sys.exit(1)


if __name__ == "__main__":
    main()
