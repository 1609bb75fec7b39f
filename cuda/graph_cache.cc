// The decode graph cache (see graph_cache.h).
#include "cuda/graph_cache.h"

#include "absl/status/statusor.h"
#include "cuda/cuda_check.h"
#include "engine/status.h"

namespace m40llm::gpu {

GraphExec::~GraphExec() {
  if (exec != nullptr) static_cast<void>(cudaGraphExecDestroy(exec));
}

namespace {

// Captures what `enqueue` puts on stream `st` into an instantiated graph.
// The capture is ended whatever happens, so the stream is usable after an
// error.
absl::StatusOr<std::unique_ptr<GraphExec>> CaptureGraph(
    cudaStream_t st, const std::function<absl::Status()>& enqueue) {
  CUDA_RETURN_IF_ERROR(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
  const absl::Status s = enqueue();
  cudaGraph_t graph = nullptr;
  const cudaError_t end = cudaStreamEndCapture(st, &graph);
  if (!s.ok() || end != cudaSuccess) {
    if (graph != nullptr) static_cast<void>(cudaGraphDestroy(graph));
    RETURN_IF_ERROR(s);
    CUDA_RETURN_IF_ERROR(end);
  }
  auto g = std::make_unique<GraphExec>();
  const cudaError_t inst = cudaGraphInstantiateWithFlags(&g->exec, graph, 0);
  static_cast<void>(cudaGraphDestroy(graph));
  CUDA_RETURN_IF_ERROR(inst);
  return g;
}

}  // namespace

absl::Status DecodeGraphCache::Launch(int n_tok, bool sampling, cudaStream_t st,
                                      const std::function<absl::Status()>& enqueue) {
  std::unique_ptr<GraphExec>& g = graphs_[n_tok * 2 + (sampling ? 1 : 0)];
  if (!g) {
    ASSIGN_OR_RETURN(g, CaptureGraph(st, enqueue));
  }
  CUDA_RETURN_IF_ERROR(cudaGraphLaunch(g->exec, st));
  return absl::OkStatus();
}

}  // namespace m40llm::gpu
