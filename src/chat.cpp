// chat.cpp: see chat.h. Templates, the Chat conversation (turns, context fitting, settings, JSON), and
// the REPL pieces (commands, multi-line input).
#include "chat.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>

#include "common.h"
#include "hardening.h"

namespace ropepp {

namespace {

constexpr const char* kWhitespace = " \t\r\n";

std::string_view trim(std::string_view s) {
  const size_t b = s.find_first_not_of(kWhitespace);
  if (b == std::string_view::npos) return {};
  const size_t e = s.find_last_not_of(kWhitespace);
  return s.substr(b, e - b + 1);
}

bool starts_with(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }
bool ends_with(std::string_view s, std::string_view p) {
  return s.size() >= p.size() && s.substr(s.size() - p.size()) == p;
}

void push_markup(std::vector<ChatSegment>& out, std::string text) { out.push_back({std::move(text), true}); }
void push_text(std::vector<ChatSegment>& out, std::string_view text) {
  if (!text.empty()) out.push_back({std::string(text), false});
}

}  // namespace

// ---- templates ---------------------------------------------------------------------------------------

const char* chat_template_name(ChatTemplateKind k) {
  switch (k) {
    case ChatTemplateKind::Plain: return "plain";
    case ChatTemplateKind::Llama3: return "llama3";
    case ChatTemplateKind::ChatML: return "chatml";
  }
  return "?";
}

ChatTemplateKind parse_chat_template_name(std::string_view name) {
  if (name == "plain") return ChatTemplateKind::Plain;
  if (name == "llama3") return ChatTemplateKind::Llama3;
  if (name == "chatml") return ChatTemplateKind::ChatML;
  fail("--chat-template '{}': unknown template (expected llama3, chatml or plain)", name);
}

std::optional<ChatTemplateKind> detect_chat_template(std::string_view jinja) {
  if (jinja.find("<|start_header_id|>") != std::string_view::npos &&
      jinja.find("<|end_header_id|>") != std::string_view::npos)
    return ChatTemplateKind::Llama3;
  if (jinja.find("<|im_start|>") != std::string_view::npos && jinja.find("<|im_end|>") != std::string_view::npos)
    return ChatTemplateKind::ChatML;
  return std::nullopt;
}

std::vector<ChatSegment> render_chat(ChatTemplateKind k, std::string_view system, std::span<const ChatMessage> messages,
                                     bool generation_prompt) {
  std::vector<ChatSegment> out;
  const std::string_view sys = trim(system);
  switch (k) {
    case ChatTemplateKind::Plain:
      // "<system>\nUser: ...\nAssistant: ...\n" ... "Assistant:" — the reply starts with its own space.
      if (!sys.empty()) {
        push_text(out, sys);
        push_markup(out, "\n");
      }
      for (const ChatMessage& m : messages) {
        if (m.dropped) continue;
        const std::string_view c = trim(m.content);
        push_markup(out, m.role == "user" ? "User:" : "Assistant:");
        if (!c.empty()) push_text(out, " " + std::string(c));
        push_markup(out, "\n");
      }
      if (generation_prompt) push_markup(out, "Assistant:");
      break;
    case ChatTemplateKind::Llama3: {
      auto header = [](std::string_view role) {
        return fmt::format("<|start_header_id|>{}<|end_header_id|>\n\n", role);
      };
      if (!sys.empty()) {
        push_markup(out, header("system"));
        push_text(out, sys);
        push_markup(out, "<|eot_id|>");
      }
      for (const ChatMessage& m : messages) {
        if (m.dropped) continue;
        push_markup(out, header(m.role));
        push_text(out, trim(m.content));
        push_markup(out, "<|eot_id|>");
      }
      if (generation_prompt) push_markup(out, header("assistant"));
      break;
    }
    case ChatTemplateKind::ChatML: {
      auto open = [](std::string_view role) { return fmt::format("<|im_start|>{}\n", role); };
      if (!sys.empty()) {
        push_markup(out, open("system"));
        push_text(out, sys);
        push_markup(out, "<|im_end|>\n");
      }
      for (const ChatMessage& m : messages) {
        if (m.dropped) continue;
        push_markup(out, open(m.role));
        push_text(out, trim(m.content));
        push_markup(out, "<|im_end|>\n");
      }
      if (generation_prompt) push_markup(out, open("assistant"));
      break;
    }
  }
  // Merge neighbours of the same kind (fewer encode calls, no needless boundaries).
  std::vector<ChatSegment> merged;
  for (ChatSegment& s : out) {
    if (!merged.empty() && merged.back().markup == s.markup) merged.back().text += s.text;
    else merged.push_back(std::move(s));
  }
  return merged;
}

std::string render_chat_text(std::span<const ChatSegment> segments) {
  std::string s;
  for (const ChatSegment& seg : segments) s += seg.text;
  return s;
}

std::vector<int32_t> tokenize_chat(const Tokenizer& tok, ChatTemplateKind k, std::span<const ChatSegment> segments) {
  // The tokenizer's own prefix (BOS, or the post-processor's), without any EOS it would append.
  EncodeOptions with_bos;
  with_bos.add_bos = true;
  std::vector<int32_t> ids = tok.encode("", with_bos);
  while (!ids.empty() && tok.is_eos(ids.back())) ids.pop_back();
  EncodeOptions eo;
  eo.add_bos = false;
  if (k == ChatTemplateKind::Plain || tok.kind() != "hf-bpe") {
    // One piece of text: plain has no special tokens; sentencepiece never parses them from text.
    eo.parse_special = k != ChatTemplateKind::Plain;
    const auto part = tok.encode(render_chat_text(segments), eo);
    ids.insert(ids.end(), part.begin(), part.end());
    return ids;
  }
  for (const ChatSegment& s : segments) {
    eo.parse_special = s.markup;
    const auto part = tok.encode(s.text, eo);
    ids.insert(ids.end(), part.begin(), part.end());
  }
  return ids;
}

std::vector<std::string> chat_stop_strings(ChatTemplateKind k) {
  if (k == ChatTemplateKind::Plain) return {"\nUser:"};
  return {};
}

std::string chat_end_of_turn(ChatTemplateKind k) {
  switch (k) {
    case ChatTemplateKind::Llama3: return "<|eot_id|>";
    case ChatTemplateKind::ChatML: return "<|im_end|>";
    case ChatTemplateKind::Plain: break;
  }
  return "";
}

// ---- settings --------------------------------------------------------------------------------------------

bool ChatSettings::operator==(const ChatSettings& o) const {
  const SamplerParams &a = sampling, &b = o.sampling;
  return a.temp == b.temp && a.top_k == b.top_k && a.top_p == b.top_p && a.min_p == b.min_p &&
         a.repeat_penalty == b.repeat_penalty && a.repeat_last_n == b.repeat_last_n && a.seed == b.seed &&
         n_predict == o.n_predict && ignore_eos == o.ignore_eos;
}

namespace {

template <class T>
T parse_number(std::string_view key, std::string_view v) {
  T out{};
  const char* b = v.data();
  const char* e = v.data() + v.size();
  if (!v.empty() && *b == '+') ++b;
  auto [p, ec] = std::from_chars(b, e, out);
  if (v.empty() || ec != std::errc() || p != e) {
    if constexpr (std::is_floating_point_v<T>) fail("/set {} '{}': expected a number", key, v);
    else fail("/set {} '{}': expected an integer", key, v);
  }
  return out;
}

uint64_t random_seed() { return uint64_t(std::random_device{}()) << 32 ^ std::random_device{}(); }

}  // namespace

// ---- the conversation ----------------------------------------------------------------------------------

Chat::Chat(Session& session, const Tokenizer& tok, ChatTemplateKind kind, const ChatSettings& settings,
           std::string system)
    : session_(session), tok_(tok), kind_(kind), settings_(settings), sampler_(settings.sampling) {
  if (settings.n_predict < -1) fail("-n {}: expected ≥ 0, or -1 for no limit", settings.n_predict);
  set_system(std::move(system));
  notice_ = [](const std::string& s) { spdlog::warn("{}", s); };
}

std::vector<int32_t> Chat::render_tokens(std::span<const ChatMessage> messages) const {
  return tokenize_chat(tok_, kind_, render_chat(kind_, system_, messages, true));
}

size_t Chat::reply_reserve() const {
  const size_t n_ctx = session_.n_ctx();
  if (settings_.n_predict < 0) return n_ctx / 4;
  return std::min(size_t(settings_.n_predict), n_ctx / 2);
}

TurnResult Chat::turn(const std::string& user_text, const TextFn& on_text, const std::atomic<bool>* interrupt) {
  if (trim(user_text).empty()) fail("chat: the message is empty");
  // Work on a copy: nothing is committed until the reply is complete.
  std::vector<ChatMessage> msgs = messages_;
  msgs.push_back({"user", user_text, false});

  // Fit: prompt + room for the reply must fit the context; drop the oldest turns (never the system prompt
  // or the new message) until it does.
  const size_t n_ctx = session_.n_ctx();
  const size_t reserve = reply_reserve();
  const size_t budget = n_ctx - reserve;
  size_t first = 0;
  while (first < msgs.size() && msgs[first].dropped) ++first;
  std::vector<int32_t> prompt = render_tokens(msgs);
  size_t dropped_now = 0;
  while (prompt.size() > budget) {
    size_t next = first + 1;
    while (next + 1 < msgs.size() && msgs[next].role != "user") ++next;
    if (first + 1 >= msgs.size()) {
      fail("the message does not fit the context: the prompt needs {} tokens (system prompt + message), but the "
           "context of {} tokens (-c/--ctx-size) keeps {} of them for the reply (n-predict {}); shorten the "
           "message or the system prompt, /set n-predict lower, or use a larger -c",
           prompt.size(), n_ctx, reserve, settings_.n_predict);
    }
    for (size_t i = first; i < next; ++i) msgs[i].dropped = true;
    dropped_now += next - first;
    first = next;
    prompt = render_tokens(msgs);
  }
  if (dropped_now > 0)
    notice_(fmt::format("context full ({} tokens): the oldest {} message(s) left the context (they stay in the "
                        "history and in /save); the conversation is re-processed",
                        n_ctx, dropped_now));

  // Reuse what the cache already holds; feed the rest.
  const std::vector<int32_t>& have = session_.tokens();
  size_t common = 0;
  while (common < have.size() && common < prompt.size() && have[common] == prompt[common]) ++common;
  session_.truncate(common);

  // Stream the reply without its leading and trailing whitespace (what is stored).
  bool started = false;
  std::string held;  // trailing whitespace not yet shown
  auto cb = [&](const std::string& t) {
    std::string_view s = t;
    if (!started) {
      const size_t b = s.find_first_not_of(kWhitespace);
      if (b == std::string_view::npos) return;
      s.remove_prefix(b);
      started = true;
    }
    const size_t e = s.find_last_not_of(kWhitespace);
    if (e == std::string_view::npos) {
      held += s;
      return;
    }
    std::string out = std::move(held);
    held.clear();
    out += s.substr(0, e + 1);
    held = std::string(s.substr(e + 1));
    if (on_text) on_text(out);
  };

  GenerateParams gp;
  gp.n_predict = settings_.n_predict;
  gp.stop = chat_stop_strings(kind_);
  gp.stop_at_eos = !settings_.ignore_eos;
  gp.sampling = settings_.sampling;
  const GenerateResult g = generate(session_, tok_, std::span(prompt).subspan(common), sampler_, gp, cb, interrupt);

  TurnResult r;
  r.reply = std::string(trim(g.text));
  r.stop_reason = g.stop_reason;
  r.reused_tokens = common;
  r.fed_tokens = prompt.size() - common;
  r.prompt_tokens = prompt.size();
  r.generated_tokens = g.tokens.size();
  r.dropped_messages = dropped_now;
  r.prompt_seconds = g.prompt_seconds;
  r.gen_seconds = g.gen_seconds;

  msgs.push_back({"assistant", r.reply, false});
  messages_ = std::move(msgs);
  last_ = r;
  return r;
}

void Chat::reset() {
  messages_.clear();
  session_.truncate(0);
  last_.reset();
}

void Chat::set_system(std::string system) {
  if (const size_t at = utf8_first_invalid(system); at != std::string::npos)
    fail("system prompt: invalid UTF-8 at byte offset {}", at);
  system_ = std::move(system);
}

void Chat::set_setting(std::string_view key_in, std::string_view value_in) {
  std::string key(trim(key_in));
  std::replace(key.begin(), key.end(), '_', '-');
  const std::string_view value = trim(value_in);
  SamplerParams p = settings_.sampling;
  int n_predict = settings_.n_predict;
  if (key == "temp" || key == "temperature") {
    p.temp = parse_number<float>(key, value);
  } else if (key == "top-k") {
    p.top_k = parse_number<int>(key, value);
  } else if (key == "top-p") {
    p.top_p = parse_number<float>(key, value);
  } else if (key == "min-p") {
    p.min_p = parse_number<float>(key, value);
  } else if (key == "repeat-penalty") {
    p.repeat_penalty = parse_number<float>(key, value);
  } else if (key == "repeat-last-n") {
    p.repeat_last_n = parse_number<int>(key, value);
  } else if (key == "seed") {
    const int64_t s = parse_number<int64_t>(key, value);
    if (s < -1) fail("/set seed {}: expected ≥ 0, or -1 for a random seed", s);
    p.seed = s < 0 ? random_seed() : uint64_t(s);
  } else if (key == "n-predict" || key == "n") {
    n_predict = parse_number<int>(key, value);
    if (n_predict < -1) fail("/set n-predict {}: expected ≥ 0, or -1 for no limit", n_predict);
  } else {
    fail("/set {}: unknown setting (expected temp, top-k, top-p, min-p, repeat-penalty, repeat-last-n, seed or "
         "n-predict)", key);
  }
  try {
    p.validate();
  } catch (const Error& e) {
    fail("/set {} {}: {}", key, value, e.what());
  }
  sampler_.set_params(p);  // a new seed restarts the random stream
  settings_.sampling = p;
  settings_.n_predict = n_predict;
}

nlohmann::json Chat::to_json() const {
  using nlohmann::json;
  json msgs = json::array();
  for (const ChatMessage& m : messages_) {
    json o = {{"role", m.role}, {"content", m.content}};
    if (m.dropped) o["dropped"] = true;
    msgs.push_back(std::move(o));
  }
  const SamplerParams& p = settings_.sampling;
  // Floats as their shortest decimal form (0.05, not 0.05000000074505806); reading them back gives the same float.
  auto dec = [](float f) { return std::strtod(fmt::format("{}", f).c_str(), nullptr); };
  return {{"format", "ropepp-chat"},
          {"version", 1},
          {"template", chat_template_name(kind_)},
          {"system", system_},
          {"messages", std::move(msgs)},
          {"settings",
           {{"temp", dec(p.temp)},
            {"top_k", p.top_k},
            {"top_p", dec(p.top_p)},
            {"min_p", dec(p.min_p)},
            {"repeat_penalty", dec(p.repeat_penalty)},
            {"repeat_last_n", p.repeat_last_n},
            {"seed", p.seed},
            {"n_predict", settings_.n_predict}}}};
}

void Chat::from_json(const nlohmann::json& j, const std::string& what) {
  using nlohmann::json;
  if (!j.is_object()) fail("{}: expected a JSON object, got {}", what, j.type_name());
  if (j.contains("format") && j["format"] != "ropepp-chat")
    fail("{}: field 'format' is {}, expected \"ropepp-chat\"", what, j["format"].dump());
  if (j.contains("version") && j["version"] != 1)
    fail("{}: field 'version' is {}, expected 1", what, j["version"].dump());
  std::string system;
  if (j.contains("system") && !j["system"].is_null()) {
    if (!j["system"].is_string()) fail("{}: field 'system' must be a string, got {}", what, j["system"].type_name());
    system = j["system"].get<std::string>();
  }
  if (!j.contains("messages") || !j["messages"].is_array())
    fail("{}: expected an array field 'messages'", what);
  std::vector<ChatMessage> msgs;
  bool active_seen = false;
  for (size_t i = 0; i < j["messages"].size(); ++i) {
    const json& m = j["messages"][i];
    if (!m.is_object()) fail("{}: messages[{}] must be an object, got {}", what, i, m.type_name());
    if (!m.contains("role") || !m["role"].is_string() || (m["role"] != "user" && m["role"] != "assistant"))
      fail("{}: messages[{}].role is {}, expected \"user\" or \"assistant\"", what, i,
           m.contains("role") ? m["role"].dump() : "missing");
    if (!m.contains("content") || !m["content"].is_string())
      fail("{}: messages[{}].content must be a string, got {}", what, i,
           m.contains("content") ? m["content"].type_name() : "nothing");
    ChatMessage cm{m["role"].get<std::string>(), m["content"].get<std::string>(), false};
    if (m.contains("dropped")) {
      if (!m["dropped"].is_boolean())
        fail("{}: messages[{}].dropped must be true or false, got {}", what, i, m["dropped"].dump());
      cm.dropped = m["dropped"].get<bool>();
    }
    if (cm.dropped && active_seen)
      fail("{}: messages[{}] is dropped but follows a message that is not (only the oldest messages can be "
           "dropped)", what, i);
    active_seen |= !cm.dropped;
    msgs.push_back(std::move(cm));
  }
  ChatSettings st = settings_;
  if (j.contains("settings")) {
    const json& s = j["settings"];
    if (!s.is_object()) fail("{}: field 'settings' must be an object, got {}", what, s.type_name());
    auto num = [&](const char* key, auto& dst) {
      if (!s.contains(key)) return;
      using T = std::remove_reference_t<decltype(dst)>;
      const json& v = s[key];
      const bool ok = std::is_floating_point_v<T> ? v.is_number() : v.is_number_integer();
      if (!ok) fail("{}: settings.{} is {}, expected {}", what, key, v.dump(),
                    std::is_floating_point_v<T> ? "a number" : "an integer");
      if constexpr (std::is_same_v<T, uint64_t>) {
        if (!v.is_number_unsigned()) fail("{}: settings.{} is {}, expected a non-negative integer", what, key, v.dump());
      }
      dst = v.get<T>();
    };
    num("temp", st.sampling.temp);
    num("top_k", st.sampling.top_k);
    num("top_p", st.sampling.top_p);
    num("min_p", st.sampling.min_p);
    num("repeat_penalty", st.sampling.repeat_penalty);
    num("repeat_last_n", st.sampling.repeat_last_n);
    num("seed", st.sampling.seed);
    num("n_predict", st.n_predict);
    try {
      st.sampling.validate();
    } catch (const Error& e) {
      fail("{}: settings: {}", what, e.what());
    }
    if (st.n_predict < -1) fail("{}: settings.n_predict is {}, expected ≥ 0 or -1", what, st.n_predict);
  }
  if (j.contains("template") && j["template"].is_string() && j["template"] != chat_template_name(kind_))
    notice_(fmt::format("{} was saved with the {} template; continuing with {}", what,
                        j["template"].get<std::string>(), chat_template_name(kind_)));
  // Everything validated: commit.
  set_system(std::move(system));
  messages_ = std::move(msgs);
  sampler_.set_params(st.sampling);
  settings_ = st;
  last_.reset();
}

void Chat::save(const std::filesystem::path& file) const {
  const std::string text = to_json().dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  std::ofstream f(file, std::ios::binary | std::ios::trunc);
  if (!f) fail("/save {}: cannot open the file for writing: {}", file.string(), std::strerror(errno));
  f.write(text.data(), std::streamsize(text.size()));
  f.close();
  if (!f) fail("/save {}: writing the file failed: {}", file.string(), std::strerror(errno));
}

void Chat::load(const std::filesystem::path& file) {
  std::ifstream f(file, std::ios::binary);
  if (!f) fail("/load {}: cannot open the file: {}", file.string(), std::strerror(errno));
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string text = ss.str();
  check_json_depth(text, "/load " + file.string());  // dump() in the messages below would recurse that deep
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail("/load {}: not valid JSON: {}", file.string(), e.what());
  }
  from_json(j, "/load " + file.string());
}

