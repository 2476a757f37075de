// kernel_timeline.h: a timeline of what the GPU ran (kernels and memory copies, each with its start and end on
// the device clock), recorded with CUPTI's activity API — what Nsight Systems shows, for machines without it.
// Kernels inside CUDA graphs are recorded one by one, so the graphed decode step can be taken apart (ropepp
// bench --timeline). CUPTI is loaded at run time (dlopen of libcupti.so): a machine without it gets a clear
// error from timeline_start, and ropepp runs without it otherwise.
#pragma once

#include <cstdint>
#include <vector>

#include "gpu_timeline.h"

namespace ropepp {

// Starts recording every kernel and memory copy of this process (loads CUPTI on the first call). Throws with the
// reason (no libcupti, a CUPTI error) when it cannot. Best called before the CUDA context and graphs exist.
void timeline_start();
// CUPTI's clock now (the clock of GpuSpan's timestamps): brackets a part of the recording.
uint64_t timeline_now();
// Stops recording and returns the spans since timeline_start, sorted by start.
std::vector<GpuSpan> timeline_stop();

}  // namespace ropepp
