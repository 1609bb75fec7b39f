// CudaBackend: start-up (the device, the kernel probe, the memory plan,
// allocation, weight upload), the forward pass as a sequence of pieces on a
// pass context's stream, device sampling, and faults as health. The parts
// live beside it: device_model.h (weights, KV cache, memory plan),
// pass_context.h (stream, scratch, staging), layer_step.h (the launches of a
// pass), graph_cache.h (captured decode steps).
#include "cuda/cuda_backend.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <span>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cuda/attention.cuh"
#include "cuda/cuda_check.h"
#include "cuda/device_memory.h"
#include "cuda/device_model.h"
#include "cuda/elementwise.cuh"
#include "cuda/fault.cuh"
#include "cuda/layer_step.h"
#include "cuda/pass_context.h"
#include "cuda/sampling.cuh"
#include "engine/status.h"
#include "spdlog/spdlog.h"

namespace m40llm {

struct CudaBackend::Impl {
  int device = 0;
  gpu::DeviceModel model;
  gpu::PassContext ctx[gpu::kPassContexts];
  std::mutex ctx_mu;
  std::condition_variable ctx_cv;
  int64_t T = 0;
  std::atomic<int64_t> passes{0};
  int fault_after = 0;
  bool decode_graphs = true;
};

namespace {

// Runs one tiny kernel so that a build without code for this GPU (e.g. CUDA 13
// binaries, which cannot target Maxwell, on a Tesla M40) is refused at start-up
// with a clear message instead of failing every request.
absl::Status ProbeKernels(const cudaDeviceProp& prop, int device) {
  ASSIGN_OR_RETURN(auto buf, gpu::DeviceBuffer<float>::Allocate(2));
  RETURN_IF_ERROR(buf.FillBytes(0));
  RETURN_IF_ERROR(gpu::LaunchAdd(buf.get(), buf.get() + 1, 1, buf.get(), nullptr));
  const cudaError_t err = cudaDeviceSynchronize();
  if (err == cudaErrorNoKernelImageForDevice || err == cudaErrorInvalidDeviceFunction ||
      err == cudaErrorUnsupportedPtxVersion) {
    static_cast<void>(cudaGetLastError());
    return absl::FailedPreconditionError(absl::StrFormat(
        "CUDA device %d (%s) is sm_%d%d, and this build has no kernels for it (%s): rebuild with "
        "a CUDA toolkit that targets it and CMAKE_CUDA_ARCHITECTURES including %d%d (CUDA 12.x "
        "or older for the Maxwell M40; see docs/gpu.md)",
        device, prop.name, prop.major, prop.minor, cudaGetErrorName(err), prop.major,
        prop.minor));
  }
  CUDA_RETURN_IF_ERROR(err);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<CudaBackend>> CudaBackend::Create(const GgufFile& file,
                                                                const CudaBackendOptions& opts,
                                                                const ProgressFn& progress) {
  auto b = std::unique_ptr<CudaBackend>(new CudaBackend());
  ASSIGN_OR_RETURN(b->config_, ReadModelConfig(file));
  const ModelConfig& c = b->config_;
  b->opts_ = opts;
  BackendOptions& bo = b->opts_.base;
  if (bo.ctx_per_slot <= 0) bo.ctx_per_slot = c.n_ctx_train;
  if (bo.max_slots <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("max_slots must be positive, got ",
                                                   bo.max_slots));
  }
  if (b->opts_.max_tokens_per_pass < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_tokens_per_pass must be positive, got ", b->opts_.max_tokens_per_pass));
  }
  if (c.head_dim % gpu::kAttentionHeadDimAlign != 0 || c.head_dim > gpu::kAttentionMaxHeadDim) {
    return absl::UnimplementedError(absl::StrCat(
        "the CUDA backend needs head_dim to be a multiple of ", gpu::kAttentionHeadDimAlign,
        " up to ", gpu::kAttentionMaxHeadDim, "; this model has ", c.head_dim));
  }

  int n_dev = 0;
  if (const cudaError_t e = cudaGetDeviceCount(&n_dev); e != cudaSuccess || n_dev == 0) {
    static_cast<void>(cudaGetLastError());
    return absl::FailedPreconditionError(absl::StrCat(
        "--backend cuda: no usable CUDA device here (",
        e != cudaSuccess ? absl::StrCat(cudaGetErrorName(e), ": ", cudaGetErrorString(e))
                         : std::string("cudaGetDeviceCount found none"),
        "); use --backend cpu"));
  }
  if (opts.device < 0 || opts.device >= n_dev) {
    return absl::InvalidArgumentError(absl::StrCat("--device ", opts.device,
                                                   " does not exist: this machine has ", n_dev,
                                                   " CUDA device(s)"));
  }
  CUDA_RETURN_IF_ERROR(cudaSetDevice(opts.device));
  cudaDeviceProp prop{};
  CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, opts.device));
  RETURN_IF_ERROR(ProbeKernels(prop, opts.device));
  size_t free = 0, total = 0;
  CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free, &total));
  b->device_desc_ = absl::StrFormat("CUDA device %d: %s (sm_%d%d, %.1f GiB)", opts.device,
                                    prop.name, prop.major, prop.minor, gpu::GiB(total));
  b->plan_ = PlanCudaMemory(c, b->opts_, free, total);
  RETURN_IF_ERROR(CheckCudaPlanFits(b->plan_, c, b->opts_, b->device_desc_));

  b->impl_ = std::make_unique<Impl>();
  Impl& d = *b->impl_;
  d.device = opts.device;
  d.fault_after = opts.fault_after_passes;
  d.decode_graphs = opts.decode_graphs;
  if (const char* e = std::getenv("M40LLM_CUDA_GRAPHS")) d.decode_graphs = std::atoi(e) != 0;
  if (d.fault_after == 0) {
    if (const char* e = std::getenv("M40LLM_CUDA_FAULT_AFTER_PASSES")) d.fault_after = std::atoi(e);
  }
  RETURN_IF_ERROR(d.model.Allocate(c, bo, b->plan_.weights));
  const gpu::ScratchShape s = gpu::ScratchFor(c, b->opts_.max_tokens_per_pass, bo.ctx_per_slot);
  d.T = s.T;
  for (gpu::PassContext& p : d.ctx) {
    RETURN_IF_ERROR(gpu::AllocatePassContext(c, s, bo.ctx_per_slot, &p));
  }

  RETURN_IF_ERROR(d.model.LoadWeights(file, c, progress, bo.n_threads, &b->clamped_));
  CUDA_RETURN_IF_ERROR(cudaDeviceSynchronize());
  spdlog::info(
      "{}: weights {:.2f} GiB, KV cache {:.2f} GiB ({} slots x {} positions), scratch "
      "{:.2f} GiB; {:.2f} GiB were free",
      b->device_desc_, gpu::GiB(b->plan_.weights), gpu::GiB(b->plan_.kv_cache), bo.max_slots,
      bo.ctx_per_slot, gpu::GiB(b->plan_.scratch), gpu::GiB(b->plan_.device_free));
  return b;
}

