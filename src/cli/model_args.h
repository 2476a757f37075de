// model_args.h: the flags every model-using subcommand shares (-m, --device, --rope-mode, -c, -t) and
// the code that turns them into a loaded checkpoint, backend, model and tokenizer.
#pragma once

#include <CLI/CLI.hpp>

#include <memory>
#include <string>

#include "backend.h"
#include "checkpoint.h"
#include "model.h"
#include "tokenizer.h"

namespace ropepp::cli {

struct ModelArgs {
  std::string model;             // -m: checkpoint directory; empty = the embedded default model
  std::string device = "cpu";    // --device cpu | cuda | cuda:N
  std::string rope_mode = "auto";
  int ctx = 0;                   // -c: 0 = what the job needs (command-specific)
  int threads = 0;               // -t: CPU threads, 0 = all cores
  int batch = 512;               // -b: tokens per forward chunk
  int kv_block = 16;             // --kv-block: tokens per KV cache block (ModelOptions::block_size)
};

// Adds -m/--model, --device, --rope-mode (and -c, -t, -b, --kv-block when `with_runtime`) to a subcommand.
void add_model_args(CLI::App* sub, ModelArgs& a, bool with_runtime = true);

// -m as given, or the default model: $ROPEPP_MODEL, then models/default beside the executable's
// directory (../models/default, models/default), then the source tree's models/default.
std::filesystem::path resolve_model_dir(const std::string& arg);

struct Loaded {
  std::unique_ptr<Checkpoint> ckpt;
  std::unique_ptr<Backend> backend;
  std::unique_ptr<Model> model;
  std::unique_ptr<Tokenizer> tokenizer;  // null when the checkpoint has no usable tokenizer files
  double load_seconds = 0;
};

// What a command needs of the checkpoint's tokenizer: Required (a missing/broken one is an Error), Optional
// (loaded when usable, else a debug note), None (not loaded: parsing Llama-3's tokenizer.json takes ~0.5 s).
enum class TokenizerUse { Required, Optional, None };

// Loads the checkpoint, the backend, the model and (per `tok`) the tokenizer.
Loaded load_model(const ModelArgs& a, ModelOptions opt, TokenizerUse tok);

// Whether this process created a device (CUDA) backend: main then ends it with std::_Exit once its output is
// flushed, skipping the CUDA runtime's and cuBLAS's teardown at exit (the driver frees the context with the
// process either way). Env ROPEPP_FULL_EXIT=1 keeps the normal exit (for leak checkers such as compute-sanitizer).
bool device_backend_created();

// "1,2,3" or "1 2 3" (also newlines) → ids; Error naming `what` and the bad item.
std::vector<int32_t> parse_id_list(const std::string& text, const std::string& what);

}  // namespace ropepp::cli
