// cmd_bench.cpp: `ropepp bench` — llama-bench style throughput table: prefill (pp) and decode (tg) at given
// context depths, each as tokens/s ± sd over repetitions, with the achieved rate against the machine's
// ceilings measured in the same run (copy bandwidth for decode, matmul rate for prefill).
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cmath>
#include <nlohmann/json.hpp>
#include <functional>
#include <random>

#include "commands.h"
#include "gpu_timeline.h"
#include "kv_cache.h"
#include "model_args.h"
#include "op_breakdown.h"
#ifdef ROPEPP_HAS_CUDA
#include "kernel_timeline.h"
#endif

namespace ropepp::cli {
namespace {

using clock_type = std::chrono::steady_clock;

struct BenchArgs {
  ModelArgs m;
  std::vector<int> prompt = {512};
  std::vector<int> gen = {128};
  std::vector<int> depth = {0};
  int reps = 3;
  bool json = false;
  bool no_ceilings = false;
  bool no_breakdown = false;
  int timeline = 0;  // --timeline N: N graphed decode steps per depth recorded with CUPTI and taken apart
};

struct Stat {
  double mean = 0, sd = 0;
};
Stat stat(const std::vector<double>& v) {
  Stat s;
  for (double x : v) s.mean += x;
  s.mean /= double(v.size());
  for (double x : v) s.sd += (x - s.mean) * (x - s.mean);
  s.sd = v.size() > 1 ? std::sqrt(s.sd / double(v.size() - 1)) : 0.0;
  return s;
}

double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

struct Ceilings {
  double copy_gbs = 0;     // device-to-device copy, bytes read + written per second / 1e9
  double matmul_tflops = 0;
};

Ceilings measure_ceilings(Backend& be) {
  Ceilings c;
  const bool cpu = be.name() == "cpu";
  {
    const size_t bytes = cpu ? (size_t(256) << 20) : (size_t(1) << 30);
    void* a = be.alloc(bytes);
    void* b = be.alloc(bytes);
    std::vector<char> init(1 << 20, 1);
    for (size_t off = 0; off < bytes; off += init.size()) be.upload(static_cast<char*>(a) + off, init.data(), init.size());
    be.copy(b, a, bytes);
    be.synchronize();
    const int iters = cpu ? 5 : 20;
    const auto t0 = clock_type::now();
    for (int i = 0; i < iters; ++i) be.copy(i % 2 ? a : b, i % 2 ? b : a, bytes);
    be.synchronize();
    c.copy_gbs = 2.0 * double(bytes) * iters / seconds_since(t0) / 1e9;
    be.release(a);
    be.release(b);
  }
  {
    const int K = cpu ? 2048 : 8192, R = cpu ? 2048 : 8192, N = cpu ? 128 : 8192;
    std::mt19937 rng(1);
    std::normal_distribution<float> nd;
    std::vector<uint16_t> w(size_t(R) * K);
    for (auto& x : w) x = f32_to_bf16(nd(rng));
    std::vector<float> x(size_t(N) * K);
    for (auto& v : x) v = nd(rng);
    Weight W = be.load_weight(w.data(), DType::BF16, R, K);
    auto* X = static_cast<float*>(be.alloc(x.size() * sizeof(float)));
    auto* Y = static_cast<float*>(be.alloc(size_t(N) * R * sizeof(float)));
    be.upload(X, x.data(), x.size() * sizeof(float));
    be.matmul({X, W, Y, N});
    be.synchronize();
    const int iters = cpu ? 2 : 10;
    const auto t0 = clock_type::now();
    for (int i = 0; i < iters; ++i) be.matmul({X, W, Y, N});
    be.synchronize();
    c.matmul_tflops = 2.0 * N * double(R) * K * iters / seconds_since(t0) / 1e12;
    be.release(X);
    be.release(Y);
    be.release_weight(W);
  }
  return c;
}

// Runs `run` `reps` times with the backend timing every op; returns per-op rows (op, calls per run, µs per
// run, bytes, GB/s) in first-seen order, and their sum in *total_us.
nlohmann::json profile_ops(Backend& be, int reps, double* total_us, const std::function<void()>& run) {
  be.set_profiling(true);
  for (int i = 0; i < reps; ++i) run();
  be.set_profiling(false);
  return aggregate_ops(be.take_profile(), reps, total_us);
}

void run_bench(const BenchArgs& a) {
  if (a.reps < 1) fail("-r/--repetitions {}: expected ≥ 1", a.reps);
  for (int p : a.prompt)
    if (p < 1) fail("-p {}: prompt sizes must be ≥ 1", p);
  for (int n : a.gen)
    if (n < 0) fail("-n {}: generation lengths must be ≥ 0", n);
  for (int d : a.depth)
    if (d < 0) fail("-d {}: depths must be ≥ 0", d);
  int need = 1;
  for (int p : a.prompt) need = std::max(need, p);
  for (int d : a.depth)
    for (int n : a.gen) need = std::max(need, d + n);
  if (a.timeline < 0 || a.timeline == 1 || a.timeline == 2)
    fail("--timeline {}: expected 0 (off) or ≥ 3 steps", a.timeline);
  if (a.timeline > 0) {
    for (int d : a.depth) need = std::max(need, d + a.timeline + 5);  // 4 untimed steps first
#ifdef ROPEPP_HAS_CUDA
    if (a.m.device.rfind("cuda", 0) != 0)
      fail("--timeline: records GPU kernels; --device is {}, expected cuda", a.m.device);
    timeline_start();  // before the context and the decode graphs exist, so that CUPTI sees every kernel
#else
    fail("--timeline: this ropepp was built without CUDA (ROPEPP_CUDA=OFF)");
#endif
  }
  ModelOptions opt;
  opt.n_ctx = a.m.ctx > 0 ? a.m.ctx : need;
  if (opt.n_ctx < need) fail("-c {}: the tests need a context of {} tokens", opt.n_ctx, need);
  Loaded L = load_model(a.m, opt, TokenizerUse::None);
  Model& model = *L.model;
  Backend& be = *L.backend;
  const ModelConfig& cfg = model.config();
  const int64_t V = cfg.vocab_size, D = cfg.hidden_size, hd = cfg.head_dim;
  // FLOPs per token through the decoder matmuls (embedding lookup is not a matmul; lm_head counted per logits row).
  // A layer's q/k/v projections run for every token; the rest of the layer (Wo, feed-forward) skips, in the last
  // layer, the rows whose logits are not needed (DecoderLayersParams).
  const double qkv_params = double(D * (cfg.n_q_heads() + 2 * cfg.n_kv()) * hd);
  const double rest_params = double(cfg.n_attn_heads() * hd * D + 3 * D * cfg.intermediate_size);
  const double every_row_params = double(cfg.n_layers) * qkv_params + double(cfg.n_layers - 1) * rest_params;
  const double head_flops = 2.0 * double(V) * double(D);
  const size_t kv_tok = KVCache::bytes_per_token(int(cfg.n_layers), int(cfg.n_kv()), int(hd), be.kv_dtype());
  const double weight_read = double(model.decode_weight_bytes());

  Ceilings ceil;
  if (!a.no_ceilings) ceil = measure_ceilings(be);

  std::mt19937 rng(42);
  std::uniform_int_distribution<int32_t> tok(0, int32_t(V - 1));
  auto random_ids = [&](int n) {
    std::vector<int32_t> v(static_cast<size_t>(n));
    for (auto& x : v) x = tok(rng);
    return v;
  };

  nlohmann::json rows = nlohmann::json::array();
  auto report = [&](const std::string& test, const std::vector<double>& tps, double rate, const char* unit,
                    double limit) {
    const Stat s = stat(tps);
    nlohmann::json r = {{"test", test}, {"tok_per_s", s.mean}, {"tok_per_s_sd", s.sd}, {"reps", tps.size()},
                        {"rate", rate}, {"rate_unit", unit}};
    if (limit > 0) r["fraction_of_limit"] = rate / limit;
    rows.push_back(r);
  };

  // Warm-up: one short forward so one-time costs (page faults, handles, kernel loading) stay out.
  {
    const int seq = model.cache().add_sequence();
    const auto ids = random_ids(std::min(8, opt.n_ctx));
    SeqChunk c{seq, ids, false};
    model.forward(std::span(&c, 1));
    model.cache().remove_sequence(seq);
  }

  for (int p : a.prompt) {
    std::vector<double> tps;
    // One untimed run first (as llama-bench does): the first prefill of a size loads its kernels (lazy module
    // loading) and sizes cuBLAS and scratch; timed, it made pp4096's sd ~50% of the mean on the H100.
    for (int r = -1; r < a.reps; ++r) {
      const auto ids = random_ids(p);
      const int seq = model.cache().add_sequence();
      SeqChunk c{seq, ids, false};
      const auto t0 = clock_type::now();
      model.forward(std::span(&c, 1));
      if (r >= 0) tps.push_back(p / seconds_since(t0));
      model.cache().remove_sequence(seq);
    }
    // The work done: only the prompt's last row needs logits, so that row alone runs the last layer's attention
    // (4·hd FLOPs per head and key: q·k and p·v over its p keys), Wo, feed-forward and lm_head.
    const double attn_per_key = 4.0 * double(cfg.n_attn_heads()) * double(hd);
    const double keys_all = double(p) * double(p + 1) / 2;  // Σ (t + 1) over the prompt's positions t
    const double flops = 2.0 * every_row_params * p + 2.0 * rest_params + head_flops +
                         attn_per_key * (double(cfg.n_layers - 1) * keys_all + double(p));
    const double tflops = flops / (p / stat(tps).mean) / 1e12;
    report(fmt::format("pp{}", p), tps, tflops, "TFLOP/s", ceil.matmul_tflops);
  }
  for (int d : a.depth) {
    for (int n : a.gen) {
      if (n == 0) continue;
      std::vector<double> tps;
      for (int r = 0; r < a.reps; ++r) {
        const int seq = model.cache().add_sequence();
        if (d > 0) {
          const auto ctx_ids = random_ids(d);
          SeqChunk c{seq, ctx_ids, false};
          model.forward(std::span(&c, 1));
        }
        // Greedy decoding as `generate --temp 0` runs it: each step feeds the previous step's argmax (computed on
        // the backend and read there; only the id comes back), starting from a random token, with the next step
        // queued before this one's id is read (Model::forward_argmax_queued, one step ahead).
        // ModelOptions::greedy_steps > 1 (ROPEPP_GREEDY_STEPS): that many chained steps per queued call.
        std::vector<int32_t> ids(size_t(n), 0);  // the queued steps' ids land here
        const int32_t first = random_ids(1)[0];
        int n_queued = 0;
        auto queue = [&](int32_t token) {
          const int k = std::min(model.greedy_steps(), n - n_queued);
          const uint64_t t = model.forward_argmax_queued(seq, token, &ids[size_t(n_queued)], 0, k);
          n_queued += k;
          return t;
        };
        const auto t0 = clock_type::now();
        uint64_t ticket = queue(first);
        for (bool more = true; more;) {
          more = n_queued < n;
          const uint64_t next = more ? queue(-1) : 0;
          model.wait(ticket);
          ticket = next;
        }
        tps.push_back(n / seconds_since(t0));
        model.cache().remove_sequence(seq);
      }
      // Bytes read per generated token: every weight once plus the cache so far (mean depth d + n/2).
      const double bytes = weight_read + double(kv_tok) * (d + n / 2.0);
      const double gbs = bytes * stat(tps).mean / 1e9;
      report(d > 0 ? fmt::format("tg{} @ d{}", n, d) : fmt::format("tg{}", n), tps, gbs, "GB/s", ceil.copy_gbs);
    }
  }

  nlohmann::json timelines = nlohmann::json::array();
#ifdef ROPEPP_HAS_CUDA
  if (a.timeline > 0) {  // N queued greedy steps per depth, as the tg tests run them, after 4 untimed ones
    std::vector<std::pair<uint64_t, uint64_t>> windows;
    for (int d : a.depth) {
      const int seq = model.cache().add_sequence();
      if (d > 0) {
        const auto ctx_ids = random_ids(d);
        SeqChunk c{seq, ctx_ids, false};
        model.forward(std::span(&c, 1));
      }
      const int n = a.timeline + 4;  // fits: `need` counted it
      std::vector<int32_t> ids(size_t(n), 0);
      uint64_t ticket = model.forward_argmax_queued(seq, random_ids(1)[0], &ids[0]);
      uint64_t t0 = 0;
      for (int i = 0; i < n; ++i) {
        if (i == 4) t0 = timeline_now();
        const uint64_t next = i + 1 < n ? model.forward_argmax_queued(seq, -1, &ids[size_t(i) + 1]) : 0;
        model.wait(ticket);
        ticket = next;
      }
      windows.emplace_back(t0, timeline_now());
      model.cache().remove_sequence(seq);
    }
    const std::vector<GpuSpan> spans = timeline_stop();
    for (size_t w = 0; w < windows.size(); ++w) {
      std::vector<GpuSpan> in;
      for (const auto& s : spans)
        if (s.start_ns >= windows[w].first && s.end_ns <= windows[w].second) in.push_back(s);
      timelines.push_back(analyze_decode_timeline(in, a.depth[w]));
    }
  }
#endif

  // Per-op breakdowns: one decode step at the first depth and one prefill of the first prompt size, every op
  // timed on its own (no graph, so the decode sum is above the graphed step time; the difference is launch
  // overhead that the graph removes).
  nlohmann::json breakdown = nlohmann::json::array(), prefill_breakdown = nlohmann::json::array();
  double step_us = 0, prefill_us = 0;
  if (!a.no_breakdown && be.name() != "cpu") {
    const int d = std::min(a.depth.front(), opt.n_ctx - 4);
    const int seq = model.cache().add_sequence();
    const auto ctx_ids = random_ids(std::max(d, 1));
    SeqChunk c{seq, ctx_ids, false};
    model.forward(std::span(&c, 1));
    int32_t next = random_ids(1)[0];
    constexpr int kSteps = 3;
    breakdown = profile_ops(be, kSteps, &step_us, [&] {
      SeqChunk one{seq, std::span(&next, 1), false};
      next = model.forward_argmax(std::span(&one, 1)).at(0);
    });
    model.cache().remove_sequence(seq);
    const auto ids = random_ids(a.prompt.front());
    prefill_breakdown = profile_ops(be, 1, &prefill_us, [&] {
      const int s2 = model.cache().add_sequence();
      SeqChunk pc{s2, ids, false};
      model.forward(std::span(&pc, 1));
      model.cache().remove_sequence(s2);
    });
  }

  const size_t mem = be.allocated_bytes();
  if (a.json) {
    nlohmann::json j = {{"model", resolve_model_dir(a.m.model).string()},
                        {"mode", rope_mode_name(cfg.mode)},
                        {"device", be.name()},
                        {"weights_bytes", model.weight_bytes()},
                        {"kv_bytes_per_token", kv_tok},
                        {"ctx", opt.n_ctx},
                        {"allocated_bytes", mem},
                        {"ceilings", {{"copy_GBps", ceil.copy_gbs}, {"matmul_TFLOPs", ceil.matmul_tflops}}},
                        {"results", rows},
                        {"decode_breakdown", breakdown},
                        {"decode_breakdown_sum_us", step_us},
                        {"prefill_breakdown_tokens", a.prompt.front()},
                        {"prefill_breakdown", prefill_breakdown},
                        {"prefill_breakdown_sum_us", prefill_us}};
    if (!timelines.empty()) j["timelines"] = timelines;
    j["greedy_steps_per_call"] = model.greedy_steps();
    fmt::print("{}\n", j.dump(2));
    return;
  }
  fmt::print("model: {} | mode {} | device {} | weights {:.1f} MiB | KV {} B/token | ctx {}\n",
             resolve_model_dir(a.m.model).string(), rope_mode_name(cfg.mode), be.name(),
             double(model.weight_bytes()) / (1 << 20), kv_tok, opt.n_ctx);
  if (!a.no_ceilings)
    fmt::print("ceilings (measured now): copy {:.1f} GB/s (read + write), 16-bit matmul {:.2f} TFLOP/s\n", ceil.copy_gbs,
               ceil.matmul_tflops);
  if (mem) fmt::print("backend memory allocated: {:.2f} GiB\n", double(mem) / (1 << 30));
  if (model.greedy_steps() > 1) fmt::print("tg: {} chained greedy steps per queued call\n", model.greedy_steps());
  fmt::print("\n| {:<16} | {:>20} | {:>16} | {:>10} |\n", "test", "t/s", "rate", "% of limit");
  fmt::print("| {:-<16} | {:->20} | {:->16} | {:->10} |\n", "", "", "", "");
  for (const auto& r : rows) {
    const std::string pct = r.contains("fraction_of_limit") ? fmt::format("{:.1f}%", 100 * r["fraction_of_limit"].get<double>()) : "-";
    fmt::print("| {:<16} | {:>20} | {:>16} | {:>10} |\n", r["test"].get<std::string>(),
               fmt::format("{:.2f} ± {:.2f}", r["tok_per_s"].get<double>(), r["tok_per_s_sd"].get<double>()),
               fmt::format("{:.2f} {}", r["rate"].get<double>(), r["rate_unit"].get<std::string>()), pct);
  }
  for (const auto& t : timelines) fmt::print("{}", format_decode_timeline(t));
  if (!breakdown.empty()) {
    fmt::print("{}", format_breakdown(fmt::format("decode step at depth {}, op by op (each op timed alone, no graph; "
                                                  "mean of 3 steps)", a.depth.front()), breakdown, step_us));
    fmt::print("{}", format_breakdown(fmt::format("prefill of {} tokens, op by op", a.prompt.front()),
                                      prefill_breakdown, prefill_us));
  }
}

}  // namespace

void register_bench_command(CLI::App& app) {
  auto a = std::make_shared<BenchArgs>();
  CLI::App* sub = app.add_subcommand("bench", "measure prefill and decode throughput (llama-bench style)");
  add_model_args(sub, a->m);
  sub->add_option("-p,--n-prompt", a->prompt, "prefill sizes, comma-separated")->delimiter(',')->capture_default_str();
  sub->add_option("-n,--n-gen", a->gen, "decode lengths, comma-separated")->delimiter(',')->capture_default_str();
  sub->add_option("-d,--depth", a->depth, "context depths to decode at, comma-separated")->delimiter(',')->capture_default_str();
  sub->add_option("-r,--repetitions", a->reps, "repetitions of each test")->capture_default_str();
  sub->add_flag("--no-ceilings", a->no_ceilings, "skip measuring the copy bandwidth and matmul rate");
  sub->add_flag("--no-breakdown", a->no_breakdown, "skip the per-op breakdown of a decode step (GPU)");
  sub->add_option("--timeline", a->timeline,
                  "record N graphed decode steps per depth with CUPTI (GPU) and print the kernels of a step: duration, "
                  "gap before, share of the step period")
      ->capture_default_str();
  sub->add_flag("--json", a->json, "print one JSON object");
  sub->callback([a] { run_bench(*a); });
}

}  // namespace ropepp::cli
