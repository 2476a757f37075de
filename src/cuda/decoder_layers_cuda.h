// decoder_layers_cuda.h: maps Backend::decoder_layers (backend.h) onto the persistent decode kernel
// (kernels/decode_layers_persistent.cuh) when it applies: one token of one sequence, Hopper, shapes it serves.
#pragma once

#include <string>

#include "backend.h"
#include "decode_layers_persistent.cuh"

namespace ropepp {

struct PersistentDecodeLimits {
  int num_sms = 0;
  int max_smem = 0;        // opt-in shared memory per block
  int max_ctx = 65536;     // contexts above this run the separate kernels (CudaBackendOptions)
  int max_stages = 0;      // ring stages (weight run-ahead) at most; 0: as many as shared memory holds
};

// Fills `l` (all but part/sync, which come from the backend's scratch) and `plan`; returns false with `why`
// when the batch or the shapes are outside what the kernel serves.
bool persistent_decode_launch(const DecoderLayersParams& p, const PersistentDecodeLimits& lim, DecodeLayersLaunch* l,
                              DecodeLayersPlan* plan, std::string* why);

// Bytes the step must move at least: the layers' weights plus the K/V read (profiling's GB/s).
double persistent_decode_bytes(const DecoderLayersParams& p);

}  // namespace ropepp
