// Pass contexts: scratch shape and allocation, and the staging of a pass's
// inputs and outputs (see pass_context.h).
#include "cuda/pass_context.h"

#include <algorithm>
#include <cstring>

#include "cuda/attention.cuh"
#include "cuda/cuda_check.h"
#include "engine/status.h"
#include "persistent/config.h"

namespace m40llm::gpu {

SampleLayout::SampleLayout(int64_t ctx_per_slot) : H(ctx_per_slot) {
  auto align = [](size_t b) { return (b + 15) / 16 * 16; };
  params = 0;
  streams = align(params + kLogitRows * sizeof(SamplingParams));
  hist_len = align(streams + kLogitRows * sizeof(uint64_t));
  steps = align(hist_len + kLogitRows * sizeof(int32_t));
  hist = align(steps + kLogitRows * sizeof(int32_t));
  bytes = align(hist + static_cast<size_t>(kLogitRows) * H * sizeof(int32_t));
}

ScratchShape ScratchFor(const ModelConfig& c, int max_tokens_per_pass, int ctx_per_slot) {
  ScratchShape s;
  s.T = std::max(1, max_tokens_per_pass);
  const int64_t T = s.T;
  // x, h, proj (n_embd); q, att (q_dim); k, v (kv_dim); gate, up (n_ff); logits.
  s.floats =
      static_cast<uint64_t>(T) * (3 * c.n_embd + 2 * c.q_dim() + 2 * c.kv_dim() + 2 * c.n_ff) +
      static_cast<uint64_t>(kLogitRows) * (c.n_vocab + c.q_dim() + 2 * c.kv_dim() + 2 * c.n_ff) +
      4 * 16;  // alignment of each piece
  // ids, slots, positions, lengths (T each); chunk slot, pos, len, row (up to T each)
  s.ints = static_cast<uint64_t>(T) * 8 + 64;
  s.attn_ws =
      DecodeAttentionWorkspaceBytes(static_cast<int>(T), c.n_head, c.head_dim, ctx_per_slot);
  s.sample = SampleLayout(ctx_per_slot).bytes + SampleWorkspaceBytes(kLogitRows, c.n_vocab) +
             kLogitRows * sizeof(DeviceSample);
  return s;
}

absl::Status AllocatePassContext(const ModelConfig& c, const ScratchShape& s, int ctx_per_slot,
                                 PassContext* pc) {
  PassContext& p = *pc;
  ASSIGN_OR_RETURN(p.stream, CudaStream::Create());
  ASSIGN_OR_RETURN(p.floats, DeviceBuffer<float>::Allocate(s.floats));
  float* f = p.floats.get();
  auto take = [&f](int64_t n) {  // 16-byte aligned pieces
    float* r = f;
    f += (n + 3) / 4 * 4;
    return r;
  };
  const int64_t T = s.T;
  p.x = take(T * c.n_embd);
  p.h = take(T * c.n_embd);
  p.proj = take(T * c.n_embd);
  p.q = take(T * c.q_dim());
  p.att = take(T * c.q_dim());
  p.k = take(T * c.kv_dim());
  p.v = take(T * c.kv_dim());
  p.gate = take(T * c.n_ff);
  p.up = take(T * c.n_ff);
  p.logits = take(static_cast<int64_t>(kLogitRows) * c.n_vocab);
  p.qkv = take(static_cast<int64_t>(kLogitRows) * (c.q_dim() + 2 * c.kv_dim()));
  p.gate_up = take(static_cast<int64_t>(kLogitRows) * 2 * c.n_ff);
  ASSIGN_OR_RETURN(p.ints, DeviceBuffer<int32_t>::Allocate(s.ints));
  ASSIGN_OR_RETURN(p.attn_ws, DeviceBuffer<uint8_t>::Allocate(s.attn_ws));
  ASSIGN_OR_RETURN(p.host_ints, PinnedBuffer<int32_t>::Allocate(s.ints));
  ASSIGN_OR_RETURN(p.host_logits,
                   PinnedBuffer<float>::Allocate(static_cast<size_t>(kLogitRows) * c.n_vocab));
  const SampleLayout layout(ctx_per_slot);
  ASSIGN_OR_RETURN(p.sample_in, DeviceBuffer<uint8_t>::Allocate(layout.bytes));
  ASSIGN_OR_RETURN(p.host_sample_in, PinnedBuffer<uint8_t>::Allocate(layout.bytes));
  ASSIGN_OR_RETURN(p.sample_ws,
                   DeviceBuffer<uint8_t>::Allocate(SampleWorkspaceBytes(kLogitRows, c.n_vocab)));
  ASSIGN_OR_RETURN(p.sample_out, DeviceBuffer<DeviceSample>::Allocate(kLogitRows));
  ASSIGN_OR_RETURN(p.host_sample_out, PinnedBuffer<DeviceSample>::Allocate(kLogitRows));
  return absl::OkStatus();
}

absl::Status StageSampleInputs(int ctx_per_slot, PassContext& p, std::span<const SampleSpec> specs,
                               cudaStream_t st) {
  const SampleLayout L(ctx_per_slot);
  const int m = static_cast<int>(specs.size());
  uint8_t* h = p.host_sample_in.data();
  auto* params = reinterpret_cast<SamplingParams*>(h + L.params);
  auto* streams = reinterpret_cast<uint64_t*>(h + L.streams);
  auto* hist_len = reinterpret_cast<int32_t*>(h + L.hist_len);
  auto* steps = reinterpret_cast<int32_t*>(h + L.steps);
  auto* hist = reinterpret_cast<int32_t*>(h + L.hist);
  for (int i = 0; i < m; ++i) {
    const SampleSpec& sp = specs[i];
    params[i] = *sp.params;  // the request's own parameters, as they are
    streams[i] = sp.stream;
    steps[i] = static_cast<int32_t>(sp.step);
    const int64_t n = static_cast<int64_t>(sp.history.size());
    const int64_t last = sp.params->penalty_last_n;
    int64_t w = last < 0 ? n : std::min(n, last);
    w = std::min(w, L.H);
    hist_len[i] = static_cast<int32_t>(w);
    std::memcpy(hist + i * L.H, sp.history.data() + (n - w), w * sizeof(int32_t));
  }
  // Everything up to the last row's window, in one copy.
  const size_t bytes = L.hist + ((m - 1) * L.H + hist_len[m - 1]) * sizeof(int32_t);
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(p.sample_in.get(), h, bytes, cudaMemcpyHostToDevice, st));
  return absl::OkStatus();
}