std::string Chat::stats_text() const {
  size_t dropped = 0;
  for (const ChatMessage& m : messages_) dropped += m.dropped;
  std::string s = fmt::format("context: {} of {} tokens in the KV cache\nconversation: {} messages ({} dropped from "
                              "the context), template {}\n",
                              session_.tokens().size(), session_.n_ctx(), messages_.size(), dropped,
                              chat_template_name(kind_));
  if (last_) {
    const TurnResult& r = *last_;
    const double pp = r.prompt_seconds > 0 ? double(r.fed_tokens) / r.prompt_seconds : 0;
    const double tg = r.gen_seconds > 0 ? double(r.generated_tokens) / r.gen_seconds : 0;
    s += fmt::format("last reply: prompt {} tokens ({} new, {} reused) in {:.3f} s, {:.1f} tok/s | generated {} "
                     "tokens in {:.3f} s, {:.1f} tok/s | stop: {}\n",
                     r.prompt_tokens, r.fed_tokens, r.reused_tokens, r.prompt_seconds, pp, r.generated_tokens,
                     r.gen_seconds, tg, r.stop_reason);
  } else {
    s += "last reply: none yet\n";
  }
  // What a long session may not accumulate (tests/e2e/long_chat.py; backend bytes: 0 where not tracked).
  const KVCache& kv = session_.model().cache();
  s += fmt::format("memory: KV blocks {} of {} in use, backend {} bytes allocated\n",
                   kv.total_blocks() - kv.free_blocks(), kv.total_blocks(),
                   session_.model().backend().allocated_bytes());
  return s;
}

