// The CPU decode loop: a thread that consumes the command ring and produces
// the event ring with exactly the semantics the persistent CUDA kernel will
// have. It is the reference executor the kernel is diffed against.
//
// One step, in order:
//  1. Apply every pending command: admit (the slot becomes active: feed
//     `first_token` at `pos`), cancel (an active slot with that seq_id ends
//     with a kFinished/kCancelled event), shutdown (active slots end
//     cancelled, then the loop exits).
//  2. With no active slot, wait for commands (poll with backoff).
//  3. One forward pass over every active slot, one token each, slots in
//     ascending order.
//  4. For each active slot: sample with its SamplingState, history (the
//     slot's tokens so far) and generated-token index `step`; append the token
//     to the history; emit kToken; then finish the slot when the token is an
//     end-of-generation token (unless ignore_eos) or a stop id (kStop), when
//     `step + 1 == max_tokens` or the context is full (kLength), emitting
//     kFinished. A forward-pass error finishes every active slot with kError.
// Events are pushed with backpressure: a full event ring makes it wait.
#pragma once

#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

#include "engine/backend.h"
#include "engine/sampler.h"
#include "persistent/protocol.h"
#include "persistent/ring.h"

namespace m40llm {

struct DecodeLoopOptions {
  int max_slots = 1;
  int ctx_per_slot = 0;
  std::vector<int32_t> eog_ids;  // the model's end-of-generation tokens
};

class CpuDecodeLoop {
 public:
  // `history` is (max_slots, ctx_per_slot) token ids: the host writes a
  // slot's prompt and first token there before admitting it; the loop
  // appends generated tokens. All pointers must outlive the loop.
  CpuDecodeLoop(Backend* backend, RingBlock* rings, int32_t* history,
                const DecodeLoopOptions& opts);
  ~CpuDecodeLoop();
  CpuDecodeLoop(const CpuDecodeLoop&) = delete;
  CpuDecodeLoop& operator=(const CpuDecodeLoop&) = delete;

  void Start();
  // Waits for the thread to exit (after a shutdown command).
  void Join();

 private:
  struct Slot {
    bool active = false;
    uint64_t seq_id = 0;
    int32_t pos = 0;         // where `next` is fed
    int32_t next = 0;        // token to feed this step
    int32_t step = 0;        // generated-token index of the token sampled next
    SamplingParams params;
    SamplingState state;
  };

  void Run();
  // Returns false after a shutdown command.
  bool ApplyCommands();
  void Step();
  void Emit(const Event& e);
  void Finish(int slot, FinishReason reason);

  Backend* backend_;
  RingBlock* rings_;
  int32_t* history_;
  DecodeLoopOptions opts_;
  std::vector<Slot> slots_;
  std::vector<SampleResult> samples_;
  uint32_t decode_step_ = 0;
  std::thread thread_;
};

}  // namespace m40llm
