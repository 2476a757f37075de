// op_breakdown.cpp: see op_breakdown.h.
#include "op_breakdown.h"

#include <fmt/format.h>

#include <algorithm>
#include <map>

namespace ropepp::cli {

nlohmann::json aggregate_ops(const std::vector<OpTiming>& timings, int reps, double* total_us) {
  reps = std::max(reps, 1);
  std::vector<std::string> order;
  std::map<std::string, OpTiming> by_op;
  std::map<std::string, int> calls;
  for (const OpTiming& t : timings) {
    if (!by_op.count(t.op)) order.push_back(t.op), by_op[t.op] = {t.op, 0, 0};
    by_op[t.op].us += t.us / reps;
    by_op[t.op].bytes += t.bytes / reps;
    calls[t.op]++;
  }
  nlohmann::json rows = nlohmann::json::array();
  *total_us = 0;
  for (const std::string& op : order) {
    const OpTiming& t = by_op[op];
    *total_us += t.us;
    rows.push_back({{"op", op}, {"calls", calls[op] / reps}, {"us", t.us}, {"bytes", t.bytes},
                    {"GBps", t.us > 0 ? t.bytes / t.us / 1e3 : 0.0}});
  }
  return rows;
}

std::string format_breakdown(const std::string& title, const nlohmann::json& rows, double total_us) {
  std::string s = fmt::format("\n{}: {:.1f} µs\n", title, total_us);
  s += fmt::format("| {:<40} | {:>5} | {:>9} | {:>5} | {:>10} | {:>8} |\n", "op", "calls", "µs", "%", "MB", "GB/s");
  s += fmt::format("| {:-<40} | {:->5} | {:->9} | {:->5} | {:->10} | {:->8} |\n", "", "", "", "", "", "");
  for (const auto& b : rows)
    s += fmt::format("| {:<40} | {:>5} | {:>9.1f} | {:>5.1f} | {:>10.2f} | {:>8.0f} |\n", b["op"].get<std::string>(),
                     b["calls"].get<int>(), b["us"].get<double>(),
                     100 * b["us"].get<double>() / std::max(total_us, 1e-9), b["bytes"].get<double>() / 1e6,
                     b["GBps"].get<double>());
  return s;
}

}  // namespace ropepp::cli