CudaBackend::~CudaBackend() {
  if (impl_) {
    static_cast<void>(cudaSetDevice(impl_->device));
    static_cast<void>(cudaDeviceSynchronize());
  }
}

uint64_t CudaBackend::weight_bytes_per_step() const {
  const ModelConfig& c = config_;
  // Every layer matrix plus the LM head; the embedding table is gathered, not
  // streamed (unless it is also the tied LM head, counted once).
  uint64_t b = gpu::MatrixBytes(c.n_vocab, c.n_embd);
  b += static_cast<uint64_t>(c.n_layer) *
       (gpu::MatrixBytes(c.q_dim(), c.n_embd) + 2 * gpu::MatrixBytes(c.kv_dim(), c.n_embd) +
        gpu::MatrixBytes(c.n_embd, c.q_dim()) + 2 * gpu::MatrixBytes(c.n_ff, c.n_embd) +
        gpu::MatrixBytes(c.n_embd, c.n_ff));
  return b;
}

BackendMemory CudaBackend::memory() const {
  BackendMemory m;
  m.weights = plan_.weights;
  m.kv_cache = plan_.kv_cache;
  m.scratch = plan_.scratch;
  m.device_total = plan_.device_total;
  // After a fault the context cannot answer; report what was allocated.
  m.device_used = plan_.device_total - plan_.device_free + plan_.weights + plan_.kv_cache +
                  plan_.scratch;
  size_t free = 0, total = 0;
  if (health().ok() && cudaSetDevice(impl_->device) == cudaSuccess &&
      cudaMemGetInfo(&free, &total) == cudaSuccess) {
    m.device_used = total - free;
    m.device_total = total;
  }
  return m;
}