std::string Chat::settings_text() const {
  const SamplerParams& p = settings_.sampling;
  return fmt::format("temp {} | top-k {} | top-p {} | min-p {} | repeat-penalty {} | repeat-last-n {} | seed {} | "
                     "n-predict {}\n",
                     p.temp, p.top_k, p.top_p, p.min_p, p.repeat_penalty, p.repeat_last_n, p.seed,
                     settings_.n_predict);
}

// ---- REPL pieces ---------------------------------------------------------------------------------------

std::optional<std::string> InputAssembler::push(const std::string& line_in) {
  std::string_view line = line_in;
  if (ends_with(line, "\r")) line.remove_suffix(1);
  if (in_block_) {
    if (ends_with(line, "\"\"\"")) {
      if (line.size() == 3 && !buf_.empty()) buf_.pop_back();  // the newline before a closing """ line
      buf_ += line.substr(0, line.size() - 3);
      in_block_ = false;
      return take();
    }
    buf_ += line;
    buf_ += '\n';
    return std::nullopt;
  }
  if (!continuing_ && starts_with(line, "\"\"\"")) {
    line.remove_prefix(3);
    if (line.size() >= 3 && ends_with(line, "\"\"\"")) {
      buf_ = line.substr(0, line.size() - 3);
      return take();
    }
    in_block_ = true;
    buf_ = line;
    if (!line.empty()) buf_ += '\n';
    return std::nullopt;
  }
  if (ends_with(line, "\\")) {
    buf_ += line.substr(0, line.size() - 1);
    buf_ += '\n';
    continuing_ = true;
    return std::nullopt;
  }
  buf_ += line;
  return take();
}

