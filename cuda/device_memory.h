// Move-only RAII owners for CUDA resources: device memory (DeviceBuffer),
// page-locked host memory (PinnedBuffer), streams (CudaStream) and events
// (CudaEvent). Kernels and launchers take the raw pointers these hand out and
// never own anything.
//
// Destructors release quietly: a release fails only when the context is
// already broken (a sticky fault), and then nothing is left to do. The Engine
// frees these in its teardown order after synchronising.
// C++17: CUDA sources may include this header.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "cuda/cuda_check.h"

namespace m40llm::gpu {

// `count` elements of T in device memory (cudaMalloc), uninitialised.
template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  ~DeviceBuffer() { Reset(); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& other) noexcept
      : ptr_(std::exchange(other.ptr_, nullptr)), count_(std::exchange(other.count_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    if (this != &other) {
      Reset();
      ptr_ = std::exchange(other.ptr_, nullptr);
      count_ = std::exchange(other.count_, 0);
    }
    return *this;
  }

  // Allocates `count` elements (count == 0 gives an empty buffer).
  [[nodiscard]] static absl::StatusOr<DeviceBuffer> Allocate(size_t count) {
    DeviceBuffer buf;
    if (count == 0) return buf;
    void* p = nullptr;
    CUDA_RETURN_IF_ERROR(cudaMalloc(&p, count * sizeof(T)));
    buf.ptr_ = static_cast<T*>(p);
    buf.count_ = count;
    return buf;
  }

  T* get() const { return ptr_; }
  size_t size() const { return count_; }
  size_t bytes() const { return count_ * sizeof(T); }
  bool empty() const { return count_ == 0; }

  // Synchronous copies of the first n elements (n <= size()).
  [[nodiscard]] absl::Status CopyFromHost(const T* src, size_t n) {
    if (n > count_) return TooMany();
    if (n == 0) return absl::OkStatus();
    CUDA_RETURN_IF_ERROR(cudaMemcpy(ptr_, src, n * sizeof(T), cudaMemcpyHostToDevice));
    return absl::OkStatus();
  }
  [[nodiscard]] absl::Status CopyToHost(T* dst, size_t n) const {
    if (n > count_) return TooMany();
    if (n == 0) return absl::OkStatus();
    CUDA_RETURN_IF_ERROR(cudaMemcpy(dst, ptr_, n * sizeof(T), cudaMemcpyDeviceToHost));
    return absl::OkStatus();
  }
  // Stream-ordered copies: the host memory must stay valid until the stream
  // passes the copy, and must be pinned for the copy to overlap other work.
  [[nodiscard]] absl::Status CopyFromHostAsync(const T* src, size_t n, cudaStream_t stream) {
    if (n > count_) return TooMany();
    if (n == 0) return absl::OkStatus();
    CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(ptr_, src, n * sizeof(T), cudaMemcpyHostToDevice, stream));
    return absl::OkStatus();
  }
  [[nodiscard]] absl::Status CopyToHostAsync(T* dst, size_t n, cudaStream_t stream) const {
    if (n > count_) return TooMany();
    if (n == 0) return absl::OkStatus();
    CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst, ptr_, n * sizeof(T), cudaMemcpyDeviceToHost, stream));
    return absl::OkStatus();
  }
  // Sets every byte of the buffer to `byte` (synchronous).
  [[nodiscard]] absl::Status FillBytes(int byte) {
    if (count_ == 0) return absl::OkStatus();
    CUDA_RETURN_IF_ERROR(cudaMemset(ptr_, byte, bytes()));
    return absl::OkStatus();
  }

  // Frees the memory now; the buffer becomes empty.
  void Reset() {
    if (ptr_ != nullptr) static_cast<void>(cudaFree(ptr_));
    ptr_ = nullptr;
    count_ = 0;
  }

 private:
  static absl::Status TooMany() {
    return absl::OutOfRangeError("copy of more elements than the DeviceBuffer holds");
  }

  T* ptr_ = nullptr;
  size_t count_ = 0;
};

