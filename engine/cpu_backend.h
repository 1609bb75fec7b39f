// The CPU reference backend: the llama forward pass in FP32 over FP16
// weights, with an FP16 KV cache laid out [layer][slot][kv_head][pos][head_dim]
// exactly as the GPU keeps it.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/backend.h"
#include "engine/model.h"
#include "engine/thread_pool.h"

namespace m40llm {

class CpuBackend final : public Backend {
 public:
  // `model` must outlive the backend. `n_threads` <= 0: all hardware threads.
  static absl::StatusOr<std::unique_ptr<CpuBackend>> Create(const LlamaModel* model,
                                                            const BackendOptions& opts);

  const ModelConfig& config() const override { return model_->config(); }
  const BackendOptions& options() const override { return opts_; }
  absl::Status Forward(std::span<const SeqChunk> batch, ForwardOutput* out) override;
  std::string name() const override { return "cpu"; }
  std::string device() const override;
  BackendMemory memory() const override;

  // Direct view of the KV cache (FP16 bits), for tests.
  const uint16_t* k_cache() const { return k_cache_.data(); }
  const uint16_t* v_cache() const { return v_cache_.data(); }
  // Index of element (layer, slot, kv_head, pos, 0) in either cache.
  size_t KvIndex(int layer, int slot, int kv_head, int pos) const;

 private:
  CpuBackend(const LlamaModel* model, const BackendOptions& opts);

  const LlamaModel* model_;
  BackendOptions opts_;
  std::mutex forward_mu_;  // Forward calls (prefill and decode threads) run one at a time
  ThreadPool pool_;
  std::vector<uint16_t> k_cache_;  // (n_layer, max_slots, n_head_kv, ctx, head_dim) FP16
  std::vector<uint16_t> v_cache_;  // same layout
};

}  // namespace m40llm
