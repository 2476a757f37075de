// cmd_chat.cpp: `ropepp chat` — an interactive conversation (REPL) with line editing and history, multi-line
// input, /commands, replies streamed as generated, Ctrl-C to stop a reply. The conversation logic is in
// src/chat.{h,cpp}; this file is the terminal around it. With stdin piped, stdout carries only the replies
// (one per message, each followed by a newline); notices and command output go to stderr.
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>

#include "chat.h"
#include "commands.h"
#include "line_editor.h"
#include "model_args.h"
#include "sampling_args.h"

namespace ropepp::cli {
namespace {

struct ChatArgs {
  ModelArgs m;
  SamplingArgs s;
  std::string system;
  std::string chat_template = "auto";
  std::string load;
  int n_predict = 512;
  bool ignore_eos = false;
};

// Set by SIGINT; generate() polls it between tokens, the line editor sees EINTR. A second SIGINT before
// the first was handled (e.g. while a long prompt is being processed) ends the process.
std::atomic<bool> g_interrupt{false};
static_assert(std::atomic<bool>::is_always_lock_free);

extern "C" void on_sigint(int) {
  if (g_interrupt.exchange(true)) {
    std::signal(SIGINT, SIG_DFL);
    std::raise(SIGINT);
  }
}

void install_sigint_handler() {
  struct sigaction sa {};
  sa.sa_handler = on_sigint;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: a blocking read returns EINTR
  sigaction(SIGINT, &sa, nullptr);
}

void write_out(std::FILE* f, const std::string& s) {
  std::fwrite(s.data(), 1, s.size(), f);
  std::fflush(f);
}

// Text for a terminal: C0/C1 control characters other than newline and tab (a random or hostile model can
// emit ESC sequences) become U+FFFD.
std::string terminal_safe(const std::string& t) {
  std::string out;
  out.reserve(t.size());
  for (size_t i = 0; i < t.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(t[i]);
    const bool c1 = c == 0xC2 && i + 1 < t.size() && static_cast<unsigned char>(t[i + 1]) >= 0x80 &&
                    static_cast<unsigned char>(t[i + 1]) <= 0x9F;
    if ((c < 0x20 && c != '\n' && c != '\t') || c == 0x7F || c1) {
      out += "\xEF\xBF\xBD";
      i += c1;
    } else {
      out += char(c);
    }
  }
  return out;
}

ChatTemplateKind choose_template(const ChatArgs& a, const Tokenizer& tok, std::string& why) {
  if (a.chat_template != "auto") {
    why = "--chat-template";
    return parse_chat_template_name(a.chat_template);
  }
  const auto jinja = tok.chat_template();
  if (!jinja) {
    why = "the tokenizer has no chat_template: base-model format";
    return ChatTemplateKind::Plain;
  }
  if (auto k = detect_chat_template(*jinja)) {
    why = "detected in the tokenizer's chat_template";
    return *k;
  }
  why = "the tokenizer's chat_template is not a recognised family (llama3, chatml); --chat-template overrides";
  return ChatTemplateKind::Plain;
}

void run_chat(const ChatArgs& a) {
  const SamplerParams sp = a.s.resolve();
  if (a.n_predict < -1) fail("-n {}: expected ≥ 0, or -1 for no limit", a.n_predict);
  if (a.chat_template != "auto") parse_chat_template_name(a.chat_template);  // fail before loading

  const auto dir = resolve_model_dir(a.m.model);
  const ModelConfig cfg = parse_config(dir / "config.json");
  const int model_max = int(std::min<int64_t>(cfg.max_position_embeddings > 0 ? cfg.max_position_embeddings : 4096, 65536));
  ModelOptions opt;
  opt.n_ctx = a.m.ctx > 0 ? a.m.ctx : std::min(model_max, 4096);
  Loaded L = load_model(a.m, opt, TokenizerUse::Required);
  const Tokenizer& tok = *L.tokenizer;

  std::string why;
  const ChatTemplateKind kind = choose_template(a, tok, why);
  const bool interactive = isatty(STDIN_FILENO) != 0;
  const bool tty_out = isatty(STDOUT_FILENO) != 0;
  fmt::print(stderr, "chat: template {} ({}) | context {} tokens | {} on {}\n", chat_template_name(kind), why,
             opt.n_ctx, dir.string(), L.backend->name());
  if (const std::string eot = chat_end_of_turn(kind); !eot.empty()) {
    EncodeOptions eo;
    eo.add_bos = false;
    const auto ids = tok.encode(eot, eo);
    if (ids.size() != 1)
      spdlog::warn("the {} template's {} is not one token of this tokenizer; replies may not end", chat_template_name(kind), eot);
    else if (!tok.is_eos(ids[0]) && !a.ignore_eos)
      spdlog::warn("{} (id {}) is not an EOS token of this tokenizer; replies end only at n-predict or a full context",
                   eot, ids[0]);
  }

  Session session(*L.model);
  ChatSettings settings;
  settings.sampling = sp;
  settings.n_predict = a.n_predict;
  settings.ignore_eos = a.ignore_eos;
  Chat chat(session, tok, kind, settings, a.system);
  chat.set_notice([](const std::string& s) {
    std::fflush(stdout);
    fmt::print(stderr, "note: {}\n", s);
  });
  // Prompts and command output: on stdout when both ends are a terminal, else on stderr (stdout = replies).
  std::FILE* cmd_out = interactive && tty_out ? stdout : stderr;
  if (!a.load.empty()) {
    std::string out;
    run_chat_command(chat, "/load " + a.load, out);
    write_out(stderr, out);
  }

  LineEditor editor(interactive);
  install_sigint_handler();
  if (interactive)
    fmt::print(stderr, "/help lists the commands; Ctrl-C stops a reply; Ctrl-D or /exit leaves; line editing {}\n",
               editor.editing()                        ? "on"
               : !LineEditor::built_with_libedit()     ? "off (built without libedit)"
                                                       : "off (stdout is not a terminal)");

  InputAssembler input;
  for (;;) {
    g_interrupt.store(false);
    std::string line;
    const auto st = editor.read(input.pending() ? "... " : "> ", line);
    if (st == LineEditor::Status::Interrupted) {
      if (!interactive) std::exit(130);  // a script was stopped
      input.clear();
      write_out(cmd_out, "\n");
      continue;
    }
    std::string text;
    if (st == LineEditor::Status::Eof) {
      if (!input.pending()) {
        if (interactive) write_out(cmd_out, "\n");
        break;
      }
      text = input.take();  // an unfinished multi-line message is sent as it is
    } else {
      editor.add_history(line);
      auto done = input.push(line);
      if (!done) continue;
      text = std::move(*done);
    }
    try {
      std::string out;
      const ChatCommand c = run_chat_command(chat, text, out);
      write_out(cmd_out, out);
      if (c == ChatCommand::Exit) break;
      if (c == ChatCommand::Handled) continue;
      const std::string msg = chat_message_text(text);
      if (msg.find_first_not_of(" \t\r\n") == std::string::npos) continue;
      g_interrupt.store(false);
      const TurnResult r = chat.turn(
          msg, [&](const std::string& t) { write_out(stdout, tty_out ? terminal_safe(t) : t); }, &g_interrupt);
      write_out(stdout, "\n");
      if (r.stop_reason == "interrupted") {
        fmt::print(stderr, "[reply stopped]\n");
      } else if (r.stop_reason == "context") {
        fmt::print(stderr, "[the reply filled the context of {} tokens; older turns will leave it]\n", opt.n_ctx);
      } else if (r.stop_reason == "length") {
        fmt::print(stderr, "[reply cut at n-predict = {} tokens]\n", chat.settings().n_predict);
      }
    } catch (const Error& e) {
      std::fflush(stdout);
      fmt::print(stderr, "error: {}\n", e.what());
    }
    if (st == LineEditor::Status::Eof) break;
  }
  std::fflush(stdout);
}

}  // namespace

void register_chat_command(CLI::App& app) {
  auto a = std::make_shared<ChatArgs>();
  CLI::App* sub = app.add_subcommand(
      "chat", "interactive conversation (REPL) with streamed replies; /help inside. -c 0 (the default): the "
              "model's trained context, at most 4096 tokens");
  add_model_args(sub, a->m);
  add_sampling_args(sub, a->s);
  sub->add_option("--system", a->system, "system prompt");
  sub->add_option("--chat-template", a->chat_template,
                  "auto (the tokenizer's chat_template when it is Llama-3 or ChatML, else plain), llama3, chatml "
                  "or plain (User:/Assistant: lines for base models)")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "llama3", "chatml", "plain"}));
  sub->add_option("-n,--n-predict", a->n_predict, "tokens per reply at most (-1: until the end of the turn or a full context)")
      ->capture_default_str();
  sub->add_option("--load", a->load, "start from a conversation written by /save");
  sub->add_flag("--ignore-eos", a->ignore_eos, "do not end replies at end-of-sequence tokens (testing)");
  sub->callback([a] { run_chat(*a); });
}

}  // namespace ropepp::cli
