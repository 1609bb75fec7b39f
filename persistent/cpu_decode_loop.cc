// CPU decode loop: see cpu_decode_loop.h for the step semantics.
#include "persistent/cpu_decode_loop.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "persistent/sampling_state.h"
#include "spdlog/spdlog.h"

namespace m40llm {
namespace {


// Polling backoff for an idle loop: spin briefly, then sleep up to 200 us.
class Backoff {
 public:
  void Reset() { n_ = 0; }
  void Wait() {
    if (++n_ < 64) {
      std::this_thread::yield();
      return;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(std::min(200, (n_ - 63) * 10)));
  }

 private:
  int n_ = 0;
};

}  // namespace

CpuDecodeLoop::CpuDecodeLoop(Backend* backend, RingBlock* rings, int32_t* history,
                             const DecodeLoopOptions& opts)
    : backend_(backend), rings_(rings), history_(history), opts_(opts), slots_(opts.max_slots) {}

CpuDecodeLoop::~CpuDecodeLoop() { Join(); }

void CpuDecodeLoop::Start() { thread_ = std::thread([this] { Run(); }); }

void CpuDecodeLoop::Join() {
  if (thread_.joinable()) thread_.join();
}

void CpuDecodeLoop::Run() {
  Backoff backoff;
  for (;;) {
    if (!ApplyCommands()) return;
    const bool any = std::any_of(slots_.begin(), slots_.end(), [](const Slot& s) { return s.active; });
    if (!any) {
      backoff.Wait();
      continue;
    }
    backoff.Reset();
    Step();
  }
}

bool CpuDecodeLoop::ApplyCommands() {
  Command c;
  while (rings_->commands.TryPop(&c)) {
    switch (c.op) {
      case CommandOp::kAdmit: {
        if (c.slot < 0 || c.slot >= opts_.max_slots || slots_[c.slot].active) {
          spdlog::error("decode loop: bad admit for slot {}", c.slot);
          break;
        }
        Slot& s = slots_[c.slot];
        s.active = true;
        s.seq_id = c.seq_id;
        s.pos = c.pos;
        s.next = c.first_token;
        s.step = 1;  // prefill sampled token 0
        s.state = c.sampling;
        s.params = ToSamplingParams(c.sampling);
        break;
      }
      case CommandOp::kCancel:
        if (c.slot >= 0 && c.slot < opts_.max_slots && slots_[c.slot].active &&
            slots_[c.slot].seq_id == c.seq_id) {
          Finish(c.slot, FinishReason::kCancelled);
        }
        break;
      case CommandOp::kShutdown:
        for (int i = 0; i < opts_.max_slots; ++i) {
          if (slots_[i].active) Finish(i, FinishReason::kCancelled);
        }
        return false;
      case CommandOp::kNone:
        break;
    }
  }
  return true;
}

void CpuDecodeLoop::Emit(const Event& e) {
  Backoff backoff;
  while (!rings_->events.TryPush(e)) backoff.Wait();  // backpressure, never overwrite
}

void CpuDecodeLoop::Finish(int slot, FinishReason reason) {
  Slot& s = slots_[slot];
  Event e{};
  e.kind = EventKind::kFinished;
  e.slot = slot;
  e.pos = s.pos;
  e.seq_id = s.seq_id;
  e.reason = reason;
  e.decode_step = decode_step_;
  Emit(e);
  s.active = false;
}

void CpuDecodeLoop::Step() {
  ++decode_step_;
  std::vector<SeqChunk> batch;
  std::vector<int> order;
  for (int i = 0; i < opts_.max_slots; ++i) {
    Slot& s = slots_[i];
    if (!s.active) continue;
    batch.push_back({i, s.pos, {&s.next, 1}, false});
    order.push_back(i);
  }
  std::vector<SampleSpec> specs;
  specs.reserve(order.size());
  for (int i : order) {
    const Slot& s = slots_[i];
    const int32_t* hist = history_ + static_cast<size_t>(i) * opts_.ctx_per_slot;
    // The history holds positions 0..pos (the token just fed included).
    specs.push_back({&s.params, {hist, static_cast<size_t>(s.pos) + 1}, /*stream=*/0,
                     static_cast<uint64_t>(s.step)});
  }
  absl::Status st = backend_->ForwardSample(batch, specs, &samples_);
  if (!st.ok()) {
    spdlog::error("decode step {} failed: {}", decode_step_, std::string(st.message()));
    for (int i : order) Finish(i, FinishReason::kError);
    return;
  }
  for (size_t b = 0; b < order.size(); ++b) {
    const int i = order[b];
    Slot& s = slots_[i];
    int32_t* hist = history_ + static_cast<size_t>(i) * opts_.ctx_per_slot;
    const SampleResult& r = samples_[b];
    const int32_t new_pos = s.pos + 1;
    if (new_pos < opts_.ctx_per_slot) hist[new_pos] = r.token;
    Event e{};
    e.kind = EventKind::kToken;
    e.slot = i;
    e.pos = new_pos;
    e.token = r.token;
    e.seq_id = s.seq_id;
    e.logprob = r.logprob;
    e.step = s.step;
    e.decode_step = decode_step_;
    e.n_top = static_cast<int32_t>(std::min<size_t>(r.top.size(), kMaxEventLogprobs));
    for (int k = 0; k < e.n_top; ++k) e.top[k] = {r.top[k].token, r.top[k].logprob};
    Emit(e);

    bool stop = false;
    if (!s.state.ignore_eos) {
      stop = std::find(opts_.eog_ids.begin(), opts_.eog_ids.end(), r.token) != opts_.eog_ids.end();
    }
    for (int k = 0; k < s.state.n_stop_ids && !stop; ++k) stop = s.state.stop_ids[k] == r.token;
    s.pos = new_pos;
    if (stop) {
      Finish(i, FinishReason::kStop);
    } else if (s.step + 1 >= s.state.max_tokens || new_pos + 1 > opts_.ctx_per_slot) {
      Finish(i, FinishReason::kLength);
    } else {
      s.next = r.token;
      ++s.step;
    }
  }
}

}  // namespace m40llm
