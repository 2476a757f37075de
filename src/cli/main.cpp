// main.cpp: the ropepp executable. Each subcommand lives in its own src/cli/cmd_*.cpp and registers
// itself here; every user-facing failure is a ropepp::Error, printed as "error: ..." with exit status 1.
#include <spdlog/cfg/env.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <new>

#include "commands.h"
#include "common.h"
#include "model_args.h"

int main(int argc, char** argv) {
  const auto t_start = std::chrono::steady_clock::now();
  // Logs go to stderr so that stdout carries only results (ids, text, JSON).
  spdlog::set_default_logger(spdlog::stderr_color_mt("ropepp"));
  spdlog::set_pattern("%^%l%$: %v");
  spdlog::cfg::load_env_levels();  // SPDLOG_LEVEL=debug

  CLI::App app{"ropepp: inference engine for RoPE++ language models"};
  app.set_version_flag("--version", std::string("ropepp 0.1.0"));
  app.require_subcommand(1);
  bool verbose = false;
  app.add_flag("-v,--verbose", verbose, "debug logging");
  app.parse_complete_callback([&] {
    if (verbose) {  // with the time of day, so that a run's phases can be timed from its log
      spdlog::set_level(spdlog::level::debug);
      spdlog::set_pattern("%^%l%$ %H:%M:%S.%e: %v");
    }
  });

  ropepp::cli::register_info_command(app);
  ropepp::cli::register_score_command(app);
  ropepp::cli::register_generate_command(app);
  ropepp::cli::register_bench_command(app);
  ropepp::cli::register_tokenize_commands(app);
  ropepp::cli::register_chat_command(app);
  ropepp::cli::register_perplexity_command(app);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help, --version
    // A bad flag is a user error like any other: "error: ..." and status 1 (CLI11's own codes are 100-127).
    std::fprintf(stderr, "error: %s\nRun with --help for more information.\n", e.what());
    return 1;
  } catch (const ropepp::Error& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fflush(stdout);
    std::fprintf(stderr, "error: out of host memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  // With -v: how long main ran (the command and its teardown); a shell's wall clock beyond this is the
  // process start (dynamic loading) and exit (atexit handlers, the driver's teardown).
  const double ran = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  if (ropepp::cli::device_backend_created() && !ropepp::env_flag("ROPEPP_FULL_EXIT", false)) {
    // The command's model and backend are already freed; what remains at exit is the CUDA runtime's and
    // cuBLAS's teardown, which the driver does anyway when the process ends (model_args.h).
    spdlog::debug("main: exits {:.3f} s after it started (skipping the CUDA runtime's teardown)", ran);
    spdlog::default_logger()->flush();
    std::fflush(stdout);
    std::fflush(stderr);
    std::_Exit(0);
  }
  spdlog::debug("main: returns {:.3f} s after it started", ran);
  return 0;
}
