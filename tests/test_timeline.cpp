// test_timeline.cpp: how `ropepp bench --timeline` takes a recorded GPU timeline apart into decode steps
// (gpu_timeline.h), on synthetic spans with known periods, gaps and overlaps.
#include <gtest/gtest.h>

#include "gpu_timeline.h"

namespace ropepp {
namespace {

GpuSpan kernel(const char* name, uint64_t start_us, uint64_t end_us, int64_t blocks = 1) {
  return {name, start_us * 1000, end_us * 1000, blocks, true};
}

// Steps of 100 µs: embed [0, 5], matvec [4, 30] (starts 1 µs early), attention [32, 40] (2 µs gap), a copy
// [90, 91] before the next step's embed at 100.
std::vector<GpuSpan> steps(int n, uint64_t t0 = 1000) {
  std::vector<GpuSpan> v;
  for (int i = 0; i < n; ++i) {
    const uint64_t b = t0 + 100 * uint64_t(i);
    v.push_back(kernel("embed", b, b + 5));
    v.push_back(kernel("matvec<1>", b + 4, b + 30, 256));
    v.push_back(kernel("attention", b + 32, b + 40, 4));
    v.push_back({"memcpy HtoD", (b + 90) * 1000, (b + 91) * 1000, 8, false});
  }
  return v;
}

TEST(Timeline, StepsPeriodGapsAndShares) {
  auto v = steps(6);
  // a partial step before the window's first embed is ignored
  v.insert(v.begin(), kernel("matvec<1>", 990, 999));
  const auto t = analyze_decode_timeline(v, 512);
  ASSERT_FALSE(t.contains("error")) << t.dump();
  EXPECT_EQ(t["depth"].get<int>(), 512);
  EXPECT_EQ(t["steps"].get<size_t>(), 4u);  // 6 found, the first has no step before it, the last is dropped
  EXPECT_NEAR(t["period_us"].get<double>(), 100.0, 1e-9);
  ASSERT_EQ(t["kernels_per_step"].get<size_t>(), 3u);
  const auto& s = t["sequence"];
  EXPECT_EQ(s[1]["name"].get<std::string>(), "matvec<1>");
  EXPECT_EQ(s[1]["blocks"].get<int64_t>(), 256);
  EXPECT_NEAR(s[0]["gap_us"].get<double>(), 9.0, 1e-9);  // after the previous step's copy at 91
  EXPECT_NEAR(s[1]["gap_us"].get<double>(), -1.0, 1e-9);
  EXPECT_NEAR(s[1]["delta_us"].get<double>(), 25.0, 1e-9);
  EXPECT_NEAR(s[2]["gap_us"].get<double>(), 2.0, 1e-9);
  EXPECT_NEAR(s[2]["start_us"].get<double>(), 32.0, 1e-9);
  double sum = 0;
  for (const auto& r : t["by_name"]) sum += r["delta_us"].get<double>();
  EXPECT_NEAR(sum, 100.0, 1e-9);  // the shares add up to the period
  ASSERT_EQ(t["by_name"].size(), 4u);
  EXPECT_EQ(t["by_name"][1]["name"].get<std::string>(), "matvec<1> [256]");
  EXPECT_NEAR(t["by_name"][1]["dur_us"].get<double>(), 26.0, 1e-9);
  EXPECT_NEAR(t["by_name"][3]["delta_us"].get<double>(), 51.0, 1e-9);  // the copy: 91 - 40
  EXPECT_FALSE(format_decode_timeline(t).empty());
}

TEST(Timeline, CopiesMayDifferBetweenSteps) {
  auto v = steps(6);
  v.insert(v.begin() + 7, {"memcpy HtoD", 1189'000, 1189'500, 4, false});  // step 2 uploads one more
  const auto t = analyze_decode_timeline(v, 0);
  ASSERT_FALSE(t.contains("error")) << t.dump();
  EXPECT_NEAR(t["by_name"][3]["per_step"].get<double>(), 1.25, 1e-9);  // 5 copies in 4 steps
  double sum = 0;
  for (const auto& r : t["by_name"]) sum += r["delta_us"].get<double>();
  EXPECT_NEAR(sum, 100.0, 1e-9);
}

TEST(Timeline, UnequalStepsOrTooFewAreErrors) {
  auto v = steps(5);
  v.insert(v.begin() + 6, kernel("extra", 1120, 1121));  // step 2 has one kernel more
  EXPECT_TRUE(analyze_decode_timeline(v, 0).contains("error"));
  EXPECT_TRUE(analyze_decode_timeline(steps(2), 0).contains("error"));
  EXPECT_TRUE(analyze_decode_timeline({}, 0).contains("error"));
  EXPECT_NE(format_decode_timeline(analyze_decode_timeline({}, 0)).find("timeline:"), std::string::npos);
}

}  // namespace
}  // namespace ropepp
