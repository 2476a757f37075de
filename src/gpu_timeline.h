// gpu_timeline.h: spans of a GPU timeline (what ran on the device, when: src/cuda/kernel_timeline.h records them
// with CUPTI) and how `ropepp bench --timeline N` takes N graphed decode steps apart: the step period, and per
// kernel of the step its duration, the gap after the span before it (negative: it started early, programmatic
// dependent launch) and how far it moved the step's end (its end minus the previous span's end: these add up
// to the step).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace ropepp {

struct GpuSpan {
  std::string name;       // kernel name (demangled, without its parameter list) or "memcpy HtoD" / "DtoH" / "DtoD"
  uint64_t start_ns = 0;  // device timestamps (CUPTI's clock)
  uint64_t end_ns = 0;
  int64_t blocks = 0;     // kernel grid size (blocks); memcpy: bytes
  bool is_kernel = false;
};

// spans: the recording of consecutive decode steps (each the same sequence of kernels), sorted by start; a step
// begins with a kernel whose name contains step_first.
// Steps must run the same kernels; memory copies may differ between steps. Returns {depth, steps, period_us,
// kernels_per_step, sequence: the kernels [{name, blocks, start_us, dur_us, gap_us, delta_us}], by_name:
// [{name ("kernel [blocks]" or the copy's name), per_step, dur_us, delta_us}]} (µs means over the steps; start_us
// from the step's first kernel; the deltas of kernels and copies add up to the period), or {error} when the
// recording does not split into equal steps.
nlohmann::json analyze_decode_timeline(const std::vector<GpuSpan>& spans, int depth,
                                       const std::string& step_first = "embed");

// The analysis as text: the summary line, the by-name table and the sequence of one step.
std::string format_decode_timeline(const nlohmann::json& t);

}  // namespace ropepp
