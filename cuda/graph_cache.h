// The decode graph cache: one instantiated CUDA graph per decode-step shape,
// captured the first time a step of that shape runs and replayed after, so a
// step costs one launch instead of one per operation (with the same bits).
// Host code; the CUDA backend keeps one cache per pass context.
#pragma once

#include <cuda_runtime_api.h>

#include <functional>
#include <map>
#include <memory>

#include "absl/status/status.h"

namespace m40llm::gpu {

// An instantiated CUDA graph, destroyed with its owner (not copyable).
struct GraphExec {
  cudaGraphExec_t exec = nullptr;
  GraphExec() = default;
  GraphExec(const GraphExec&) = delete;
  GraphExec& operator=(const GraphExec&) = delete;
  ~GraphExec();
};

// Decode steps by shape: the number of tokens (sequences) and whether the
// step samples on the device or returns logits.
class DecodeGraphCache {
 public:
  // Launches the graph of a step of n_tok tokens on `st`, capturing what
  // `enqueue` puts on `st` first if this shape has none yet. The capture is
  // ended whatever happens, so the stream is usable after an error, and a
  // failed capture leaves the shape without a graph, to be captured again
  // next time.
  [[nodiscard]] absl::Status Launch(int n_tok, bool sampling, cudaStream_t st,
                                    const std::function<absl::Status()>& enqueue);

 private:
  std::map<int, std::unique_ptr<GraphExec>> graphs_;  // by n_tok * 2 + sampling
};

}  // namespace m40llm::gpu
