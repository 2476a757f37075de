// chat.h: the conversation behind `ropepp chat`, usable without a terminal (tests drive it directly).
//   - chat templates: Llama-3 headers, ChatML, and a plain "User:/Assistant:" one for base models;
//   - Chat: system prompt + messages + settings, kept in a Session's KV cache. Each turn renders the whole
//     conversation, reuses the cache's common prefix and feeds only the rest; when the context is full the
//     oldest turns leave the context (they stay in the history, marked dropped); a failed turn changes nothing;
//   - /commands (/help, /reset, /system, /set, /save, /load, /stats, /exit) and multi-line input assembly.
#pragma once

#include <atomic>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "generate.h"
#include "sampler.h"
#include "tokenizer.h"

namespace ropepp {

// ---- templates ---------------------------------------------------------------------------------------

enum class ChatTemplateKind { Plain, Llama3, ChatML };

const char* chat_template_name(ChatTemplateKind k);                 // "plain" | "llama3" | "chatml"
// --chat-template NAME ("plain", "llama3", "chatml"); Error naming the flag and the accepted names.
ChatTemplateKind parse_chat_template_name(std::string_view name);
// The family of a tokenizer_config.json chat_template (Jinja source), by its markers; nullopt when unknown.
std::optional<ChatTemplateKind> detect_chat_template(std::string_view jinja);

struct ChatMessage {
  std::string role;      // "user" | "assistant"
  std::string content;
  bool dropped = false;  // left out of the context to make room; still in the history and in /save
  bool operator==(const ChatMessage&) const = default;
};

// A piece of a rendered conversation: template markup (may spell special tokens such as <|eot_id|>) or
// message text (never parsed for special tokens, so a user cannot inject them).
struct ChatSegment {
  std::string text;
  bool markup = false;
};

// Renders system + messages; `generation_prompt` appends the opening of the assistant's next reply.
// Dropped messages are skipped. Contents are trimmed of surrounding whitespace.
std::vector<ChatSegment> render_chat(ChatTemplateKind k, std::string_view system, std::span<const ChatMessage> messages,
                                     bool generation_prompt);
std::string render_chat_text(std::span<const ChatSegment> segments);  // the segments concatenated
// Token ids of a rendered conversation, BOS added as the tokenizer says. With a hf-bpe tokenizer, markup is
// encoded with special tokens recognised and message text without; otherwise the text is encoded as one.
std::vector<int32_t> tokenize_chat(const Tokenizer& tok, ChatTemplateKind k, std::span<const ChatSegment> segments);
// Stop strings of the template's replies ("\nUser:" for plain; the others end with an EOS token).
std::vector<std::string> chat_stop_strings(ChatTemplateKind k);
// The token that ends a turn in the template ("<|eot_id|>", "<|im_end|>"), or "" for plain.
std::string chat_end_of_turn(ChatTemplateKind k);

// ---- the conversation ----------------------------------------------------------------------------------

struct ChatSettings {
  SamplerParams sampling;
  int n_predict = 512;        // tokens per reply; -1: until EOS / stop / full context
  bool ignore_eos = false;    // do not end replies at EOS tokens (testing)
  bool operator==(const ChatSettings& o) const;
};

struct TurnResult {
  std::string reply;              // the assistant's reply as stored (trimmed)
  std::string stop_reason;        // generate()'s: eos | stop | length | context | interrupted
  size_t reused_tokens = 0;       // KV cache tokens kept from before the turn
  size_t fed_tokens = 0;          // prompt tokens processed for this turn
  size_t prompt_tokens = 0;       // the whole rendered prompt
  size_t generated_tokens = 0;
  size_t dropped_messages = 0;    // messages that left the context in this turn
  double prompt_seconds = 0;
  double gen_seconds = 0;
};

class Chat {
 public:
  using TextFn = std::function<void(const std::string&)>;

  Chat(Session& session, const Tokenizer& tok, ChatTemplateKind kind, const ChatSettings& settings,
       std::string system = "");

  // One user turn: fits the context (dropping the oldest turns with a notice), feeds only the tokens the
  // cache lacks, generates the reply (text streamed to on_text, leading whitespace held back) and records
  // both messages. On an Error nothing changes (messages, dropped marks, stats); the cache stays usable.
  TurnResult turn(const std::string& user_text, const TextFn& on_text, const std::atomic<bool>* interrupt = nullptr);

  void reset();                                  // forget the messages (system prompt and settings stay)
  void set_system(std::string system);
  // /set KEY VALUE: temp, top-k, top-p, min-p, repeat-penalty, repeat-last-n, seed (-1: random), n-predict.
  void set_setting(std::string_view key, std::string_view value);

  nlohmann::json to_json() const;
  // Replaces system prompt, messages and settings; `what` names the source in errors. Validates fully first.
  void from_json(const nlohmann::json& j, const std::string& what);
  void save(const std::filesystem::path& file) const;
  void load(const std::filesystem::path& file);

  const std::vector<ChatMessage>& messages() const { return messages_; }
  const std::string& system() const { return system_; }
  const ChatSettings& settings() const { return settings_; }
  ChatTemplateKind kind() const { return kind_; }
  Session& session() { return session_; }
  const std::optional<TurnResult>& last_turn() const { return last_; }
  // The prompt tokens the next turn would start from (the active conversation, with the generation prompt).
  std::vector<int32_t> render_tokens(std::span<const ChatMessage> messages) const;

  std::string stats_text() const;
  std::string settings_text() const;
  // Where notices go (dropped turns, ...); default: spdlog::warn.
  void set_notice(TextFn fn) { notice_ = std::move(fn); }

 private:
  size_t reply_reserve() const;  // tokens kept free for the reply

  Session& session_;
  const Tokenizer& tok_;
  ChatTemplateKind kind_;
  ChatSettings settings_;
  std::string system_;
  std::vector<ChatMessage> messages_;
  Sampler sampler_;
  std::optional<TurnResult> last_;
  TextFn notice_;
};

// ---- REPL pieces ---------------------------------------------------------------------------------------

// Joins physical lines into one input: a line ending in '\' continues on the next line; a line starting
// with """ opens a block that ends at a line ending with """ (text beside the quotes is kept).
class InputAssembler {
 public:
  std::optional<std::string> push(const std::string& line);  // the complete input, or nullopt: more to come
  bool pending() const { return continuing_ || in_block_; }
  std::string take();                                          // what is pending (at EOF), and clear
  void clear();

 private:
  std::string buf_;
  bool continuing_ = false;
  bool in_block_ = false;
};

enum class ChatCommand { NotACommand, Handled, Exit };

// Runs `line` when it is a /command, appending what it prints to `out`. "//text" is not a command (the
// message "/text"); see chat_message_text. Errors (bad /set value, unreadable /load file, ...) throw.
ChatCommand run_chat_command(Chat& chat, const std::string& line, std::string& out);
// The message to send for an input that is not a command ("//x" → "/x").
std::string chat_message_text(const std::string& input);
std::string chat_help_text();

}  // namespace ropepp
