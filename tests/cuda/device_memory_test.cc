// RAII owners: device and pinned buffers, streams, events.
#include "cuda/device_memory.h"

#include <cstdint>
#include <numeric>
#include <vector>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "tests/cuda/cuda_test_util.h"

namespace m40llm::gpu {
namespace {

TEST(DeviceBuffer, RoundTripAndMove) {
  M40_REQUIRE_CUDA_DEVICE();
  std::vector<int32_t> host(1001);
  std::iota(host.begin(), host.end(), -500);
  M40_ASSERT_OK_AND_ASSIGN(DeviceBuffer<int32_t> a, DeviceBuffer<int32_t>::Allocate(host.size()));
  EXPECT_EQ(a.size(), host.size());
  EXPECT_EQ(a.bytes(), host.size() * sizeof(int32_t));
  M40_ASSERT_OK(a.CopyFromHost(host.data(), host.size()));

  DeviceBuffer<int32_t> b = std::move(a);
  EXPECT_EQ(a.get(), nullptr);  // NOLINT(bugprone-use-after-move): moved-from is empty
  EXPECT_TRUE(a.empty());
  std::vector<int32_t> back(host.size(), 0);
  M40_ASSERT_OK(b.CopyToHost(back.data(), back.size()));
  EXPECT_EQ(back, host);

  DeviceBuffer<int32_t> c;
  c = std::move(b);
  EXPECT_TRUE(b.empty());  // NOLINT(bugprone-use-after-move)
  EXPECT_EQ(c.size(), host.size());
  c.Reset();
  EXPECT_TRUE(c.empty());
}

TEST(DeviceBuffer, ZeroSizeAndOverlongCopy) {
  M40_REQUIRE_CUDA_DEVICE();
  M40_ASSERT_OK_AND_ASSIGN(DeviceBuffer<float> empty, DeviceBuffer<float>::Allocate(0));
  EXPECT_TRUE(empty.empty());
  M40_ASSERT_OK_AND_ASSIGN(DeviceBuffer<float> small, DeviceBuffer<float>::Allocate(4));
  std::vector<float> host(8, 1.0f);
  EXPECT_EQ(small.CopyFromHost(host.data(), host.size()).code(), absl::StatusCode::kOutOfRange);
}

TEST(DeviceBuffer, OutOfMemoryIsAStatusAndNotSticky) {
  M40_REQUIRE_CUDA_DEVICE();
  // 2^50 bytes: more than any card has.
  auto huge = DeviceBuffer<uint8_t>::Allocate(size_t{1} << 50);
  ASSERT_FALSE(huge.ok());
  EXPECT_EQ(huge.status().code(), absl::StatusCode::kResourceExhausted) << huge.status();
  EXPECT_TRUE(absl::StrContains(huge.status().message(), "cudaMalloc")) << huge.status();
  EXPECT_FALSE(IsStickyCudaFault(huge.status()));
  static_cast<void>(cudaGetLastError());
  // The context still works.
  M40_ASSERT_OK_AND_ASSIGN(DeviceBuffer<float> ok, DeviceBuffer<float>::Allocate(16));
  M40_ASSERT_OK(ok.FillBytes(0));
}

TEST(PinnedStreamEvent, AsyncRoundTripAndTiming) {
  M40_REQUIRE_CUDA_DEVICE();
  constexpr size_t kN = 1 << 20;
  M40_ASSERT_OK_AND_ASSIGN(PinnedBuffer<float> src, PinnedBuffer<float>::Allocate(kN));
  M40_ASSERT_OK_AND_ASSIGN(PinnedBuffer<float> dst, PinnedBuffer<float>::Allocate(kN));
  for (size_t i = 0; i < kN; ++i) {
    src[i] = static_cast<float>(i) * 0.5f;
    dst[i] = -1.0f;
  }
  M40_ASSERT_OK_AND_ASSIGN(DeviceBuffer<float> dev, DeviceBuffer<float>::Allocate(kN));
  M40_ASSERT_OK_AND_ASSIGN(CudaStream stream, CudaStream::Create());
  M40_ASSERT_OK_AND_ASSIGN(CudaEvent start, CudaEvent::Create(cudaEventDefault));
  M40_ASSERT_OK_AND_ASSIGN(CudaEvent stop, CudaEvent::Create(cudaEventDefault));
  M40_ASSERT_OK(start.Record(stream.get()));
  M40_ASSERT_OK(dev.CopyFromHostAsync(src.data(), kN, stream.get()));
  M40_ASSERT_OK(dev.CopyToHostAsync(dst.data(), kN, stream.get()));
  M40_ASSERT_OK(stop.Record(stream.get()));
  M40_ASSERT_OK(stop.Synchronize());
  M40_ASSERT_OK(stream.Synchronize());
  for (size_t i = 0; i < kN; ++i) ASSERT_EQ(dst[i], src[i]) << i;
  M40_ASSERT_OK_AND_ASSIGN(float ms, CudaEvent::ElapsedMs(start, stop));
  EXPECT_GE(ms, 0.0f);

  // A second stream waits on an event of the first.
  M40_ASSERT_OK_AND_ASSIGN(CudaStream other, CudaStream::Create());
  M40_ASSERT_OK_AND_ASSIGN(CudaEvent sync, CudaEvent::Create());
  M40_ASSERT_OK(sync.Record(stream.get()));
  M40_ASSERT_OK(sync.WaitOn(other.get()));
  M40_ASSERT_OK(other.Synchronize());

  PinnedBuffer<float> moved = std::move(src);
  EXPECT_EQ(src.data(), nullptr);  // NOLINT(bugprone-use-after-move)
  EXPECT_EQ(moved.size(), kN);
}

}  // namespace
}  // namespace m40llm::gpu
