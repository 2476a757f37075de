// fuzz_chat_template.cpp: the chat template renderer (src/chat.h: render_chat, tokenize_chat,
// detect_chat_template) and the REPL input assembly (InputAssembler, chat_message_text) over arbitrary
// bytes, with the real Llama-3 tokenizer.json and Llama-2 tokenizer.model from .cache/npm.
//
// Input: byte 0 picks the template (llama3 / chatml / plain), the tokenizer and the generation prompt; the
// rest is split at fuzz_common.h's kSplit marker: system prompt | message 1 | message 2 | ... (alternating
// user / assistant; invalid UTF-8 repaired, as the REPL's input is). Checked: the rendered text is the
// concatenation of its segments; message text never turns into special tokens (no prompt injection of
// <|eot_id|> & co.): tokenize_chat yields exactly as many special tokens as the BOS prefix plus the markup
// segments alone; every id is in range. The same bytes, cut into lines, go through InputAssembler.
#include <fmt/format.h>

#include <memory>

#include "chat.h"
#include "fuzz_common.h"
#include "tokenizer.h"

namespace fs = std::filesystem;
using namespace ropepp;

namespace {

fuzz::RealTokenizers g_tok;  // Llama-3 tokenizer.json, Llama-2 tokenizer.model

size_t count_special(const Tokenizer& tok, const std::vector<int32_t>& ids) {
  size_t c = 0;
  for (int32_t id : ids) c += tok.is_special(id);
  return c;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  g_tok = fuzz::load_real_tokenizers("fuzz_chat_template");
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t sel = data[0];
  const std::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);
  const ChatTemplateKind kind = sel % 3 == 0 ? ChatTemplateKind::Llama3
                                : sel % 3 == 1 ? ChatTemplateKind::ChatML
                                               : ChatTemplateKind::Plain;
  const Tokenizer& tok = (sel & 8) ? *g_tok.spm : *g_tok.llama3;
  const bool gen_prompt = sel & 16;

  (void)detect_chat_template(rest);

  const auto parts = fuzz::split_parts(rest, 64);
  const std::string system = utf8_lossy(parts[0]);
  std::vector<ChatMessage> msgs;
  for (size_t i = 1; i < parts.size(); ++i)
    msgs.push_back({i % 2 ? "user" : "assistant", utf8_lossy(parts[i]), (sel & 32) && i == 1});

  fuzz::expect_only_error([&] {
    const std::vector<ChatSegment> segs = render_chat(kind, system, msgs, gen_prompt);
    std::string cat;
    for (const ChatSegment& s : segs) cat += s.text;
    ROPEPP_FUZZ_CHECK(cat == render_chat_text(segs), "render_chat_text differs from the segments");
    const std::vector<int32_t> ids = tokenize_chat(tok, kind, segs);
    for (int32_t id : ids) ROPEPP_FUZZ_CHECK(id >= 0 && id < tok.vocab_size(), "id {} out of range", id);

    EncodeOptions bos;
    bos.add_bos = true;
    size_t expected = count_special(tok, tok.encode("", bos));
    if (tok.kind() == "hf-bpe" && kind != ChatTemplateKind::Plain) {
      EncodeOptions markup;
      markup.add_bos = false;
      for (const ChatSegment& s : segs)
        if (s.markup) expected += count_special(tok, tok.encode(s.text, markup));
    }
    ROPEPP_FUZZ_CHECK(count_special(tok, ids) <= expected || tok.kind() != "hf-bpe",
                      "message text produced special tokens: {} special ids, expected {}", count_special(tok, ids),
                      expected);
    if (tok.kind() == "hf-bpe")
      ROPEPP_FUZZ_CHECK(count_special(tok, ids) == expected, "{} special ids, expected {}", count_special(tok, ids),
                        expected);
  });

  // REPL input assembly: the same bytes as lines.
  InputAssembler in;
  size_t pos = 0;
  while (pos <= rest.size()) {
    size_t nl = rest.find('\n', pos);
    if (nl == std::string_view::npos) nl = rest.size();
    const std::string line(rest.substr(pos, nl - pos));
    if (auto done = in.push(line)) (void)chat_message_text(*done);
    pos = nl + 1;
  }
  if (in.pending()) (void)in.take();
  ROPEPP_FUZZ_CHECK(!in.pending(), "take() left input pending");
  return 0;
}
