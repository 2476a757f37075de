// test_cublas_library.cpp: cuBLAS is loaded at run time (src/cuda/cublas_library.h). Loading and binding need no
// GPU, so this runs wherever the CUDA backend is built: every entry point bound, and the status functions answer.
#include <gtest/gtest.h>

#ifdef ROPEPP_HAS_CUDA
#include <string>

#include "cublas_library.h"

namespace ropepp {

TEST(CublasLibrary, LoadsEveryEntryPoint) {
  cublas_load_async();
  cublas_load_async();  // a second start is the same load
  const CublasApi* api = nullptr;
  ASSERT_NO_THROW(api = &cublas_api());
  EXPECT_EQ(api, &cublas_api()) << "one table per process";
  EXPECT_NE(api->create, nullptr);
  EXPECT_NE(api->destroy, nullptr);
  EXPECT_NE(api->set_stream, nullptr);
  EXPECT_NE(api->set_workspace, nullptr);
  EXPECT_NE(api->gemm_ex, nullptr);
  ASSERT_NE(api->status_name, nullptr);
  ASSERT_NE(api->status_string, nullptr);
  EXPECT_EQ(std::string(api->status_name(CUBLAS_STATUS_SUCCESS)), "CUBLAS_STATUS_SUCCESS");
  EXPECT_EQ(std::string(api->status_name(CUBLAS_STATUS_NOT_INITIALIZED)), "CUBLAS_STATUS_NOT_INITIALIZED");
  EXPECT_FALSE(std::string(api->status_string(CUBLAS_STATUS_INVALID_VALUE)).empty());
}

}  // namespace ropepp
#else
TEST(CublasLibrary, NotBuilt) { GTEST_SKIP() << "built without the CUDA backend"; }
#endif