absl::Status CudaBackend::health() const {
  std::lock_guard<std::mutex> lock(fault_mu_);
  return fault_;
}

absl::Status CudaBackend::Fail(const absl::Status& s) {
  if (gpu::IsStickyCudaFault(s)) {
    std::lock_guard<std::mutex> lock(fault_mu_);
    if (fault_.ok()) {
      fault_ = absl::InternalError(absl::StrCat(
          "the GPU faulted and the CUDA backend cannot continue: ", s.message()));
      spdlog::error("{}: {}", device_desc_, std::string(fault_.message()));
    }
    return fault_;
  }
  return s;
}

namespace {

// A batch flattened into tokens: token t is tok[t] of slot slot_of[t] at
// position pos_of[t], and gives a row of results when emits[t].
struct FlatBatch {
  std::vector<int32_t> tok, slot_of, pos_of;
  std::vector<uint8_t> emits;
  int64_t n_rows = 0;  // tokens that give results

  int64_t size() const { return static_cast<int64_t>(tok.size()); }
};

FlatBatch Flatten(std::span<const SeqChunk> batch) {
  FlatBatch f;
  for (const SeqChunk& s : batch) {
    for (size_t k = 0; k < s.tokens.size(); ++k) {
      f.emits.push_back(s.all_logits || k + 1 == s.tokens.size());
      f.tok.push_back(s.tokens[k]);
      f.slot_of.push_back(s.slot);
      f.pos_of.push_back(s.pos + static_cast<int32_t>(k));
    }
  }
  for (uint8_t e : f.emits) f.n_rows += e;
  return f;
}

// A pass context taken for one pass: waits until one is free and gives it
// back when the lease ends.
class PassLease {
 public:
  explicit PassLease(CudaBackend::Impl& d) : d_(d) {
    std::unique_lock<std::mutex> lock(d_.ctx_mu);
    d_.ctx_cv.wait(lock, [&] {
      for (gpu::PassContext& ctx : d_.ctx) {
        if (!ctx.busy) return true;
      }
      return false;
    });
    for (gpu::PassContext& ctx : d_.ctx) {
      if (!ctx.busy) {
        p_ = &ctx;
        p_->busy = true;
        break;
      }
    }
  }
  PassLease(const PassLease&) = delete;
  PassLease& operator=(const PassLease&) = delete;
  ~PassLease() {
    std::lock_guard<std::mutex> lock(d_.ctx_mu);
    p_->busy = false;
    d_.ctx_cv.notify_one();
  }

  gpu::PassContext& context() const { return *p_; }

 private:
  CudaBackend::Impl& d_;
  gpu::PassContext* p_ = nullptr;
};

// Where a pass's result rows go, in order: logits into `logits` (Forward),
// or tokens sampled with specs[row] into `samples` (ForwardSample).
struct PassOutput {
  std::span<const SampleSpec> specs;
  ForwardOutput* logits = nullptr;
  std::vector<SampleResult>* samples = nullptr;
  int64_t row = 0;  // the next result row

