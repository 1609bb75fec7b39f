// The llama forward pass on one CUDA device, behind the same Backend
// interface as the CPU reference: FP16 weights and KV cache in device memory,
// FP32 arithmetic, one kernel per operation, launched from the host each step
// (decode steps of up to 64 sequences replayed from captured CUDA graphs):
// the baseline the persistent decode kernel has to beat.
//
// Memory plan, all allocated once at Create (and refused before any
// allocation when it does not fit):
//   weights   every matrix (rows, ld) FP16 with ld = cols rounded up to 8
//             halves (16-byte rows for the matmul kernels), norms FP32;
//   KV cache  K and V, [layer][slot][kv_head][pos][head_dim] FP16;
//   scratch   per pass context: activations for max_tokens_per_pass tokens,
//             logits and fused QKV / gate-up products for 64 rows, the
//             attention and sampling workspaces, staged sampling inputs.
// There are two pass contexts, each with its own stream, so a prefill and a
// decode step (the scheduler's two threads) run concurrently on the device.
//
// Faults: a CUDA error becomes the returned status. A sticky one (the context
// is unusable) also becomes health(), which every later Forward returns; the
// process keeps running so the server can report NOT_SERVING.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/backend.h"
#include "engine/gguf.h"
#include "engine/model.h"

namespace m40llm {

struct CudaBackendOptions {
  BackendOptions base;          // slots and context per slot (n_threads: dequantisation)
  int device = 0;               // CUDA device ordinal
  int max_tokens_per_pass = 512;  // tokens per forward pass; larger batches run in pieces
  // Replay decode steps of up to 64 sequences from captured CUDA graphs (one
  // launch a step instead of one per operation). The environment variable
  // M40LLM_CUDA_GRAPHS=0 (or 1) overrides it, for side-by-side measurement.
  bool decode_graphs = true;
  // Testing only: after this many forward passes, the next one makes the
  // device fault (a trap kernel). 0 = never. Also read from the environment
  // variable M40LLM_CUDA_FAULT_AFTER_PASSES when this is 0.
  int fault_after_passes = 0;
};

// Bytes the backend needs on the device, by kind.
struct CudaMemoryPlan {
  uint64_t weights = 0;
  uint64_t kv_cache = 0;
  uint64_t scratch = 0;   // all pass contexts
  uint64_t reserve = 0;   // left free for the CUDA context and allocator slack
  uint64_t device_free = 0;
  uint64_t device_total = 0;
  uint64_t kv_bytes_per_position = 0;  // one position of one slot, all layers, K and V
  uint64_t need() const { return weights + kv_cache + scratch + reserve; }
};

// The plan for `c` with `o` on a device with `free`/`total` bytes. Pure
// arithmetic, for tests and for the refusal message.
CudaMemoryPlan PlanCudaMemory(const ModelConfig& c, const CudaBackendOptions& o, uint64_t free,
                              uint64_t total);

// The refusal for a plan that does not fit: every number, and the largest
// batch at this context and the largest context at this batch that fit.
absl::Status CheckCudaPlanFits(const CudaMemoryPlan& p, const ModelConfig& c,
                               const CudaBackendOptions& o, const std::string& device);

class CudaBackend : public Backend {
 public:
  // Opens the device, checks the plan, allocates, and streams the weights of
  // `file` to the device one tensor at a time (host memory holds at most one
  // dequantised tensor). `progress` as in LlamaModel::Load.
  static absl::StatusOr<std::unique_ptr<CudaBackend>> Create(const GgufFile& file,
                                                             const CudaBackendOptions& opts,
                                                             const ProgressFn& progress = nullptr);
  ~CudaBackend() override;

  const ModelConfig& config() const override { return config_; }
  const BackendOptions& options() const override { return opts_.base; }
  std::string name() const override { return "cuda"; }
  std::string device() const override { return device_desc_; }
  absl::Status Forward(std::span<const SeqChunk> batch, ForwardOutput* out) override;
  // Samples on the device (cuda/sampling.cuh): only tokens and logprobs come
  // back to the host, not the logit rows.
  absl::Status ForwardSample(std::span<const SeqChunk> batch, std::span<const SampleSpec> specs,
                             std::vector<SampleResult>* out) override;
  absl::Status health() const override;
  BackendMemory memory() const override;

  const CudaMemoryPlan& plan() const { return plan_; }
  // Bytes of weights on the device (FP16 matrices with padded rows, FP32 norms).
  uint64_t weight_bytes() const { return plan_.weights; }
  // Weight bytes one pass reads once per step (every matrix, incl. the LM head).
  uint64_t weight_bytes_per_step() const;
  uint64_t clamped_values() const { return clamped_; }

  struct Impl;

 private:
  CudaBackend() = default;
  // Forward (samples == nullptr: logits into out) or ForwardSample.
  absl::Status Run(std::span<const SeqChunk> batch, std::span<const SampleSpec> specs,
                   ForwardOutput* out, std::vector<SampleResult>* samples);
  absl::Status Fail(const absl::Status& s);  // records a sticky fault

  ModelConfig config_;
  CudaBackendOptions opts_;
  CudaMemoryPlan plan_;
  std::string device_desc_;
  uint64_t clamped_ = 0;
  std::unique_ptr<Impl> impl_;
  mutable std::mutex fault_mu_;
  absl::Status fault_;
};

}  // namespace m40llm
