// The command -> event conformance suite (tests/persistent/decoder_conformance.h)
// for the decoders that run on the CUDA backend: the host decoder, whose
// steps are one ForwardSample each (device sampling, decode graphs). Skips
// with the reason where no CUDA device is present.
#include <memory>
#include <string>

#include "cuda/cuda_backend.h"
#include "engine/demo_model.h"
#include "engine/gguf.h"
#include "gtest/gtest.h"
#include "persistent/host_decoder.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/persistent/decoder_conformance.h"
#include "tests/support/test_support.h"

namespace m40llm::testing {
namespace {

struct CudaModel {
  std::unique_ptr<GgufFile> file;
  std::unique_ptr<CudaBackend> backend;
  DecoderTarget target;
};

// A small random model on the CUDA backend, with kSuiteSlots + 1 slots.
CudaModel* Model() {
  static CudaModel* m = [] {
    auto* m = new CudaModel;
    if (auto no_device = NoCudaDeviceReason()) {
      m->target.skip_reason = *no_device;
      return m;
    }
    RandomModelSpec spec;
    spec.n_embd = 128;
    spec.n_layer = 2;
    spec.n_head = 4;
    spec.n_head_kv = 2;
    spec.n_ff = 256;
    spec.n_ctx = kSuiteContext;
    spec.seed = 34;
    const std::string path = TempDir() + "/cuda_decoder.gguf";
    absl::Status st = WriteRandomLlama(spec, path);
    auto f = st.ok() ? GgufFile::Open(path) : absl::StatusOr<std::unique_ptr<GgufFile>>(st);
    if (!f.ok()) {
      m->target.skip_reason = std::string(f.status().message());
      return m;
    }
    m->file = std::move(*f);
    CudaBackendOptions o;
    o.base.max_slots = kSuiteSlots + 1;
    o.base.ctx_per_slot = kSuiteContext;
    o.max_tokens_per_pass = 64;
    auto b = CudaBackend::Create(*m->file, o);
    if (!b.ok()) {
      // A device is there, so this is a failure, not a skip.
      m->target.skip_reason.clear();
      ADD_FAILURE() << b.status();
      return m;
    }
    m->backend = std::move(*b);
    UseHostDecoder(m->backend.get(), &m->target);
    return m;
  }();
  return m;
}

DecoderTarget* HostOnCuda() { return &Model()->target; }

INSTANTIATE_TEST_SUITE_P(HostOnCuda, DecoderConformance, ::testing::Values(&HostOnCuda));

}  // namespace
}  // namespace m40llm::testing
