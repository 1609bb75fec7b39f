// LoadBackend: the one place that knows every backend kind.
#include "server/backend_loader.h"

#include "absl/strings/str_cat.h"
#include "engine/cpu_backend.h"
#include "engine/status.h"
#include "persistent/host_decoder.h"
#include "spdlog/spdlog.h"
#if M40LLM_HAVE_CUDA
#include "cuda/cuda_backend.h"
#endif

namespace m40llm {

bool CudaBackendBuilt() {
#if M40LLM_HAVE_CUDA
  return true;
#else
  return false;
#endif
}

absl::StatusOr<LoadedBackend> LoadBackend(const GgufFile& file, const BackendSpec& spec,
                                          const ProgressFn& progress) {
  LoadedBackend out;
  if (spec.kind == "cpu") {
    ASSIGN_OR_RETURN(out.model,
                     LlamaModel::Load(file, progress, spec.options.n_threads, spec.weights));
    ASSIGN_OR_RETURN(auto cpu, CpuBackend::Create(out.model.get(), spec.options));
    out.weight_bytes = out.model->weight_bytes();
    out.backend = std::move(cpu);
  } else if (spec.kind == "cuda") {
#if M40LLM_HAVE_CUDA
    if (spec.weights == WeightFormat::kNative) {
      spdlog::info(
          "--weights native: the CUDA backend has no quantised kernels yet, so quantised "
          "matrices are dequantised to FP16 at load (as --weights f16)");
    }
    CudaBackendOptions o;
    o.base = spec.options;
    o.device = spec.device;
    o.max_tokens_per_pass = spec.max_tokens_per_pass;
    ASSIGN_OR_RETURN(auto cuda, CudaBackend::Create(file, o, progress));
    out.weight_bytes = cuda->weight_bytes();
    out.kv_cache_bytes = cuda->plan().kv_cache;
    out.backend = std::move(cuda);
#else
    return absl::FailedPreconditionError(
        "--backend cuda: this m40llm was built without CUDA (configure with a CUDA toolkit; "
        "see docs/gpu.md)");
#endif
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown backend '", spec.kind, "': use cpu or cuda"));
  }
  if (out.kv_cache_bytes == 0) {
    const ModelConfig& c = out.backend->config();
    const BackendOptions& bo = out.backend->options();
    out.kv_cache_bytes = 2ull * 2 * c.n_layer * bo.max_slots * c.n_head_kv *
                         static_cast<uint64_t>(bo.ctx_per_slot) * c.head_dim;
  }
  return out;
}

std::string DecoderKinds() { return "host"; }

absl::StatusOr<std::unique_ptr<Decoder>> MakeDecoder(const std::string& kind, Backend* backend,
                                                     const Tokenizer& tokenizer, int max_slots,
                                                     int ctx_per_slot) {
  DecoderOptions o;
  o.max_slots = max_slots;
  o.ctx_per_slot = ctx_per_slot;
  o.eog_ids = tokenizer.EogIds();
  if (kind == "host") {
    ASSIGN_OR_RETURN(auto d, HostDecoder::Create(backend, o));
    return std::unique_ptr<Decoder>(std::move(d));
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown decoder '", kind, "': this build has ", DecoderKinds()));
}

}  // namespace m40llm
