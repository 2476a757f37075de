// op_breakdown.h: per-op GPU time tables from Backend::take_profile (bench's decode and prefill breakdowns,
// perplexity --profile): ops grouped by name in first-seen order.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "backend.h"

namespace ropepp::cli {

// Rows {op, calls, us, bytes, GBps} per op name, each averaged over `reps` runs; their sum in *total_us.
nlohmann::json aggregate_ops(const std::vector<OpTiming>& timings, int reps, double* total_us);

// The rows as a Markdown table under `title` (with the total).
std::string format_breakdown(const std::string& title, const nlohmann::json& rows, double total_us);

}  // namespace ropepp::cli
