// cublas_library.h: cuBLAS, loaded at run time (dlopen) instead of linked. Linking it made every ropepp process,
// CPU-only ones included, pay libcublasLt's load (a 540 MB library: 0.13 s on the device machine, 0.33 s here)
// before main(); now the CUDA backend starts the load on a thread of its own and creates its CUDA context
// meanwhile. The table holds the few entry points the backend calls.
#pragma once

#include <cublas_v2.h>

namespace ropepp {

struct CublasApi {
  decltype(&cublasCreate_v2) create;
  decltype(&cublasDestroy_v2) destroy;
  decltype(&cublasSetStream_v2) set_stream;
  decltype(&cublasSetWorkspace_v2) set_workspace;
  // cublasGemmEx with 32-bit sizes (the header overloads the name in C++)
  cublasStatus_t (*gemm_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void*,
                            const void*, cudaDataType, int, const void*, cudaDataType, int, const void*, void*,
                            cudaDataType, int, cublasComputeType_t, cublasGemmAlgo_t);
  decltype(&cublasGetStatusName) status_name;
  decltype(&cublasGetStatusString) status_string;
};

// Starts loading cuBLAS on a background thread (once per process; later calls return at once).
void cublas_load_async();

// The loaded entry points: waits for the load (starting it if needed). Throws Error naming the library and the
// loader's message when cuBLAS cannot be loaded or lacks an entry point.
const CublasApi& cublas_api();

}  // namespace ropepp
