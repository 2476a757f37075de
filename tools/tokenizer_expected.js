#!/usr/bin/env node
// tokenizer_expected.js: expected token ids from the reference implementations, as JSON, for
// tests/test_tokenizer.cpp.
//   Hugging Face byte-level BPE: the official `tokenizers` Rust library through its Node binding
//     (fetched by tools/fetch_test_data.sh into .cache/npm/hf-tokenizers).
//   sentencepiece: Debian's `spm_encode` command-line tool (line by line).
//
// usage: node tools/tokenizer_expected.js --hf-binding DIR --tokenizer tokenizer.json
//          --strings strings.json [--file NAME=PATH]... [--spm-model tokenizer.model --spm-lines PATH]
//          --out expected.json
// Output: {"strings": [{"text", "ids", "ids_no_special", "ids_with_special_tokens", "decoded"}],
//          "files": {NAME: {"ids": [...]}}, "spm": {"strings": [{"text", "ids"}], "lines": [[...], ...]}}
// where ids = encode(text, add_special_tokens=false); ids_no_special = the same with special tokens
// written in the text treated as text (HF's encode_special_tokens, done by leaving the special added
// tokens out of the tokenizer); ids_with_special_tokens = add_special_tokens=true; decoded = decode(ids).
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const { execFileSync } = require('child_process');

function parseArgs(argv) {
  const a = { files: [] };
  for (let i = 0; i < argv.length; i += 2) {
    const k = argv[i], v = argv[i + 1];
    if (v === undefined) throw new Error(`missing value for ${k}`);
    if (k === '--file') a.files.push(v);
    else a[k.replace(/^--/, '').replace(/-/g, '_')] = v;
  }
  for (const k of ['hf_binding', 'tokenizer', 'strings', 'out']) if (!a[k]) throw new Error(`--${k.replace(/_/g, '-')} is required`);
  return a;
}

async function main() {
  const a = parseArgs(process.argv.slice(2));
  const { Tokenizer } = require(path.resolve(a.hf_binding));
  const json = fs.readFileSync(a.tokenizer, 'utf8');
  const tok = Tokenizer.fromString(json);
  const spec = JSON.parse(json);
  spec.added_tokens = (spec.added_tokens || []).filter((t) => !t.special);
  const tokNoSpecial = Tokenizer.fromString(JSON.stringify(spec));

  // Variants of the same vocabulary exercising the other pre-tokenizers and a normalizer; the C++ test
  // builds the same JSON edits (tests/test_tokenizer.cpp, variant_json).
  const variants = {
    gpt2: { pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true } },
    gpt2_prefix: { pre_tokenizer: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true } },
    qwen2: {
      pre_tokenizer: {
        type: 'Sequence',
        pretokenizers: [
          { type: 'Split', pattern: { Regex: "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+" },
            behavior: 'Isolated', invert: false },
          { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: false },
        ],
      },
    },
    nfkc: { normalizer: { type: 'NFKC' } },
  };
  const base = JSON.parse(json);
  if (base.pre_tokenizer && base.pre_tokenizer.type === 'Sequence') {  // Split, then ByteLevel(add_prefix_space)
    const pre = JSON.parse(JSON.stringify(base.pre_tokenizer));
    for (const p of pre.pretokenizers) if (p.type === 'ByteLevel') p.add_prefix_space = true;
    variants.split_prefix = { pre_tokenizer: pre };
  }
  const variantToks = {};
  for (const [name, edit] of Object.entries(variants)) {
    variantToks[name] = Tokenizer.fromString(JSON.stringify(Object.assign(JSON.parse(json), edit)));
  }

  const strings = JSON.parse(fs.readFileSync(a.strings, 'utf8')).strings;
  const out = { strings: [], files: {}, spm: null, variants };
  for (const text of strings) {
    const ids = (await tok.encode(text, null, { addSpecialTokens: false })).getIds();
    out.strings.push({
      text,
      ids,
      ids_no_special: (await tokNoSpecial.encode(text, null, { addSpecialTokens: false })).getIds(),
      ids_with_special_tokens: (await tok.encode(text, null, { addSpecialTokens: true })).getIds(),
      decoded: await tok.decode(ids, false),
      variants: Object.fromEntries(await Promise.all(Object.entries(variantToks).map(async ([name, vt]) =>
        [name, (await vt.encode(text, null, { addSpecialTokens: false })).getIds()]))),
    });
  }
  for (const f of a.files) {
    const eq = f.indexOf('=');
    const name = f.slice(0, eq), file = f.slice(eq + 1);
    const text = fs.readFileSync(file, 'utf8');
    const ids = (await tok.encode(text, null, { addSpecialTokens: false })).getIds();
    out.files[name] = { ids };
  }
  if (a.spm_model) {
    // spm_encode reads lines, so only strings without line breaks are sent.
    const oneLine = strings.filter((s) => !/[\r\n]/.test(s) && s.length > 0);
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ropepp-spm-'));
    const input = path.join(tmp, 'in.txt');
    fs.writeFileSync(input, oneLine.join('\n') + '\n');
    const enc = (file) => execFileSync('spm_encode', [`--model=${a.spm_model}`, '--output_format=id', `--input=${file}`],
      { maxBuffer: 1 << 30 }).toString('utf8').split('\n');
    const got = enc(input);
    out.spm = { strings: oneLine.map((text, i) => ({ text, ids: got[i].trim() ? got[i].trim().split(' ').map(Number) : [] })) };
    if (a.spm_lines) {
      const lines = fs.readFileSync(a.spm_lines, 'utf8').split('\n');
      if (lines[lines.length - 1] === '') lines.pop();
      const res = enc(a.spm_lines);
      out.spm.lines = lines.map((_, i) => (res[i] && res[i].trim() ? res[i].trim().split(' ').map(Number) : []));
    }
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  fs.mkdirSync(path.dirname(path.resolve(a.out)), { recursive: true });
  fs.writeFileSync(a.out + '.tmp', JSON.stringify(out));
  fs.renameSync(a.out + '.tmp', a.out);
  console.error(`tokenizer_expected.js: ${out.strings.length} strings, ${Object.keys(out.files).length} files` +
    (out.spm ? `, ${out.spm.strings.length} spm strings, ${(out.spm.lines || []).length} spm lines` : '') + ` -> ${a.out}`);
}

main().catch((e) => {
  console.error(`tokenizer_expected.js: error: ${e.stack || e}`);
  process.exit(1);
});