std::string InputAssembler::take() {
  std::string s = std::move(buf_);
  clear();
  return s;
}

void InputAssembler::clear() {
  buf_.clear();
  continuing_ = false;
  in_block_ = false;
}

std::string chat_help_text() {
  return "Type a message and press Enter; the reply streams as it is generated.\n"
         "  end a line with \\ to continue on the next line; or put the message between \"\"\" lines\n"
         "  Ctrl-C stops a reply (the conversation stays); at the prompt it clears the line\n"
         "  Ctrl-D or /exit leaves\n"
         "Commands:\n"
         "  /help                 this text\n"
         "  /reset                forget the conversation (system prompt and settings stay)\n"
         "  /system [TEXT]        show or set the system prompt\n"
         "  /set [KEY VALUE]      show or change a setting: temp, top-k, top-p, min-p, repeat-penalty,\n"
         "                        repeat-last-n, seed (-1: random), n-predict (-1: no limit)\n"
         "  /save FILE            write the conversation (system prompt, all messages, settings) as JSON\n"
         "  /load FILE            continue a conversation written by /save\n"
         "  /stats                tokens in the context, context size, speeds of the last reply, memory in use\n"
         "  /exit                 leave\n"
         "A message that starts with / is written //...\n";
}

std::string chat_message_text(const std::string& input) {
  if (starts_with(input, "//")) return input.substr(1);
  return input;
}