absl::Status EnqueueSample(const ModelConfig& c, int ctx_per_slot, PassContext& p, int m,
                           cudaStream_t st) {
  const SampleLayout L(ctx_per_slot);
  const uint8_t* d = p.sample_in.get();
  return LaunchSample({.logits = p.logits,
                       .n_seq = m,
                       .n_vocab = c.n_vocab,
                       .params = reinterpret_cast<const SamplingParams*>(d + L.params),
                       .history = reinterpret_cast<const int32_t*>(d + L.hist),
                       .hist_stride = L.H,
                       .hist_len = reinterpret_cast<const int32_t*>(d + L.hist_len),
                       .streams = reinterpret_cast<const uint64_t*>(d + L.streams),
                       .steps = reinterpret_cast<const int32_t*>(d + L.steps),
                       .workspace = p.sample_ws.get(),
                       .workspace_bytes = p.sample_ws.bytes(),
                       .out = p.sample_out.get()},
                      st);
}

absl::Status FetchSamples(PassContext& p, int m, cudaStream_t st, SampleResult* out) {
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(p.host_sample_out.data(), p.sample_out.get(),
                                       m * sizeof(DeviceSample), cudaMemcpyDeviceToHost, st));
  CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(st));
  for (int i = 0; i < m; ++i) {
    const DeviceSample& ds = p.host_sample_out[i];
    SampleResult& r = out[i];
    r.token = ds.token;
    r.logprob = ds.logprob;
    r.top.clear();
    for (int k = 0; k < ds.n_top && k < kMaxEventLogprobs; ++k) {
      r.top.push_back({ds.top[k].token, ds.top[k].logprob});
    }
  }
  return absl::OkStatus();
}

absl::Status FetchLogits(const ModelConfig& c, PassContext& p, int64_t m, cudaStream_t st,
                         float* out) {
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(p.host_logits.data(), p.logits,
                                       m * c.n_vocab * sizeof(float), cudaMemcpyDeviceToHost, st));
  CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(st));
  std::memcpy(out, p.host_logits.data(), m * c.n_vocab * sizeof(float));
  return absl::OkStatus();
}

}  // namespace m40llm::gpu
