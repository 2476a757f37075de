// commands.h: one register_* function per subcommand file under src/cli/.
#pragma once

#include <CLI/CLI.hpp>

namespace ropepp::cli {

void register_info_command(CLI::App& app);        // cmd_info.cpp
void register_score_command(CLI::App& app);       // cmd_score.cpp
void register_generate_command(CLI::App& app);    // cmd_generate.cpp
void register_bench_command(CLI::App& app);       // cmd_bench.cpp
void register_tokenize_commands(CLI::App& app);   // cmd_tokenize.cpp: tokenize, detokenize
void register_chat_command(CLI::App& app);        // cmd_chat.cpp
void register_perplexity_command(CLI::App& app);  // cmd_perplexity.cpp

}  // namespace ropepp::cli