// `count` elements of T in page-locked host memory (cudaHostAlloc), so that
// stream-ordered copies overlap kernels. `flags` are cudaHostAlloc's:
// cudaHostAllocDefault, cudaHostAllocPortable, cudaHostAllocMapped,
// cudaHostAllocWriteCombined (fast host writes, very slow host reads).
template <typename T>
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  ~PinnedBuffer() { Reset(); }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  PinnedBuffer(PinnedBuffer&& other) noexcept
      : ptr_(std::exchange(other.ptr_, nullptr)), count_(std::exchange(other.count_, 0)) {}
  PinnedBuffer& operator=(PinnedBuffer&& other) noexcept {
    if (this != &other) {
      Reset();
      ptr_ = std::exchange(other.ptr_, nullptr);
      count_ = std::exchange(other.count_, 0);
    }
    return *this;
  }

  [[nodiscard]] static absl::StatusOr<PinnedBuffer> Allocate(
      size_t count, unsigned int flags = cudaHostAllocDefault) {
    PinnedBuffer buf;
    if (count == 0) return buf;
    void* p = nullptr;
    CUDA_RETURN_IF_ERROR(cudaHostAlloc(&p, count * sizeof(T), flags));
    buf.ptr_ = static_cast<T*>(p);
    buf.count_ = count;
    return buf;
  }

  T* data() const { return ptr_; }
  size_t size() const { return count_; }
  size_t bytes() const { return count_ * sizeof(T); }
  bool empty() const { return count_ == 0; }
  T& operator[](size_t i) const { return ptr_[i]; }
  T* begin() const { return ptr_; }
  T* end() const { return ptr_ + count_; }

  // Frees the memory now; the buffer becomes empty.
  void Reset() {
    if (ptr_ != nullptr) static_cast<void>(cudaFreeHost(ptr_));
    ptr_ = nullptr;
    count_ = 0;
  }

 private:
  T* ptr_ = nullptr;
  size_t count_ = 0;
};

// An owned CUDA stream. The default-constructed one is empty; get() then
// returns the legacy default stream (nullptr).
class CudaStream {
 public:
  CudaStream() = default;
  ~CudaStream() { Reset(); }
  CudaStream(const CudaStream&) = delete;
  CudaStream& operator=(const CudaStream&) = delete;
  CudaStream(CudaStream&& other) noexcept : stream_(std::exchange(other.stream_, nullptr)) {}
  CudaStream& operator=(CudaStream&& other) noexcept {
    if (this != &other) {
      Reset();
      stream_ = std::exchange(other.stream_, nullptr);
    }
    return *this;
  }

  // `flags`: cudaStreamNonBlocking (no implicit sync with the legacy default
  // stream) or cudaStreamDefault; lower `priority` numbers run first.
  [[nodiscard]] static absl::StatusOr<CudaStream> Create(unsigned int flags = cudaStreamNonBlocking,
                                                         int priority = 0) {
    CudaStream s;
    CUDA_RETURN_IF_ERROR(cudaStreamCreateWithPriority(&s.stream_, flags, priority));
    return s;
  }

  cudaStream_t get() const { return stream_; }

  // Blocks until all work queued so far has finished; reports kernel faults.
  [[nodiscard]] absl::Status Synchronize() const {
    CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
    return absl::OkStatus();
  }

  void Reset() {
    if (stream_ != nullptr) static_cast<void>(cudaStreamDestroy(stream_));
    stream_ = nullptr;
  }

 private:
  cudaStream_t stream_ = nullptr;
};

// An owned CUDA event, for stream ordering and, when created without
// cudaEventDisableTiming, for timing.
class CudaEvent {
 public:
  CudaEvent() = default;
  ~CudaEvent() { Reset(); }
  CudaEvent(const CudaEvent&) = delete;
  CudaEvent& operator=(const CudaEvent&) = delete;
  CudaEvent(CudaEvent&& other) noexcept : event_(std::exchange(other.event_, nullptr)) {}
  CudaEvent& operator=(CudaEvent&& other) noexcept {
    if (this != &other) {
      Reset();
      event_ = std::exchange(other.event_, nullptr);
    }
    return *this;
  }

  // Default flags make a synchronisation-only event (cheapest); pass
  // cudaEventDefault for one that can time.
  [[nodiscard]] static absl::StatusOr<CudaEvent> Create(
      unsigned int flags = cudaEventDisableTiming) {
    CudaEvent e;
    CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&e.event_, flags));
    return e;
  }

  cudaEvent_t get() const { return event_; }

  [[nodiscard]] absl::Status Record(cudaStream_t stream) const {
    CUDA_RETURN_IF_ERROR(cudaEventRecord(event_, stream));
    return absl::OkStatus();
  }
  [[nodiscard]] absl::Status Synchronize() const {
    CUDA_RETURN_IF_ERROR(cudaEventSynchronize(event_));
    return absl::OkStatus();
  }
  // Makes `stream` wait for this event's last record.
  [[nodiscard]] absl::Status WaitOn(cudaStream_t stream) const {
    CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(stream, event_, 0));
    return absl::OkStatus();
  }
  // Milliseconds between two recorded timing events (both completed).
  [[nodiscard]] static absl::StatusOr<float> ElapsedMs(const CudaEvent& start,
                                                       const CudaEvent& end) {
    float ms = 0;
    CUDA_RETURN_IF_ERROR(cudaEventElapsedTime(&ms, start.event_, end.event_));
    return ms;
  }

  void Reset() {
    if (event_ != nullptr) static_cast<void>(cudaEventDestroy(event_));
    event_ = nullptr;
  }

 private:
  cudaEvent_t event_ = nullptr;
};

}  // namespace m40llm::gpu
