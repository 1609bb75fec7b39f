// Builds the compute backend a command line asks for: the CPU reference
// engine (weights in host memory) or, in a build with CUDA, the CUDA engine
// (weights streamed to the device); and the decoder that runs decode steps
// on it (persistent/decoder.h). Shared by `m40llm serve` and the CLI.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/backend.h"
#include "engine/gguf.h"
#include "engine/model.h"
#include "engine/tokenizer.h"
#include "persistent/decoder.h"

namespace m40llm {

struct BackendSpec {
  std::string kind = "cpu";  // "cpu" or "cuda"
  int device = 0;            // CUDA device ordinal (cuda only)
  BackendOptions options;    // slots, context per slot, CPU threads
  int max_tokens_per_pass = 512;  // cuda: tokens per forward pass
  // Quantised matrices in their blocks (cpu; cuda dequantises to FP16 for
  // now and says so) or dequantised to FP16 at load.
  WeightFormat weights = WeightFormat::kNative;
};

struct LoadedBackend {
  std::unique_ptr<LlamaModel> model;  // host weights (cpu only); outlives backend
  std::unique_ptr<Backend> backend;
  uint64_t weight_bytes = 0;          // where the backend holds them
  uint64_t kv_cache_bytes = 0;
};

// Whether this binary was built with the CUDA backend.
bool CudaBackendBuilt();

// Loads `file`'s weights into the backend `spec` names, with a progress
// callback. Errors: an unknown kind (InvalidArgument), cuda in a build
// without CUDA (FailedPrecondition), a model that does not fit on the device
// (ResourceExhausted, with the numbers), and load errors.
absl::StatusOr<LoadedBackend> LoadBackend(const GgufFile& file, const BackendSpec& spec,
                                          const ProgressFn& progress = nullptr);

// The decoder kinds this build has ("host"), for messages.
std::string DecoderKinds();

// Builds the decoder `kind` names ("host": HostDecoder) over `backend`, with
// `max_slots` slots of `ctx_per_slot` positions and the tokenizer's
// end-of-generation ids. InvalidArgument names the known kinds.
absl::StatusOr<std::unique_ptr<Decoder>> MakeDecoder(const std::string& kind, Backend* backend,
                                                     const Tokenizer& tokenizer, int max_slots,
                                                     int ctx_per_slot);

}  // namespace m40llm
