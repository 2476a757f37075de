"""spm_text.py: sentencepiece encode/decode for the e2e scripts, with or without the Python binding.

With `sentencepiece` importable it is used directly. Otherwise Debian's CLI tools (`spm_encode`,
`spm_decode`, package `sentencepiece`) are used: the CLI handles one line at a time, so a text is encoded
line by line and the byte piece <0x0A> is put between lines. For a model without a piece containing "\\n"
and with add_dummy_prefix=false (the default model's tokenizer, see tools/train/prepare_data.py) this is
identical to encoding the whole text at once (BPE merges never cross the unmergeable "\\n" byte piece).
encode() checks those two preconditions when it has to use the CLI.
"""
import os
import subprocess

try:
    import sentencepiece as _spm
except ImportError:  # pragma: no cover - depends on the machine
    _spm = None


def backend():
    return "python" if _spm is not None else "cli"


def _vocab_pieces(model):
    """The pieces of the model, by id (from `spm_export_vocab`)."""
    r = subprocess.run(["spm_export_vocab", f"--model={model}"], stdout=subprocess.PIPE, check=True)
    return [line.split("\t")[0] for line in r.stdout.decode("utf-8").split("\n") if line]


def _cli_check(model):
    """(newline id) after checking the model is safe for line-by-line encoding."""
    pieces = _vocab_pieces(model)
    if "<0x0A>" not in pieces:
        raise RuntimeError(f"{model}: no <0x0A> byte piece (byte_fallback off); cannot encode newlines via the CLI")
    if any("\n" in p for p in pieces):
        raise RuntimeError(f"{model}: a piece contains a newline; line-by-line CLI encoding would differ")
    # add_dummy_prefix: a line "a" must encode without a leading "▁" piece
    r = subprocess.run(["spm_encode", f"--model={model}", "--output_format=piece"], input=b"a\n",
                       stdout=subprocess.PIPE, check=True)
    if r.stdout.decode("utf-8").startswith("\u2581"):
        raise RuntimeError(f"{model}: add_dummy_prefix is on; line-by-line CLI encoding would differ")
    return pieces.index("<0x0A>")


def encode(model, text):
    """Token ids of `text` (no BOS/EOS)."""
    if _spm is not None:
        return list(_spm.SentencePieceProcessor(model_file=model).encode(text))
    nl = _cli_check(model)
    lines = text.split("\n")
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    r = subprocess.run(["spm_encode", f"--model={model}", "--output_format=id"], input=data,
                       stdout=subprocess.PIPE, check=True)
    out = r.stdout.decode("utf-8").split("\n")
    if out and out[-1] == "":
        out.pop()
    if len(out) != len(lines):
        raise RuntimeError(f"spm_encode returned {len(out)} lines for {len(lines)}")
    ids = []
    for i, line in enumerate(out):
        if i:
            ids.append(nl)
        ids += [int(x) for x in line.split()]
    return ids


def decode(model, ids):
    if _spm is not None:
        return _spm.SentencePieceProcessor(model_file=model).decode(list(ids))
    r = subprocess.run(["spm_decode", f"--model={model}", "--input_format=id"],
                       input=(" ".join(map(str, ids)) + "\n").encode(), stdout=subprocess.PIPE, check=True)
    out = r.stdout.decode("utf-8")
    return out[:-1] if out.endswith("\n") else out


def model_path(model_dir):
    return os.path.join(model_dir, "tokenizer.model")
