// Single-producer/single-consumer rings of fixed-size POD records, laid out
// in one block of host-pinned memory that the host and the decoder (the CPU
// host decoder now, the persistent CUDA kernel later) share.
//
// Header-only. Must stay valid C++17 and compile under nvcc for host and
// device: CUDA sources include it. Host operations use GCC __atomic builtins
// (not std::atomic_ref, which is C++20); device operations use volatile
// accesses and __threadfence_system(), because sm_52 has no system-scope
// atomics. The host operations are ordinary (so implicitly __host__)
// functions and are deliberately NOT hidden behind !__CUDA_ARCH__: nvcc's
// device pass also parses the host functions of a .cu file, so hiding them
// would break host code in .cu files that pushes commands or allocates the
// block. Calling one from device code is a compile error either way.
//
// ---------------------------------------------------------------------------
// Memory-ordering contract
// ---------------------------------------------------------------------------
// Ownership. Each ring has exactly one producer and one consumer, each of
// them a single thread (on the device: ONE thread of the persistent kernel).
//   head  written only by the producer: records [tail, head) are published.
//   tail  written only by the consumer: records before tail are consumed and
//         their slots may be reused.
// Both are free-running uint32_t counters; slot = index & (N - 1). The
// invariant 0 <= head - tail <= N (unsigned, modulo 2^32) always holds, so
// the difference is exact across the 2^32 wrap as long as N <= 2^31.
//
// Host <-> host (the host decoder; tests):
//   producer: load tail (acquire) -> write slot -> store head (release)
//   consumer: load head (acquire) -> read slot  -> store tail (release)
//   The producer's release of head synchronises with the consumer's acquire
//   of it, so the slot contents happen-before the consumer's copy. The
//   consumer's release of tail synchronises with the producer's acquire of
//   it, so the consumer's copy-out of a slot happens-before the producer
//   overwrites that slot. Each side reads its own index relaxed: only it
//   writes that index.
//
// Host <-> device (mapped pinned memory over PCIe):
//   device producer: volatile load tail; __threadfence_system();
//                    volatile stores of the slots; __threadfence_system();
//                    volatile store head.
//   device consumer: volatile load head; __threadfence_system();
//                    volatile loads of the slots; __threadfence_system();
//                    volatile store tail.
//   __threadfence_system() (membar.sys on sm_52, a sys-scope fence on
//   newer parts) makes every load and store this thread issued before it
//   performed system-wide, host threads included, before any access it
//   issues after it. It orders loads as well as stores, so it also keeps
//   a load before a later store, which the consumer side relies on. Hence
//   a host consumer that acquires a head value written by the device also
//   sees the slots written before it, and a device consumer has finished
//   reading a slot before the host can see the tail that frees it. The
//   fence after the index load orders that load before the slot accesses
//   that depend on it (the CUDA model does not promise to respect control
//   dependencies).
//   `volatile` makes every access a real memory instruction: the compiler
//   may not keep an index in a register across polls, nor serve a read
//   from the L1 (the two caching optimisations the CUDA guide says volatile
//   turns off), nor merge or drop accesses. On the host side, x86 keeps
//   stores in program order and snoops the GPU's PCIe reads and writes,
//   and the acquire and release builtins stop the compiler from reordering
//   around them; on weaker hosts they also emit the needed barriers.
//   The block must NOT be allocated write-combined
//   (cudaHostAllocWriteCombined): WC stores on x86 may pass one another,
//   and a release store emits no sfence to drain them.
//
// No overwrite when full. The producer computes the free space as
// N - (head - tail) from its own exact head and an acquired tail. The tail
// it sees can only be older (smaller) than the real one, because only the
// consumer advances it and it never moves back; an old tail under-estimates
// the free space, never over-estimates it. So a slot is written only after
// the consumer has released it. Symmetrically, an old head makes the
// consumer see fewer records, never an unpublished one.
//
// No torn indices. Each index is a naturally aligned 32-bit word on its own
// 64-byte line, with a single writer and no read-modify-write. Aligned
// 32-bit __atomic loads and stores are single-copy atomic on the host; a
// volatile 32-bit device access is one 4-byte memory transaction that lies
// within one PCIe dword and one CPU cache line, so a reader observes either
// the old or the new value, never a mix. Records need no such property:
// the protocol never lets a slot be read and written at the same time.
// ---------------------------------------------------------------------------
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <thread>
#include <type_traits>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "persistent/config.h"
#include "persistent/protocol.h"