ChatCommand run_chat_command(Chat& chat, const std::string& line, std::string& out) {
  const std::string_view l = trim(line);
  if (!starts_with(l, "/") || starts_with(l, "//") || line.find('\n') != std::string::npos)
    return ChatCommand::NotACommand;
  const size_t sp = l.find_first_of(kWhitespace);
  const std::string_view cmd = l.substr(0, sp);
  const std::string_view rest = sp == std::string_view::npos ? std::string_view() : trim(l.substr(sp));
  if (cmd == "/help" || cmd == "/?") {
    out += chat_help_text();
  } else if (cmd == "/exit" || cmd == "/quit") {
    return ChatCommand::Exit;
  } else if (cmd == "/reset") {
    chat.reset();
    out += "conversation cleared\n";
  } else if (cmd == "/system") {
    if (rest.empty()) {
      out += chat.system().empty() ? std::string("no system prompt\n") : fmt::format("system prompt: {}\n", chat.system());
    } else {
      chat.set_system(std::string(rest));
      out += "system prompt set\n";
    }
  } else if (cmd == "/set") {
    if (!rest.empty()) {
      const size_t ksp = rest.find_first_of(kWhitespace);
      if (ksp == std::string_view::npos) fail("/set {}: expected /set KEY VALUE", rest);
      chat.set_setting(rest.substr(0, ksp), rest.substr(ksp));
    }
    out += chat.settings_text();
  } else if (cmd == "/save" || cmd == "/load") {
    if (rest.empty()) fail("{}: expected a file name: {} FILE", cmd, cmd);
    if (cmd == "/save") {
      chat.save(std::string(rest));
      out += fmt::format("saved {} messages to {}\n", chat.messages().size(), rest);
    } else {
      chat.load(std::string(rest));
      size_t dropped = 0;
      for (const ChatMessage& m : chat.messages()) dropped += m.dropped;
      out += fmt::format("loaded {} messages ({} dropped from the context) from {}\n", chat.messages().size(),
                         dropped, rest);
    }
  } else if (cmd == "/stats") {
    out += chat.stats_text();
  } else {
    fail("unknown command {} (/help lists them; write //... to send a message that starts with /)", cmd);
  }
  return ChatCommand::Handled;
}

}  // namespace ropepp