  bool sampling() const { return samples != nullptr; }
};

// Stages tokens [a, a + n) of `flat` into p.ints in one copy on `st`: ids,
// slots, positions and lengths (position + 1), then the runs of consecutive
// positions of one slot within the piece, the chunks of the prefill
// attention kernel (slot, first position, length, first row).
absl::StatusOr<gpu::PieceInputs> StagePiece(const FlatBatch& flat, int64_t a, int64_t n,
                                            gpu::PassContext& p, cudaStream_t st) {
  gpu::PieceInputs in;
  in.n = n;
  int32_t* hi = p.host_ints.data();
  for (int64_t t = 0; t < n; ++t) {
    hi[t] = flat.tok[a + t];
    hi[n + t] = flat.slot_of[a + t];
    hi[2 * n + t] = flat.pos_of[a + t];
    hi[3 * n + t] = flat.pos_of[a + t] + 1;
    in.max_context = std::max(in.max_context, flat.pos_of[a + t] + 1);
  }
  int32_t* hc = hi + 4 * n;
  for (int64_t t = 0; t < n; ++t) {
    const bool starts = t == 0 || flat.slot_of[a + t] != flat.slot_of[a + t - 1] ||
                        flat.pos_of[a + t] != flat.pos_of[a + t - 1] + 1;
    if (starts) {
      hc[in.n_chunks] = flat.slot_of[a + t];
      hc[n + in.n_chunks] = flat.pos_of[a + t];
      hc[2 * n + in.n_chunks] = 0;
      hc[3 * n + in.n_chunks] = static_cast<int32_t>(t);
      ++in.n_chunks;
    }
    const int c_i = in.n_chunks - 1;
    ++hc[2 * n + c_i];
    in.max_chunk = std::max(in.max_chunk, hc[2 * n + c_i]);
  }
  int32_t* di = p.ints.get();
  CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(di, hi, 8 * n * sizeof(int32_t), cudaMemcpyHostToDevice, st));
  in.tok = di;
  in.slot = di + n;
  in.pos = di + 2 * n;
  in.len = di + 3 * n;
  in.chunks = di + 4 * n;
  return in;
}

// Copies the results of the m rows in p (samples or logits) to o's next m
// rows and advances o.row; waits for the stream.
absl::Status FetchRows(const ModelConfig& c, gpu::PassContext& p, int64_t m, cudaStream_t st,
                       PassOutput& o) {
  if (o.sampling()) {
    RETURN_IF_ERROR(gpu::FetchSamples(p, static_cast<int>(m), st, o.samples->data() + o.row));
  } else {
    RETURN_IF_ERROR(gpu::FetchLogits(c, p, m, st, o.logits->logits.data() + o.row * c.n_vocab));
  }
  o.row += m;
  return absl::OkStatus();
}

// A decode step of up to kLogitRows sequences, every token giving a row,
// replayed from the CUDA graph captured the first time its shape (tokens,
// sampling or not) comes up: inputs are staged into the same buffers before
// the launch and results copied out after it.
absl::Status RunDecodeGraph(const ModelConfig& c, const gpu::DeviceModel& m,
                            const gpu::PieceInputs& piece, gpu::PassContext& p, cudaStream_t st,
                            PassOutput& o) {
  const int n = static_cast<int>(piece.n);
  if (o.sampling()) {
    RETURN_IF_ERROR(gpu::StageSampleInputs(m.ctx_per_slot, p, o.specs.subspan(o.row, n), st));
  }
  RETURN_IF_ERROR(p.graphs.Launch(n, o.sampling(), st, [&]() -> absl::Status {
    RETURN_IF_ERROR(gpu::EnqueueLayers(c, m, piece, m.ctx_per_slot, p, st));
    RETURN_IF_ERROR(gpu::EnqueueLmHead(c, m, p.x, n, p, st));
    if (o.sampling()) RETURN_IF_ERROR(gpu::EnqueueSample(c, m.ctx_per_slot, p, n, st));
    return absl::OkStatus();
  }));
  return FetchRows(c, p, n, st, o);
}

// The final norm and LM head for the tokens `rows` of the piece in p.x,
// kLogitRows at a time (gathered into p.h where not contiguous), and their
// results.
absl::Status RunLmHeads(const ModelConfig& c, const gpu::DeviceModel& m,
                        const std::vector<int64_t>& rows, gpu::PassContext& p, cudaStream_t st,
                        PassOutput& o) {
  const int64_t n_embd = c.n_embd;
  for (size_t r0 = 0; r0 < rows.size(); r0 += gpu::kLogitRows) {
    const int64_t n = std::min<int64_t>(gpu::kLogitRows, static_cast<int64_t>(rows.size() - r0));
    const float* src = p.x + rows[r0] * n_embd;
    bool contiguous = true;
    for (int64_t i = 1; i < n; ++i) contiguous &= rows[r0 + i] == rows[r0] + i;
    if (!contiguous) {
      for (int64_t i = 0; i < n; ++i) {
        CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(p.h + i * n_embd, p.x + rows[r0 + i] * n_embd,
                                             n_embd * sizeof(float), cudaMemcpyDeviceToDevice, st));
      }
      src = p.h;
    }
    RETURN_IF_ERROR(gpu::EnqueueLmHead(c, m, src, n, p, st));
    if (o.sampling()) {
      RETURN_IF_ERROR(gpu::StageSampleInputs(m.ctx_per_slot, p, o.specs.subspan(o.row, n), st));
      RETURN_IF_ERROR(gpu::EnqueueSample(c, m.ctx_per_slot, p, static_cast<int>(n), st));
    }
    RETURN_IF_ERROR(FetchRows(c, p, n, st, o));
  }
  return absl::OkStatus();
}