namespace m40llm {

namespace ring_internal {

// Indices each sit on their own line so that the producer's stores of head
// and the consumer's stores of tail do not false-share a CPU cache line, and
// a device poll of one index is one small PCIe read.
inline constexpr size_t kLineBytes = 64;

// One ring index padded to a full line.
struct alignas(kLineBytes) RingIndex {
  uint32_t value;
};
static_assert(sizeof(RingIndex) == kLineBytes, "index must fill exactly one line");

#if defined(__CUDACC__)
// The widest word a record can be moved in with plain volatile accesses.
template <typename Record>
using CopyWord = typename std::conditional<alignof(Record) >= 8 && sizeof(Record) % 8 == 0,
                                           unsigned long long, uint32_t>::type;
#endif

// ----- Host-only helpers.
inline uint32_t LoadRelaxed(const uint32_t* p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
inline uint32_t LoadAcquire(const uint32_t* p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
inline void StoreRelaxed(uint32_t* p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
inline void StoreRelease(uint32_t* p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

static_assert(__atomic_always_lock_free(sizeof(uint32_t), 0),
              "ring indices need lock-free 32-bit atomics: the device cannot take a host lock");

// Spin-then-yield-then-sleep waiting for the blocking helpers, with a
// deadline. A brief spin catches a peer that is about to publish; yielding
// next gives the peer the core when they share one; short sleeps bound the
// CPU burnt while the peer is idle for long.
class Backoff {
 public:
  explicit Backoff(std::chrono::nanoseconds timeout) {
    const auto now = std::chrono::steady_clock::now();
    const auto room = std::chrono::steady_clock::time_point::max() - now;
    deadline_ = timeout >= room ? std::chrono::steady_clock::time_point::max() : now + timeout;
  }

  // True once the deadline has passed.
  bool Expired() const { return std::chrono::steady_clock::now() >= deadline_; }

  // Waits a little, longer the more often it has been called.
  void Pause() {
    if (rounds_ < kSpinRounds) {
      ++rounds_;
#if defined(__x86_64__) || defined(__i386__)
      _mm_pause();
#elif defined(__aarch64__)
      asm volatile("yield");
#endif
    } else if (rounds_ < kSpinRounds + kYieldRounds) {
      ++rounds_;
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(kSleep);
    }
  }

 private:
  static constexpr int kSpinRounds = 64;
  static constexpr int kYieldRounds = 256;
  static constexpr std::chrono::microseconds kSleep{50};

  std::chrono::steady_clock::time_point deadline_;
  int rounds_ = 0;
};

// Stop predicate for the blocking helpers that never asks to stop.
struct NeverStop {
  bool operator()() const { return false; }
};

}  // namespace ring_internal

// A single-producer/single-consumer ring of N `Record`s. A POD meant to live
// in shared (host-pinned, device-mapped) memory and to start zeroed; use it
// only through its methods. Layout: head on line 0, tail on line 1, then
// records[N] from byte 128.
template <typename Record, uint32_t N>
struct SpscRing {
  static_assert(N >= 1 && (N & (N - 1)) == 0, "N must be a power of two");
  static_assert(N <= (uint32_t{1} << 31), "head - tail must stay unambiguous modulo 2^32");
  static_assert(std::is_trivially_copyable<Record>::value, "records are copied bytewise");
  static_assert(std::is_standard_layout<Record>::value, "records are shared with device code");
  static_assert(alignof(Record) <= ring_internal::kLineBytes,
                "records must fit the line alignment");
  static_assert(sizeof(Record) % 4 == 0 && alignof(Record) >= 4,
                "device code moves records in 32-bit (or wider) words");

  // Number of slots.
  static constexpr uint32_t kCapacity = N;

  ring_internal::RingIndex head;  // next index to write; producer-owned
  ring_internal::RingIndex tail;  // next index to read; consumer-owned
  Record records[N];              // slot = index & (N - 1)

  // ----- Host side. Producer operations from the producer thread only,
  // ----- consumer operations from the consumer thread only.

  // Producer: appends `record` unless the ring is full. Never overwrites.
  bool TryPush(const Record& record) {
    const uint32_t h = ring_internal::LoadRelaxed(&head.value);
    const uint32_t t = ring_internal::LoadAcquire(&tail.value);
    if (h - t >= N) return false;
    records[h & (N - 1)] = record;
    ring_internal::StoreRelease(&head.value, h + 1);
    return true;
  }

  // Consumer: moves the oldest record into `*out` unless the ring is empty
  // (then `*out` is untouched).
  bool TryPop(Record* out) {
    const uint32_t t = ring_internal::LoadRelaxed(&tail.value);
    const uint32_t h = ring_internal::LoadAcquire(&head.value);
    if (h == t) return false;
    *out = records[t & (N - 1)];
    ring_internal::StoreRelease(&tail.value, t + 1);
    return true;
  }

  // Records published and not yet consumed; a snapshot, in [0, N]. Exact
  // when called by the producer or the consumer with the other side idle.
  uint32_t Size() const {
    // tail first: the head read after it is at least as new as the head the
    // consumer had seen when it stored that tail, so h - t cannot underflow.
    // Both may move between the loads, so clamp an over-count to N.
    const uint32_t t = ring_internal::LoadAcquire(&tail.value);
    const uint32_t h = ring_internal::LoadAcquire(&head.value);
    const uint32_t n = h - t;
    return n > N ? N : n;
  }

  // Whether Size() == 0.
  bool Empty() const { return Size() == 0; }

  // Producer: TryPush, retrying with backoff until it succeeds (true), or
  // `timeout` passes or `stop()` returns true (false, nothing pushed).
  template <typename Stop>
  bool PushWait(const Record& record, std::chrono::nanoseconds timeout, Stop&& stop) {
    ring_internal::Backoff backoff(timeout);
    while (!TryPush(record)) {
      if (stop() || backoff.Expired()) return false;
      backoff.Pause();
    }
    return true;
  }
  bool PushWait(const Record& record, std::chrono::nanoseconds timeout) {
    return PushWait(record, timeout, ring_internal::NeverStop{});
  }

  // Consumer: TryPop, retrying with backoff until it succeeds (true), or
  // `timeout` passes or `stop()` returns true (false, `*out` untouched).
  template <typename Stop>
  bool PopWait(Record* out, std::chrono::nanoseconds timeout, Stop&& stop) {
    ring_internal::Backoff backoff(timeout);
    while (!TryPop(out)) {
      if (stop() || backoff.Expired()) return false;
      backoff.Pause();
    }
    return true;
  }
  bool PopWait(Record* out, std::chrono::nanoseconds timeout) {
    return PopWait(out, timeout, ring_internal::NeverStop{});
  }

  // Tests only: restarts an empty ring with both counters at `start` (e.g.
  // near UINT32_MAX to exercise the 32-bit wrap). Nothing may be using the
  // ring concurrently.
  void ResetIndicesForTesting(uint32_t start) {
    ring_internal::StoreRelaxed(&head.value, start);
    ring_internal::StoreRelaxed(&tail.value, start);
  }

#if defined(__CUDACC__)
  // ----- Device side, for ONE thread of the kernel; `this` must be the
  // ----- device alias of the mapped pinned block (cudaHostGetDevicePointer,
  // ----- the same address under UVA). Each call costs a PCIe round trip per
  // ----- index read and up to two system fences; the batch forms pay that
  // ----- once for many records.

  // Producer: appends up to `count` records from `src` (device or local
  // memory) in order; returns how many fitted.
  __device__ uint32_t DevicePushBatch(const Record* src, uint32_t count) {
    volatile uint32_t* vhead = &head.value;
    volatile uint32_t* vtail = &tail.value;
    const uint32_t h = *vhead;  // our own index: our last store
    const uint32_t t = *vtail;
    const uint32_t free_slots = N - (h - t);
    const uint32_t n = count < free_slots ? count : free_slots;
    if (n == 0) return 0;
    __threadfence_system();  // tail load before the slot stores it allows
    for (uint32_t i = 0; i < n; ++i) DeviceStoreSlot(h + i, src[i]);
    __threadfence_system();  // slot stores visible before the head that publishes them
    *vhead = h + n;
    return n;
  }

  // Producer: appends `record` unless the ring is full.
  __device__ bool DeviceTryPush(const Record& record) { return DevicePushBatch(&record, 1) == 1; }

  // Consumer: moves up to `max_count` of the oldest records into `dst`, in
  // order; returns how many.
  __device__ uint32_t DevicePopBatch(Record* dst, uint32_t max_count) {
    volatile uint32_t* vhead = &head.value;
    volatile uint32_t* vtail = &tail.value;
    const uint32_t t = *vtail;  // our own index: our last store
    const uint32_t h = *vhead;
    const uint32_t avail = h - t;
    const uint32_t n = max_count < avail ? max_count : avail;
    if (n == 0) return 0;
    __threadfence_system();  // head load before the slot loads it allows
    for (uint32_t i = 0; i < n; ++i) DeviceLoadSlot(t + i, &dst[i]);
    __threadfence_system();  // slot loads complete before the tail that frees them
    *vtail = t + n;
    return n;
  }

  // Consumer: moves the oldest record into `*out` unless the ring is empty.
  __device__ bool DeviceTryPop(Record* out) { return DevicePopBatch(out, 1) == 1; }

 private:
  // Records move word by word through volatile pointers so that every word
  // is a real load/store of the shared block, never a stale cached copy.
  __device__ void DeviceStoreSlot(uint32_t index, const Record& record) {
    using Word = ring_internal::CopyWord<Record>;
    volatile Word* dst = reinterpret_cast<volatile Word*>(&records[index & (N - 1)]);
    const unsigned char* src = reinterpret_cast<const unsigned char*>(&record);
    for (size_t i = 0; i < sizeof(Record) / sizeof(Word); ++i) {
      Word w;
      memcpy(&w, src + i * sizeof(Word), sizeof(Word));
      dst[i] = w;
    }
  }

  __device__ void DeviceLoadSlot(uint32_t index, Record* out) {
    using Word = ring_internal::CopyWord<Record>;
    const volatile Word* src = reinterpret_cast<const volatile Word*>(&records[index & (N - 1)]);
    unsigned char* dst = reinterpret_cast<unsigned char*>(out);
    for (size_t i = 0; i < sizeof(Record) / sizeof(Word); ++i) {
      const Word w = src[i];
      memcpy(dst + i * sizeof(Word), &w, sizeof(Word));
    }
  }
#endif  // defined(__CUDACC__)
};

// The two rings of the host/decoder protocol.
using CommandRing = SpscRing<Command, kCommandRingSize>;  // host -> decoder
using EventRing = SpscRing<Event, kEventRingSize>;        // decoder -> host

// The one shared pinned block: both rings of the host/decoder protocol.
struct RingBlock {
  CommandRing commands;
  EventRing events;
};

static_assert(std::is_standard_layout<CommandRing>::value, "ring must be standard layout");
static_assert(std::is_trivially_copyable<EventRing>::value, "ring must be a POD");
static_assert(std::is_standard_layout<RingBlock>::value, "RingBlock is shared with device code");
static_assert(std::is_trivially_copyable<RingBlock>::value, "RingBlock must be a POD");
static_assert(alignof(RingBlock) == ring_internal::kLineBytes, "RingBlock alignment");
static_assert(offsetof(RingBlock, commands) == 0, "RingBlock layout");
static_assert(offsetof(RingBlock, events) % ring_internal::kLineBytes == 0, "RingBlock layout");
static_assert(offsetof(EventRing, head) == 0, "head on line 0");
static_assert(offsetof(EventRing, tail) == ring_internal::kLineBytes, "tail on line 1");
static_assert(offsetof(EventRing, records) == 2 * ring_internal::kLineBytes,
              "records after the two index lines");
static_assert(sizeof(RingBlock) == 4 * ring_internal::kLineBytes +
                                       kCommandRingSize * sizeof(Command) +
                                       kEventRingSize * sizeof(Event),
              "RingBlock must have no padding beyond the index lines");
static_assert(sizeof(RingBlock) <= (1u << 20), "RingBlock should stay a small pinned allocation");

// ----- Host-only: the CPU-path allocation of the block.

// Frees a RingBlock from AllocateRingBlock (aligned operator delete).
struct RingBlockDeleter {
  void operator()(RingBlock* block) const {
    block->~RingBlock();
    ::operator delete (block, std::align_val_t{alignof(RingBlock)});
  }
};

// Owner of a RingBlock on the CPU path.
using RingBlockPtr = std::unique_ptr<RingBlock, RingBlockDeleter>;

// A zeroed, 64-byte-aligned RingBlock in ordinary memory, for the CPU decode
// loop and tests. (The CUDA path allocates it with cudaHostAlloc(...,
// cudaHostAllocMapped) instead and zeroes it the same way.)
inline RingBlockPtr AllocateRingBlock() {
  void* raw = ::operator new (sizeof(RingBlock), std::align_val_t{alignof(RingBlock)});
  RingBlock* block = new (raw) RingBlock;
  std::memset(static_cast<void*>(block), 0, sizeof(RingBlock));
  return RingBlockPtr(block);
}

}  // namespace m40llm
