// gpu_timeline.cpp: see gpu_timeline.h.
#include "gpu_timeline.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <map>

namespace ropepp {

nlohmann::json analyze_decode_timeline(const std::vector<GpuSpan>& spans, int depth, const std::string& step_first) {
  // A step starts at each kernel whose name contains `step_first` (the embedding: each step's graph starts there);
  // a memory copy before it (the step's inputs) belongs to the step before, where it ran.
  const auto first_of_step = [&](const GpuSpan& s) {
    return s.is_kernel && s.name.find(step_first) != std::string::npos;
  };
  std::vector<std::vector<const GpuSpan*>> steps;
  for (const auto& s : spans) {
    if (first_of_step(s)) steps.emplace_back();
    if (!steps.empty()) steps.back().push_back(&s);
  }
  if (steps.size() < 3)
    return {{"error", fmt::format("{} steps (kernels named *{}*) recorded of {} spans, expected ≥ 3", steps.size(),
                                  step_first, spans.size())}};
  steps.pop_back();  // the last may lack its trailing copies
  // Steps must run the same kernels; their copies may differ (an upload only when its data changed).
  auto kernels_of = [](const std::vector<const GpuSpan*>& st) {
    return size_t(std::count_if(st.begin(), st.end(), [](const GpuSpan* s) { return s->is_kernel; }));
  };
  const size_t n = kernels_of(steps.front());
  for (const auto& st : steps)
    if (kernels_of(st) != n)
      return {{"error", fmt::format("steps of {} and {} kernels: not the same sequence", n, kernels_of(st))}};
  const double S = double(steps.size() - 1);  // the first step has no step before it for gap/period
  std::vector<double> start(n), dur(n), gap(n), delta(n);
  std::vector<std::string> order;                   // by-name rows in first-seen order
  std::map<std::string, std::array<double, 3>> by;  // count, dur, delta (sums over the steps)
  auto add = [&](const std::string& key, double d, double dl) {
    if (!by.count(key)) order.push_back(key);
    auto& b = by[key];
    b[0] += 1, b[1] += d, b[2] += dl;
  };
  double period = 0;
  for (size_t k = 1; k < steps.size(); ++k) {
    const auto& st = steps[k];
    period += double(st.front()->start_ns - steps[k - 1].front()->start_ns) / 1e3;
    uint64_t prev_end = steps[k - 1].back()->end_ns;
    size_t i = 0;
    for (const GpuSpan* sp : st) {
      const GpuSpan& s = *sp;
      const double d = double(s.end_ns - s.start_ns) / 1e3, dl = (double(s.end_ns) - double(prev_end)) / 1e3;
      if (s.is_kernel) {
        start[i] += double(s.start_ns - st.front()->start_ns) / 1e3;
        dur[i] += d;
        gap[i] += (double(s.start_ns) - double(prev_end)) / 1e3;
        delta[i] += dl;
        add(fmt::format("{} [{}]", s.name, s.blocks), d, dl);
        ++i;
      } else {
        add(s.name, d, dl);
      }
      prev_end = s.end_ns;
    }
  }
  nlohmann::json seq = nlohmann::json::array();
  size_t i = 0;
  for (const GpuSpan* sp : steps[1]) {
    if (!sp->is_kernel) continue;
    seq.push_back({{"name", sp->name}, {"blocks", sp->blocks}, {"start_us", start[i] / S}, {"dur_us", dur[i] / S},
                   {"gap_us", gap[i] / S}, {"delta_us", delta[i] / S}});
    ++i;
  }
  nlohmann::json by_name = nlohmann::json::array();
  for (const auto& key : order)
    by_name.push_back({{"name", key}, {"per_step", by[key][0] / S}, {"dur_us", by[key][1] / S},
                       {"delta_us", by[key][2] / S}});
  return {{"depth", depth},          {"steps", steps.size() - 1}, {"period_us", period / S},
          {"kernels_per_step", n},   {"sequence", seq},           {"by_name", by_name}};
}

std::string format_decode_timeline(const nlohmann::json& t) {
  if (t.contains("error")) return fmt::format("timeline: {}\n", t["error"].get<std::string>());
  std::string o = fmt::format(
      "\ntimeline of {} graphed decode steps at depth {} (CUPTI): step period {:.1f} us, {} kernels per step\n",
      t["steps"].get<size_t>(), t["depth"].get<int>(), t["period_us"].get<double>(),
      t["kernels_per_step"].get<size_t>());
  auto clip = [](std::string s) { return s.size() > 80 ? s.substr(0, 77) + "..." : s; };
  o += fmt::format("| {:<80} | {:>5} | {:>9} | {:>9} |\n", "kernel [blocks] or copy", "/step", "busy us", "step us");
  o += fmt::format("| {:-<80} | {:->5} | {:->9} | {:->9} |\n", "", "", "", "");
  for (const auto& r : t["by_name"])
    o += fmt::format("| {:<80} | {:>5.2f} | {:>9.1f} | {:>9.1f} |\n", clip(r["name"].get<std::string>()),
                     r["per_step"].get<double>(), r["dur_us"].get<double>(), r["delta_us"].get<double>());
  o += "(step us: the sum of each span's end minus the previous span's end, i.e. its share of the step period)\n";
  o += fmt::format("| {:>3} | {:<60} | {:>7} | {:>8} | {:>7} | {:>7} | {:>7} |\n", "#", "kernel", "blocks", "start",
                   "dur", "gap", "delta");
  o += fmt::format("| {:->3} | {:-<60} | {:->7} | {:->8} | {:->7} | {:->7} | {:->7} |\n", "", "", "", "", "", "", "");
  int i = 0;
  for (const auto& r : t["sequence"]) {
    std::string name = r["name"].get<std::string>();
    if (name.size() > 60) name = name.substr(0, 57) + "...";
    o += fmt::format("| {:>3} | {:<60} | {:>7} | {:>8.1f} | {:>7.2f} | {:>7.2f} | {:>7.2f} |\n", i++, name,
                     r["blocks"].get<int64_t>(), r["start_us"].get<double>(), r["dur_us"].get<double>(),
                     r["gap_us"].get<double>(), r["delta_us"].get<double>());
  }
  return o;
}

}  // namespace ropepp