// The pass on p: the batch in pieces of at most d.T tokens, in order.
absl::Status RunPieces(const ModelConfig& c, CudaBackend::Impl& d, const FlatBatch& flat,
                       gpu::PassContext& p, PassOutput& o) {
  CUDA_RETURN_IF_ERROR(cudaSetDevice(d.device));
  cudaStream_t st = p.stream.get();
  if (d.fault_after > 0 && d.passes.fetch_add(1) + 1 > d.fault_after) {
    spdlog::warn("injecting a device fault (M40LLM_CUDA_FAULT_AFTER_PASSES={})", d.fault_after);
    RETURN_IF_ERROR(gpu::LaunchTrapForTesting(st));
  }
  for (int64_t a = 0; a < flat.size(); a += d.T) {
    const int64_t n = std::min(d.T, flat.size() - a);
    ASSIGN_OR_RETURN(const gpu::PieceInputs piece, StagePiece(flat, a, n, p, st));
    std::vector<int64_t> rows;  // tokens of the piece that give results
    for (int64_t t = 0; t < n; ++t) {
      if (flat.emits[a + t]) rows.push_back(t);
    }
    if (d.decode_graphs && !piece.prefill_attention() && static_cast<int64_t>(rows.size()) == n &&
        n <= gpu::kLogitRows) {
      RETURN_IF_ERROR(RunDecodeGraph(c, d.model, piece, p, st, o));
      continue;
    }
    RETURN_IF_ERROR(gpu::EnqueueLayers(c, d.model, piece, piece.max_context, p, st));
    RETURN_IF_ERROR(RunLmHeads(c, d.model, rows, p, st, o));
    // The next piece rewrites the staged ints: wait for this one.
    CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(st));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CudaBackend::Forward(std::span<const SeqChunk> batch, ForwardOutput* out) {
  return Run(batch, {}, out, nullptr);
}

absl::Status CudaBackend::ForwardSample(std::span<const SeqChunk> batch,
                                        std::span<const SampleSpec> specs,
                                        std::vector<SampleResult>* out) {
  RETURN_IF_ERROR(ValidateSampleSpecs(batch, specs));
  // Vocabularies beyond the sampling kernel's sort keys sample on the host.
  if (config_.n_vocab > gpu::kSampleMaxVocab) return Backend::ForwardSample(batch, specs, out);
  return Run(batch, specs, nullptr, out);
}

absl::Status CudaBackend::Run(std::span<const SeqChunk> batch, std::span<const SampleSpec> specs,
                              ForwardOutput* out, std::vector<SampleResult>* samples) {
  RETURN_IF_ERROR(ValidateBatch(config_, opts_.base, batch));
  RETURN_IF_ERROR(health());
  const FlatBatch flat = Flatten(batch);
  PassOutput o{specs, out, samples};
  if (o.sampling()) {
    samples->resize(static_cast<size_t>(flat.n_rows));
  } else {
    out->rows = flat.n_rows;
    out->logits.resize(static_cast<size_t>(flat.n_rows) * config_.n_vocab);
  }
  PassLease lease(*impl_);
  gpu::PassContext& p = lease.context();
  absl::Status s = RunPieces(config_, *impl_, flat, p, o);
  if (!s.ok()) {
    // Make sure nothing of this pass is still running before the context is
    // reused, and learn whether the error left the device unusable.
    const cudaError_t sync = cudaStreamSynchronize(p.stream.get());
    if (sync != cudaSuccess && gpu::IsStickyCudaError(sync) && !gpu::IsStickyCudaFault(s)) {
      s = gpu::CudaStatus(sync, "cudaStreamSynchronize(pass)", __FILE__, __LINE__);
    }
    return Fail(s);
  }
  return absl::OkStatus();
}

}  // namespace m40llm
