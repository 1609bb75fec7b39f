// Tests of the host side of SpscRing (persistent/ring.h): emptiness,
// backpressure without overwrite, FIFO order across the 32-bit index wrap,
// Size(), two-thread stress with small and Event-sized records, the blocking
// helpers with their timeout and stop paths, and the RingBlock allocation.
#include "persistent/ring.h"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <thread>

#include "gtest/gtest.h"

namespace m40llm {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using std::chrono::steady_clock;

// SplitMix64 finaliser: every payload word is derived from the sequence
// number through it, so a torn or stale record cannot pass for another.
uint64_t Mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// 16-byte record: a sequence number and its checksum.
struct SmallRecord {
  uint64_t seq;
  uint64_t check;
};

SmallRecord MakeSmall(uint64_t seq) { return {seq, Mix(seq)}; }

// An Event whose every byte (fields, padding words, all top-n entries) is a
// function of `seq`; a few fields are then set to meaningful values.
Event MakeEvent(uint64_t seq) {
  static_assert(sizeof(Event) % sizeof(uint64_t) == 0, "Event is filled in 64-bit words");
  Event e;
  unsigned char* bytes = reinterpret_cast<unsigned char*>(&e);
  for (size_t i = 0; i < sizeof(Event) / sizeof(uint64_t); ++i) {
    const uint64_t w = Mix(seq * 64 + i);
    std::memcpy(bytes + i * sizeof(w), &w, sizeof(w));
  }
  e.kind = (seq & 1) != 0 ? EventKind::kToken : EventKind::kFinished;
  e.seq_id = seq;
  e.n_top = kMaxEventLogprobs;
  return e;
}

uint64_t SeqOf(const SmallRecord& r) { return r.seq; }
uint64_t SeqOf(const Event& e) { return e.seq_id; }

template <typename Record>
bool SameBytes(const Record& a, const Record& b) {
  return std::memcmp(&a, &b, sizeof(Record)) == 0;
}

template <typename Record>
void Poison(Record* r) {
  std::memset(static_cast<void*>(r), 0xA5, sizeof(Record));
}

// A zeroed ring on the heap (rings are too big for the stack and need
// 64-byte alignment, which aligned new gives).
template <typename Record, uint32_t N>
std::unique_ptr<SpscRing<Record, N>> NewRing() {
  return std::make_unique<SpscRing<Record, N>>();
}

TEST(SpscRingTest, LayoutPutsIndicesOnTheirOwnLines) {
  using Ring = SpscRing<SmallRecord, 8>;
  EXPECT_EQ(alignof(Ring), 64u);
  EXPECT_EQ(offsetof(Ring, head), 0u);
  EXPECT_EQ(offsetof(Ring, tail), 64u);
  EXPECT_EQ(offsetof(Ring, records), 128u);
  EXPECT_EQ(sizeof(Ring), 128u + 8 * sizeof(SmallRecord));
  EXPECT_EQ(Ring::kCapacity, 8u);
}

TEST(SpscRingTest, EmptyRingPopsNothing) {
  auto ring = NewRing<SmallRecord, 8>();
  EXPECT_TRUE(ring->Empty());
  EXPECT_EQ(ring->Size(), 0u);
  SmallRecord out;
  Poison(&out);
  const SmallRecord poisoned = out;
  EXPECT_FALSE(ring->TryPop(&out));
  EXPECT_TRUE(SameBytes(out, poisoned)) << "TryPop wrote to *out on an empty ring";
  EXPECT_EQ(ring->tail.value, 0u);

  // Drained again after one round trip.
  ASSERT_TRUE(ring->TryPush(MakeSmall(7)));
  ASSERT_TRUE(ring->TryPop(&out));
  EXPECT_EQ(out.seq, 7u);
  EXPECT_FALSE(ring->TryPop(&out));
  EXPECT_TRUE(ring->Empty());
}

// Fills the ring from `start`, checks that one more push is refused without
// touching any slot or index, then drains and checks every record.
template <uint32_t N>
void CheckBackpressure(uint32_t start) {
  auto ring = NewRing<SmallRecord, N>();
  ring->ResetIndicesForTesting(start);
  for (uint32_t i = 0; i < N; ++i) {
    ASSERT_TRUE(ring->TryPush(MakeSmall(i))) << "push " << i;
    EXPECT_EQ(ring->Size(), i + 1);
  }
  EXPECT_FALSE(ring->Empty());
  EXPECT_EQ(ring->head.value - ring->tail.value, N);

  const auto before = std::make_unique<SpscRing<SmallRecord, N>>(*ring);
  EXPECT_FALSE(ring->TryPush(MakeSmall(1000)));
  EXPECT_FALSE(ring->TryPush(MakeSmall(1001)));
  EXPECT_EQ(std::memcmp(before.get(), ring.get(), sizeof(*ring)), 0)
      << "a refused push changed the ring";
  EXPECT_EQ(ring->Size(), N);

  for (uint32_t i = 0; i < N; ++i) {
    SmallRecord out;
    ASSERT_TRUE(ring->TryPop(&out));
    EXPECT_EQ(out.seq, i);
    EXPECT_EQ(out.check, Mix(i));
  }
  SmallRecord out;
  EXPECT_FALSE(ring->TryPop(&out));
  EXPECT_EQ(ring->head.value, start + N);
  EXPECT_EQ(ring->tail.value, start + N);
}

TEST(SpscRingTest, FullRingRefusesPushAndOverwritesNothing) { CheckBackpressure<16>(0); }

TEST(SpscRingTest, FullAcrossTheIndexWrap) {
  // head wraps past UINT32_MAX to a small value while tail has not: the
  // ring must still read as exactly full.
  CheckBackpressure<16>(0xFFFFFFF8u);
  CheckBackpressure<1>(0xFFFFFFFFu);
}

TEST(SpscRingTest, SingleSlotRing) {
  auto ring = NewRing<SmallRecord, 1>();
  SmallRecord out;
  for (uint64_t i = 0; i < 10; ++i) {
    ASSERT_TRUE(ring->TryPush(MakeSmall(i)));
    EXPECT_FALSE(ring->TryPush(MakeSmall(100 + i)));
    ASSERT_TRUE(ring->TryPop(&out));
    EXPECT_EQ(out.seq, i);
    EXPECT_FALSE(ring->TryPop(&out));
  }
}

TEST(SpscRingTest, FifoOrderAcrossThe32BitWrap) {
  constexpr uint32_t kN = 16;
  constexpr uint32_t kStart = 0xFFFFFF00u;
  auto ring = NewRing<SmallRecord, kN>();
  ring->ResetIndicesForTesting(kStart);
  uint64_t next_push = 0;
  uint64_t next_pop = 0;
  // Bursts of 1..N pushes and 1..N pops: both indices cross 2^32 (after 256
  // records) and the slot position drifts through every phase.
  for (uint32_t round = 0; round < 400; ++round) {
    const uint32_t pushes = 1 + (Mix(round) % kN);
    for (uint32_t i = 0; i < pushes && ring->TryPush(MakeSmall(next_push)); ++i) ++next_push;
    ASSERT_EQ(ring->Size(), next_push - next_pop);
    const uint32_t pops = 1 + (Mix(round + 7777) % kN);
    SmallRecord out;
    for (uint32_t i = 0; i < pops && ring->TryPop(&out); ++i) {
      ASSERT_EQ(out.seq, next_pop) << "round " << round;
      ASSERT_EQ(out.check, Mix(next_pop));
      ++next_pop;
    }
    ASSERT_EQ(ring->Size(), next_push - next_pop);
  }
  EXPECT_GT(next_pop, 50u * kN);
  // The counters really did wrap.
  EXPECT_LT(ring->tail.value, kStart);
  EXPECT_EQ(ring->tail.value, static_cast<uint32_t>(kStart + next_pop));
  EXPECT_EQ(ring->head.value, static_cast<uint32_t>(kStart + next_push));
}

TEST(SpscRingTest, MatchesADequeModel) {
  constexpr uint32_t kN = 8;
  auto ring = NewRing<SmallRecord, kN>();
  ring->ResetIndicesForTesting(0xFFFFFFF0u);
  std::deque<uint64_t> model;
  uint64_t next = 0;
  for (uint32_t step = 0; step < 20000; ++step) {
    if ((Mix(step) % 3) != 0) {  // push twice as often as pop: reach full often
      const bool pushed = ring->TryPush(MakeSmall(next));
      ASSERT_EQ(pushed, model.size() < kN) << "step " << step;
      if (pushed) model.push_back(next++);
    } else {
      SmallRecord out;
      const bool popped = ring->TryPop(&out);
      ASSERT_EQ(popped, !model.empty()) << "step " << step;
      if (popped) {
        ASSERT_EQ(out.seq, model.front()) << "step " << step;
        ASSERT_EQ(out.check, Mix(out.seq));
        model.pop_front();
      }
    }
    ASSERT_EQ(ring->Size(), model.size());
    ASSERT_EQ(ring->Empty(), model.empty());
  }
}

// Retries `op` until it returns true, yielding between tries so that a peer
// sharing the core can run. Gives up (false) when `abort` is set or after
// `limit` without success, so a lost record fails the test instead of
// hanging it.
template <typename Op>
bool Retry(Op op, const std::atomic<bool>& abort, steady_clock::duration limit = seconds(20)) {
  if (op()) return true;
  const auto deadline = steady_clock::now() + limit;
  for (uint32_t tries = 1;; ++tries) {
    if (op()) return true;
    if (abort.load(std::memory_order_relaxed)) return false;
    if ((tries & 1023) == 0 && steady_clock::now() > deadline) return false;
    std::this_thread::yield();
  }
}

// Producer thread pushes records 0..count-1 made by `make`; this thread pops
// and checks each one byte for byte against make(expected): strict order, no
// loss, no duplicate, no torn record. Then the ring must be empty.
template <typename Record, uint32_t N, typename Make>
void RunStress(SpscRing<Record, N>* ring, uint64_t count, Make make) {
  std::atomic<bool> abort{false};
  std::atomic<uint64_t> pushed{0};
  std::thread producer([&] {
    for (uint64_t seq = 0; seq < count; ++seq) {
      const Record rec = make(seq);
      if (!Retry([&] { return ring->TryPush(rec); }, abort)) return;
      pushed.store(seq + 1, std::memory_order_relaxed);
    }
  });

  std::string failure;
  uint64_t expected = 0;
  Record out;
  while (expected < count) {
    Poison(&out);
    if (!Retry([&] { return ring->TryPop(&out); }, abort)) {
      failure = "consumer starved at " + std::to_string(expected) + " after " +
                std::to_string(pushed.load()) + " pushes";
      break;
    }
    const Record want = make(expected);
    if (!SameBytes(out, want)) {
      failure = "record " + std::to_string(expected) + " came out as seq " +
                std::to_string(SeqOf(out)) +
                (SeqOf(out) == expected ? " with a corrupt payload" : "");
      break;
    }
    ++expected;
  }
  abort.store(true);
  producer.join();
  EXPECT_EQ(failure, "");
  EXPECT_EQ(expected, count);
  EXPECT_EQ(pushed.load(), count);
  EXPECT_FALSE(ring->TryPop(&out)) << "a record beyond the last one pushed";
  EXPECT_TRUE(ring->Empty());
}

TEST(SpscRingStressTest, SmallRecordsTwoThreads) {
  auto ring = NewRing<SmallRecord, 64>();
  ring->ResetIndicesForTesting(0xFFF00000u);  // wraps 2^32 part-way
  RunStress(ring.get(), 5'000'000, MakeSmall);
}

TEST(SpscRingStressTest, EventsTwoThreadsSmallRing) {
  // A small ring keeps both sides contending for the same few slots.
  auto ring = NewRing<Event, 8>();
  ring->ResetIndicesForTesting(0xFFFFF000u);
  RunStress(ring.get(), 1'000'000, MakeEvent);
}

TEST(SpscRingStressTest, EventsThroughTheRingBlock) {
  RingBlockPtr block = AllocateRingBlock();
  block->events.ResetIndicesForTesting(0xFFFFFC00u);
  RunStress(&block->events, 1'000'000, MakeEvent);
}

TEST(SpscRingBlockingTest, PopWaitTimesOutOnAnEmptyRing) {
  auto ring = NewRing<SmallRecord, 8>();
  SmallRecord out;
  Poison(&out);
  const SmallRecord poisoned = out;
  const auto start = steady_clock::now();
  EXPECT_FALSE(ring->PopWait(&out, milliseconds(30)));
  const auto waited = steady_clock::now() - start;
  EXPECT_GE(waited, milliseconds(30));
  EXPECT_LT(waited, seconds(5));
  EXPECT_TRUE(SameBytes(out, poisoned));
}

TEST(SpscRingBlockingTest, PushWaitTimesOutOnAFullRingWithoutOverwriting) {
  auto ring = NewRing<SmallRecord, 4>();
  for (uint64_t i = 0; i < 4; ++i) ASSERT_TRUE(ring->TryPush(MakeSmall(i)));
  const auto start = steady_clock::now();
  EXPECT_FALSE(ring->PushWait(MakeSmall(99), milliseconds(30)));
  EXPECT_GE(steady_clock::now() - start, milliseconds(30));
  // Zero timeout: one try, no wait.
  EXPECT_FALSE(ring->PushWait(MakeSmall(98), std::chrono::nanoseconds(0)));
  for (uint64_t i = 0; i < 4; ++i) {
    SmallRecord out;
    ASSERT_TRUE(ring->PopWait(&out, std::chrono::nanoseconds(0)));
    EXPECT_EQ(out.seq, i);
    EXPECT_EQ(out.check, Mix(i));
  }
  EXPECT_TRUE(ring->Empty());
}

TEST(SpscRingBlockingTest, StopPredicateEndsTheWait) {
  auto ring = NewRing<SmallRecord, 4>();
  std::atomic<bool> stop{false};
  std::thread stopper([&] {
    std::this_thread::sleep_for(milliseconds(20));
    stop.store(true);
  });
  const auto start = steady_clock::now();
  SmallRecord out;
  // A timeout far beyond the assertion below: only the predicate can end
  // this in time (finite, so a broken predicate fails instead of hanging).
  EXPECT_FALSE(ring->PopWait(&out, seconds(20), [&] { return stop.load(); }));
  EXPECT_LT(steady_clock::now() - start, seconds(5));
  stopper.join();

  for (uint64_t i = 0; i < 4; ++i) ASSERT_TRUE(ring->TryPush(MakeSmall(i)));
  EXPECT_FALSE(ring->PushWait(MakeSmall(9), seconds(20), [] { return true; }));
  EXPECT_EQ(ring->Size(), 4u);
}

TEST(SpscRingBlockingTest, PushWaitResumesWhenTheConsumerFreesASlot) {
  auto ring = NewRing<SmallRecord, 4>();
  for (uint64_t i = 0; i < 4; ++i) ASSERT_TRUE(ring->TryPush(MakeSmall(i)));
  std::thread consumer([&] {
    std::this_thread::sleep_for(milliseconds(20));
    SmallRecord out;
    EXPECT_TRUE(ring->TryPop(&out));
    EXPECT_EQ(out.seq, 0u);
  });
  EXPECT_TRUE(ring->PushWait(MakeSmall(4), seconds(10)));
  consumer.join();
  for (uint64_t i = 1; i <= 4; ++i) {
    SmallRecord out;
    ASSERT_TRUE(ring->TryPop(&out));
    EXPECT_EQ(out.seq, i);
  }
}

TEST(SpscRingBlockingTest, UnboundedTimeoutDoesNotOverflowTheDeadline) {
  // now() + nanoseconds::max() would overflow into the past and end the wait
  // at once; the deadline must saturate instead.
  auto ring = NewRing<SmallRecord, 4>();
  std::thread producer([&] {
    std::this_thread::sleep_for(milliseconds(20));
    EXPECT_TRUE(ring->TryPush(MakeSmall(5)));
  });
  SmallRecord out;
  EXPECT_TRUE(ring->PopWait(&out, std::chrono::nanoseconds::max()));
  producer.join();
  EXPECT_EQ(out.seq, 5u);
}

TEST(SpscRingBlockingTest, BlockingHelpersStress) {
  constexpr uint64_t kCount = 500'000;
  auto ring = NewRing<SmallRecord, 16>();
  ring->ResetIndicesForTesting(0xFFFF0000u);
  std::atomic<bool> consumer_gone{false};
  std::atomic<uint64_t> pushed{0};
  std::thread producer([&] {
    for (uint64_t seq = 0; seq < kCount; ++seq) {
      if (!ring->PushWait(MakeSmall(seq), seconds(10), [&] { return consumer_gone.load(); })) {
        return;
      }
      pushed.store(seq + 1, std::memory_order_relaxed);
    }
  });
  uint64_t expected = 0;
  std::string failure;
  while (expected < kCount) {
    SmallRecord out;
    Poison(&out);
    if (!ring->PopWait(&out, seconds(10))) {
      failure = "PopWait timed out at " + std::to_string(expected);
      break;
    }
    if (out.seq != expected || out.check != Mix(expected)) {
      failure =
          "record " + std::to_string(expected) + " came out as seq " + std::to_string(out.seq);
      break;
    }
    ++expected;
  }
  consumer_gone.store(true);
  producer.join();
  EXPECT_EQ(failure, "");
  EXPECT_EQ(pushed.load(), kCount);
  SmallRecord out;
  EXPECT_FALSE(ring->PopWait(&out, milliseconds(1)));
}

TEST(RingBlockTest, AllocatesZeroedAlignedAndUsable) {
  RingBlockPtr block = AllocateRingBlock();
  ASSERT_NE(block, nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(block.get()) % 64, 0u);
  const auto* bytes = reinterpret_cast<const unsigned char*>(block.get());
  size_t nonzero = 0;
  for (size_t i = 0; i < sizeof(RingBlock); ++i) nonzero += bytes[i] != 0;
  EXPECT_EQ(nonzero, 0u);
  EXPECT_TRUE(block->commands.Empty());
  EXPECT_TRUE(block->events.Empty());
  EXPECT_EQ(offsetof(RingBlock, events), sizeof(CommandRing));
  EXPECT_EQ(offsetof(RingBlock, events) % 64, 0u);

  Command cmd;
  std::memset(&cmd, 0, sizeof(cmd));
  cmd.op = CommandOp::kAdmit;
  cmd.slot = 3;
  cmd.seq_id = 42;
  cmd.sampling.stop_ids[kMaxStopIds - 1] = 77;
  ASSERT_TRUE(block->commands.TryPush(cmd));
  Command got;
  ASSERT_TRUE(block->commands.TryPop(&got));
  EXPECT_TRUE(SameBytes(got, cmd));
  EXPECT_TRUE(block->events.Empty()) << "command traffic leaked into the event ring";
}

}  // namespace
}  // namespace m40llm
