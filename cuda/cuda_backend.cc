// CudaBackend: memory plan, weight upload, and the forward pass as a sequence
// of kernel launches on a pass context's stream.
#include "cuda/cuda_backend.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cuda/attention.cuh"
#include "cuda/attention_prefill.cuh"
#include "cuda/cuda_check.h"
#include "cuda/device_memory.h"
#include "cuda/elementwise.cuh"
#include "cuda/embedding.cuh"
#include "cuda/fault.cuh"
#include "cuda/gemm.cuh"
#include "cuda/kv_cache.cuh"
#include "cuda/matvec.cuh"
#include "cuda/rmsnorm.cuh"
#include "cuda/rope.cuh"
#include "cuda/sampling.cuh"
#include "engine/status.h"
#include "spdlog/spdlog.h"

namespace m40llm {
namespace {

constexpr int kPassContexts = 2;             // prefill and decode run side by side
constexpr int kLogitRows = 64;               // LM-head rows per launch (and device buffer)
constexpr uint64_t kReserveBytes = 256ull << 20;  // CUDA context, allocator slack

int64_t PaddedCols(int64_t cols) {
  return (cols + gpu::kMatVecRowAlignHalves - 1) / gpu::kMatVecRowAlignHalves *
         gpu::kMatVecRowAlignHalves;
}

uint64_t MatrixBytes(int64_t rows, int64_t cols) {
  return static_cast<uint64_t>(rows) * PaddedCols(cols) * sizeof(uint16_t);
}

double GiB(uint64_t b) { return static_cast<double>(b) / (1ull << 30); }

// Where one LM-head chunk's sampling inputs sit in the staging buffers
// (pinned and device, same layout): SamplingParams, stream, history length and
// step per row, then each row's penalty window of up to H tokens.
struct SampleLayout {
  size_t params = 0, streams = 0, hist_len = 0, steps = 0, hist = 0, bytes = 0;
  int64_t H = 0;  // tokens per history row
  explicit SampleLayout(int64_t ctx_per_slot) : H(ctx_per_slot) {
    auto align = [](size_t b) { return (b + 15) / 16 * 16; };
    params = 0;
    streams = align(params + kLogitRows * sizeof(SamplingParams));
    hist_len = align(streams + kLogitRows * sizeof(uint64_t));
    steps = align(hist_len + kLogitRows * sizeof(int32_t));
    hist = align(steps + kLogitRows * sizeof(int32_t));
    bytes = align(hist + static_cast<size_t>(kLogitRows) * H * sizeof(int32_t));
  }
};

// Bytes of one pass context's device scratch.
struct ScratchShape {
  int64_t T;  // tokens per pass
  uint64_t floats = 0, ints = 0, attn_ws = 0, sample = 0;
};

ScratchShape ScratchFor(const ModelConfig& c, const CudaBackendOptions& o) {
  ScratchShape s;
  s.T = std::max(1, o.max_tokens_per_pass);
  const int64_t T = s.T;
  // x, h, proj (n_embd); q, att (q_dim); k, v (kv_dim); gate, up (n_ff); logits.
  s.floats = static_cast<uint64_t>(T) * (3 * c.n_embd + 2 * c.q_dim() + 2 * c.kv_dim() + 2 * c.n_ff) +
             static_cast<uint64_t>(kLogitRows) * (c.n_vocab + c.q_dim() + 2 * c.kv_dim() + 2 * c.n_ff) +
             4 * 16;  // alignment of each piece
  // ids, slots, positions, lengths (T each); chunk slot, pos, len, row (up to T each)
  s.ints = static_cast<uint64_t>(T) * 8 + 64;
  s.attn_ws = gpu::DecodeAttentionWorkspaceBytes(static_cast<int>(T), c.n_head, c.head_dim,
                                                 o.base.ctx_per_slot);
  s.sample = SampleLayout(o.base.ctx_per_slot).bytes +
             gpu::SampleWorkspaceBytes(kLogitRows, c.n_vocab) +
             kLogitRows * sizeof(gpu::DeviceSample);
  return s;
}

uint64_t WeightBytesFor(const ModelConfig& c) {
  const uint64_t per_layer = MatrixBytes(c.q_dim(), c.n_embd) + 2 * MatrixBytes(c.kv_dim(), c.n_embd) +
                             MatrixBytes(c.n_embd, c.q_dim()) + 2 * MatrixBytes(c.n_ff, c.n_embd) +
                             MatrixBytes(c.n_embd, c.n_ff) + 2ull * c.n_embd * sizeof(float);
  uint64_t b = per_layer * c.n_layer + MatrixBytes(c.n_vocab, c.n_embd) +
               static_cast<uint64_t>(c.n_embd) * sizeof(float);
  if (!c.tied_output) b += MatrixBytes(c.n_vocab, c.n_embd);
  if (c.has_rope_freqs) b += static_cast<uint64_t>(c.n_rot / 2) * sizeof(float);
  return b;
}

}  // namespace

CudaMemoryPlan PlanCudaMemory(const ModelConfig& c, const CudaBackendOptions& o, uint64_t free,
                              uint64_t total) {
  CudaMemoryPlan p;
  p.weights = WeightBytesFor(c);
  p.kv_bytes_per_position =
      2ull * c.n_layer * c.n_head_kv * static_cast<uint64_t>(c.head_dim) * sizeof(uint16_t);
  p.kv_cache = p.kv_bytes_per_position * static_cast<uint64_t>(std::max(0, o.base.max_slots)) *
               static_cast<uint64_t>(std::max(0, o.base.ctx_per_slot));
  const ScratchShape s = ScratchFor(c, o);
  p.scratch =
      kPassContexts * (s.floats * sizeof(float) + s.ints * sizeof(int32_t) + s.attn_ws + s.sample);
  p.reserve = kReserveBytes;
  p.device_free = free;
  p.device_total = total;
  return p;
}

absl::Status CheckCudaPlanFits(const CudaMemoryPlan& p, const ModelConfig& c,
                               const CudaBackendOptions& o, const std::string& device) {
  if (p.need() <= p.device_free) return absl::OkStatus();
  std::string msg = absl::StrFormat(
      "the model does not fit on %s: it needs %.2f GiB (weights %.2f GiB + KV cache %.2f GiB for "
      "%d slots x %d positions + scratch %.2f GiB + reserve %.2f GiB) but %.2f GiB of %.2f GiB "
      "are free",
      device, GiB(p.need()), GiB(p.weights), GiB(p.kv_cache), o.base.max_slots,
      o.base.ctx_per_slot, GiB(p.scratch), GiB(p.reserve), GiB(p.device_free),
      GiB(p.device_total));
  const uint64_t fixed = p.weights + p.scratch + p.reserve;
  if (fixed >= p.device_free) {
    absl::StrAppend(&msg, "; the weights and scratch alone do not fit (a smaller "
                          "--max-tokens-per-pass shrinks scratch; a smaller model is needed)");
  } else {
    const uint64_t kv_budget = p.device_free - fixed;
    const uint64_t per_slot = p.kv_bytes_per_position * static_cast<uint64_t>(o.base.ctx_per_slot);
    const uint64_t per_pos = p.kv_bytes_per_position * static_cast<uint64_t>(o.base.max_slots);
    const uint64_t max_batch = per_slot ? kv_budget / per_slot : 0;
    const uint64_t max_ctx = per_pos ? kv_budget / per_pos : 0;
    absl::StrAppend(&msg, "; what fits: --max-batch ", max_batch, " at context ",
                    o.base.ctx_per_slot, ", or --ctx-per-slot ", max_ctx, " at batch ",
                    o.base.max_slots);
  }
  (void)c;
  return absl::ResourceExhaustedError(msg);
}

// ---- device state ------------------------------------------------------------

namespace {

struct DeviceMatrix {
  const uint16_t* w = nullptr;  // (rows, ld) FP16 bits
  int64_t rows = 0, cols = 0, ld = 0;
};

// A layer's weights. wq, wk and wv are consecutive rows of one allocation,
// viewed whole as qkv (q_dim + 2 kv_dim rows), and gate and up likewise as
// gate_up (2 n_ff rows): decode steps run one product for each, prompts the
// separate ones.
struct DeviceLayer {
  const float* attn_norm = nullptr;  // (n_embd)
  DeviceMatrix wq, wk, wv, wo;
  DeviceMatrix qkv;
  const float* ffn_norm = nullptr;  // (n_embd)
  DeviceMatrix gate, up, down;
  DeviceMatrix gate_up;
};

// An instantiated CUDA graph.
struct GraphExec {
  cudaGraphExec_t exec = nullptr;
  GraphExec() = default;
  GraphExec(const GraphExec&) = delete;
  GraphExec& operator=(const GraphExec&) = delete;
  ~GraphExec() {
    if (exec != nullptr) static_cast<void>(cudaGraphExecDestroy(exec));
  }
};

// One stream and the scratch one forward pass needs.
struct PassContext {
  gpu::CudaStream stream;
  gpu::DeviceBuffer<float> floats;  // carved into the activations below
  float *x = nullptr, *h = nullptr, *proj = nullptr;  // (T, n_embd)
  float *q = nullptr, *att = nullptr;                 // (T, q_dim)
  float *k = nullptr, *v = nullptr;                   // (T, kv_dim)
  float *gate = nullptr, *up = nullptr;               // (T, n_ff)
  float* logits = nullptr;                            // (kLogitRows, n_vocab)
  float* qkv = nullptr;      // (kLogitRows, q_dim + 2 kv_dim): fused decode product
  float* gate_up = nullptr;  // (kLogitRows, 2 n_ff): fused decode product
  gpu::DeviceBuffer<int32_t> ints;  // ids, slots, positions, lengths (T each), chunks (4 x T)
  gpu::DeviceBuffer<uint8_t> attn_ws;
  gpu::PinnedBuffer<int32_t> host_ints;   // staging for `ints`
  gpu::PinnedBuffer<float> host_logits;   // (kLogitRows, n_vocab)
  // Device sampling (ForwardSample): staged inputs (SampleLayout), the
  // kernel's workspace, and its results.
  gpu::DeviceBuffer<uint8_t> sample_in;
  gpu::PinnedBuffer<uint8_t> host_sample_in;
  gpu::DeviceBuffer<uint8_t> sample_ws;
  gpu::DeviceBuffer<gpu::DeviceSample> sample_out;
  gpu::PinnedBuffer<gpu::DeviceSample> host_sample_out;
  // Captured decode steps, by DecodeGraphKey: one graph launch replays the
  // whole step (embedding to LM head, and sampling) instead of one launch
  // per operation.
  std::map<int, std::unique_ptr<GraphExec>> graphs;
  bool busy = false;
};

}  // namespace

struct CudaBackend::Impl {
  int device = 0;
  gpu::DeviceBuffer<uint8_t> weights;  // one arena for every weight
  uint64_t weight_used = 0;
  DeviceMatrix token_embd, output;
  const float* output_norm = nullptr;
  const float* rope_freqs = nullptr;
  std::vector<DeviceLayer> layers;
  gpu::DeviceBuffer<uint16_t> k_cache, v_cache;  // (n_layer, slots, kv_heads, ctx, head_dim)
  uint64_t layer_cache_values = 0;               // values per layer in each cache
  PassContext ctx[kPassContexts];
  std::mutex ctx_mu;
  std::condition_variable ctx_cv;
  int64_t T = 0;
  std::atomic<int64_t> passes{0};
  int fault_after = 0;
  bool decode_graphs = true;

  const DeviceMatrix& lm_head(const ModelConfig& c) const {
    return c.tied_output ? token_embd : output;
  }

  // Carves `bytes` (rounded up to 256) from the weight arena.
  absl::StatusOr<void*> Carve(uint64_t bytes) {
    const uint64_t at = weight_used;
    weight_used += (bytes + 255) / 256 * 256;
    if (weight_used > weights.size()) {
      return absl::InternalError("CUDA backend: the weight arena is smaller than planned");
    }
    return static_cast<void*>(weights.get() + at);
  }
};

namespace {

// Streams weights into the device arena: each matrix is dequantised into one
// reused host buffer, then copied into its padded device rows.
class DeviceSink : public WeightSink {
 public:
  DeviceSink(CudaBackend::Impl* d, const ModelConfig& c) : d_(d), c_(c) {}

  absl::StatusOr<uint16_t*> MatrixBuffer(WeightId, int, int64_t rows, int64_t cols) override {
    host_.resize(static_cast<size_t>(rows * cols));
    return host_.data();
  }

  absl::Status MatrixDone(WeightId id, int layer, int64_t rows, int64_t cols) override {
    DeviceMatrix m;
    m.rows = rows;
    m.cols = cols;
    // The embedding table keeps dense rows for the gather; every other
    // matrix gets 16-byte rows for the matmul kernels' fast path.
    m.ld = id == WeightId::kTokenEmbd ? cols : PaddedCols(cols);
    ASSIGN_OR_RETURN(void* dst, Place(id, layer, rows, cols));
    if (m.ld != cols) {
      CUDA_RETURN_IF_ERROR(cudaMemset(dst, 0, MatrixBytes(rows, cols)));
    }
    CUDA_RETURN_IF_ERROR(cudaMemcpy2D(dst, m.ld * sizeof(uint16_t), host_.data(),
                                      cols * sizeof(uint16_t), cols * sizeof(uint16_t), rows,
                                      cudaMemcpyHostToDevice));
    m.w = static_cast<const uint16_t*>(dst);
    switch (id) {
      case WeightId::kTokenEmbd: d_->token_embd = m; break;
      case WeightId::kOutput: d_->output = m; break;
      case WeightId::kWq: d_->layers[layer].wq = m; break;
      case WeightId::kWk: d_->layers[layer].wk = m; break;
      case WeightId::kWv: d_->layers[layer].wv = m; break;
      case WeightId::kWo: d_->layers[layer].wo = m; break;
      case WeightId::kGate: d_->layers[layer].gate = m; break;
      case WeightId::kUp: d_->layers[layer].up = m; break;
      case WeightId::kDown: d_->layers[layer].down = m; break;
      default: return absl::InternalError("DeviceSink: not a matrix");
    }
    return absl::OkStatus();
  }

  absl::Status Vector(WeightId id, int layer, std::vector<float> values) override {
    ASSIGN_OR_RETURN(void* dst, d_->Carve(values.size() * sizeof(float)));
    CUDA_RETURN_IF_ERROR(cudaMemcpy(dst, values.data(), values.size() * sizeof(float),
                                    cudaMemcpyHostToDevice));
    const float* p = static_cast<const float*>(dst);
    switch (id) {
      case WeightId::kOutputNorm: d_->output_norm = p; break;
      case WeightId::kRopeFreqs: d_->rope_freqs = p; break;
      case WeightId::kAttnNorm: d_->layers[layer].attn_norm = p; break;
      case WeightId::kFfnNorm: d_->layers[layer].ffn_norm = p; break;
      default: return absl::InternalError("DeviceSink: not a vector");
    }
    return absl::OkStatus();
  }

 private:
  // Device rows for a matrix: its own carve, except that wq carves room for
  // wq, wk, wv together (and gate for gate, up), which then follow it.
  absl::StatusOr<void*> Place(WeightId id, int layer, int64_t rows, int64_t cols) {
    DeviceLayer* L = layer >= 0 ? &d_->layers[layer] : nullptr;
    const int64_t ld = PaddedCols(cols);
    auto fused = [&](DeviceMatrix* whole, int64_t total_rows) -> absl::StatusOr<void*> {
      ASSIGN_OR_RETURN(void* base, d_->Carve(MatrixBytes(total_rows, cols)));
      *whole = DeviceMatrix{static_cast<const uint16_t*>(base), total_rows, cols, ld};
      return base;
    };
    auto after = [&](const DeviceMatrix& prev) -> absl::StatusOr<void*> {
      if (prev.w == nullptr) return absl::InternalError("DeviceSink: fused weights out of order");
      return static_cast<void*>(const_cast<uint16_t*>(prev.w) + prev.rows * prev.ld);
    };
    switch (id) {
      case WeightId::kWq: return fused(&L->qkv, c_.q_dim() + 2 * static_cast<int64_t>(c_.kv_dim()));
      case WeightId::kWk: return after(L->wq);
      case WeightId::kWv: return after(L->wk);
      case WeightId::kGate: return fused(&L->gate_up, 2 * static_cast<int64_t>(c_.n_ff));
      case WeightId::kUp: return after(L->gate);
      default: return d_->Carve(MatrixBytes(rows, cols));
    }
  }

  CudaBackend::Impl* d_;
  const ModelConfig& c_;
  std::vector<uint16_t> host_;
};

// Which product kernel a pass uses. Each keeps a token's output row
// independent of the other tokens in the call, and the choice depends only
// on the kind of pass, never on its size, so a sequence's numbers do not
// change with what it is batched with:
//   kDecode: the skinny kernel, in groups of at most kMatMulSkinnyMaxTokens
//            tokens (its bit-identical range), for decode steps and the LM head;
//   kPrefill: the tiled GEMM, for passes that carry a prompt chunk.
enum class Product { kDecode, kPrefill };

absl::Status MatMul(Product kind, const DeviceMatrix& m, const float* x, int64_t n_tok, float* y,
                    cudaStream_t s) {
  if (kind == Product::kPrefill) {
    return gpu::LaunchGemmF16(m.w, m.rows, m.cols, m.ld, x, n_tok, y, s);
  }
  for (int64_t t = 0; t < n_tok; t += gpu::kMatMulSkinnyMaxTokens) {
    const int64_t n = std::min(gpu::kMatMulSkinnyMaxTokens, n_tok - t);
    RETURN_IF_ERROR(
        gpu::LaunchMatVecF16(m.w, m.rows, m.cols, m.ld, x + t * m.cols, n, y + t * m.rows, s));
  }
  return absl::OkStatus();
}

}  // namespace

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
                                    prop.name, prop.major, prop.minor, GiB(total));
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
  d.layers.resize(c.n_layer);
  // Padding per carve: at most 256 bytes per tensor.
  const uint64_t n_tensors = 9ull * c.n_layer + 4;
  ASSIGN_OR_RETURN(d.weights, gpu::DeviceBuffer<uint8_t>::Allocate(b->plan_.weights +
                                                                    256 * n_tensors));
  d.layer_cache_values = static_cast<uint64_t>(bo.max_slots) * c.n_head_kv *
                         static_cast<uint64_t>(bo.ctx_per_slot) * c.head_dim;
  ASSIGN_OR_RETURN(d.k_cache, gpu::DeviceBuffer<uint16_t>::Allocate(d.layer_cache_values * c.n_layer));
  ASSIGN_OR_RETURN(d.v_cache, gpu::DeviceBuffer<uint16_t>::Allocate(d.layer_cache_values * c.n_layer));
  const ScratchShape s = ScratchFor(c, b->opts_);
  d.T = s.T;
  for (PassContext& p : d.ctx) {
    ASSIGN_OR_RETURN(p.stream, gpu::CudaStream::Create());
    ASSIGN_OR_RETURN(p.floats, gpu::DeviceBuffer<float>::Allocate(s.floats));
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
    ASSIGN_OR_RETURN(p.ints, gpu::DeviceBuffer<int32_t>::Allocate(s.ints));
    ASSIGN_OR_RETURN(p.attn_ws, gpu::DeviceBuffer<uint8_t>::Allocate(s.attn_ws));
    ASSIGN_OR_RETURN(p.host_ints, gpu::PinnedBuffer<int32_t>::Allocate(s.ints));
    ASSIGN_OR_RETURN(p.host_logits,
                     gpu::PinnedBuffer<float>::Allocate(static_cast<size_t>(kLogitRows) * c.n_vocab));
    const SampleLayout layout(bo.ctx_per_slot);
    ASSIGN_OR_RETURN(p.sample_in, gpu::DeviceBuffer<uint8_t>::Allocate(layout.bytes));
    ASSIGN_OR_RETURN(p.host_sample_in, gpu::PinnedBuffer<uint8_t>::Allocate(layout.bytes));
    ASSIGN_OR_RETURN(p.sample_ws, gpu::DeviceBuffer<uint8_t>::Allocate(
                                      gpu::SampleWorkspaceBytes(kLogitRows, c.n_vocab)));
    ASSIGN_OR_RETURN(p.sample_out, gpu::DeviceBuffer<gpu::DeviceSample>::Allocate(kLogitRows));
    ASSIGN_OR_RETURN(p.host_sample_out, gpu::PinnedBuffer<gpu::DeviceSample>::Allocate(kLogitRows));
  }

  DeviceSink sink(&d, c);
  RETURN_IF_ERROR(StreamLlamaWeights(file, c, &sink, progress, bo.n_threads, &b->clamped_));
  CUDA_RETURN_IF_ERROR(cudaDeviceSynchronize());
  spdlog::info("{}: weights {:.2f} GiB, KV cache {:.2f} GiB ({} slots x {} positions), scratch "
               "{:.2f} GiB; {:.2f} GiB were free",
               b->device_desc_, GiB(b->plan_.weights), GiB(b->plan_.kv_cache), bo.max_slots,
               bo.ctx_per_slot, GiB(b->plan_.scratch), GiB(b->plan_.device_free));
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
  uint64_t b = MatrixBytes(c.n_vocab, c.n_embd);
  b += static_cast<uint64_t>(c.n_layer) *
       (MatrixBytes(c.q_dim(), c.n_embd) + 2 * MatrixBytes(c.kv_dim(), c.n_embd) +
        MatrixBytes(c.n_embd, c.q_dim()) + 2 * MatrixBytes(c.n_ff, c.n_embd) +
        MatrixBytes(c.n_embd, c.n_ff));
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

// Runs one piece (at most T tokens) of a flattened batch on `p`.
struct Piece {
  const int32_t* tok;
  const int32_t* slot;
  const int32_t* pos;
  int64_t n;
  std::vector<int64_t> out_rows;  // token indices (within the piece) that give logits
};

}  // namespace

namespace {


// Device sampling of the m logit rows in p.logits in three parts, so that a
// captured decode step can hold the kernel while the copies stay outside:
// stage specs[0..m) into the device's staging buffer, enqueue the kernel,
// fetch the results into out[0..m). Each row's history is staged as its
// penalty window only (the last penalty_last_n tokens, all for -1), which
// the kernel then reads whole: the same tokens Sample() looks at.
absl::Status StageSampleInputs(int ctx_per_slot, PassContext& p,
                               std::span<const SampleSpec> specs, cudaStream_t st) {
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
  CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(p.sample_in.get(), h, bytes, cudaMemcpyHostToDevice, st));
  return absl::OkStatus();
}

absl::Status EnqueueSample(const ModelConfig& c, int ctx_per_slot, PassContext& p, int m,
                           cudaStream_t st) {
  const SampleLayout L(ctx_per_slot);
  const uint8_t* d = p.sample_in.get();
  return gpu::LaunchSample({.logits = p.logits,
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
                                       m * sizeof(gpu::DeviceSample), cudaMemcpyDeviceToHost, st));
  CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(st));
  for (int i = 0; i < m; ++i) {
    const gpu::DeviceSample& ds = p.host_sample_out[i];
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

// Copies m logit rows to out (n_vocab floats each) through the pinned buffer.
absl::Status FetchLogits(const ModelConfig& c, PassContext& p, int64_t m, cudaStream_t st,
                         float* out) {
  CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(p.host_logits.data(), p.logits,
                                       m * c.n_vocab * sizeof(float), cudaMemcpyDeviceToHost,
                                       st));
  CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(st));
  std::memcpy(out, p.host_logits.data(), m * c.n_vocab * sizeof(float));
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
  const ModelConfig& c = config_;
  RETURN_IF_ERROR(ValidateBatch(c, opts_.base, batch));
  RETURN_IF_ERROR(health());
  Impl& d = *impl_;
  const bool sampling = samples != nullptr;

  // Flatten: token t is tok[t] of slot slot_of[t] at position pos_of[t].
  std::vector<int32_t> tok, slot_of, pos_of;
  std::vector<uint8_t> emits;
  for (const SeqChunk& s : batch) {
    for (size_t k = 0; k < s.tokens.size(); ++k) {
      emits.push_back(s.all_logits || k + 1 == s.tokens.size());
      tok.push_back(s.tokens[k]);
      slot_of.push_back(s.slot);
      pos_of.push_back(s.pos + static_cast<int32_t>(k));
    }
  }
  const int64_t total = static_cast<int64_t>(tok.size());
  int64_t n_rows = 0;
  for (uint8_t e : emits) n_rows += e;
  if (sampling) {
    samples->resize(static_cast<size_t>(n_rows));
  } else {
    out->rows = n_rows;
    out->logits.resize(static_cast<size_t>(n_rows) * c.n_vocab);
  }

  // Take a free pass context.
  PassContext* p = nullptr;
  {
    std::unique_lock<std::mutex> lock(d.ctx_mu);
    d.ctx_cv.wait(lock, [&] {
      for (PassContext& ctx : d.ctx) {
        if (!ctx.busy) return true;
      }
      return false;
    });
    for (PassContext& ctx : d.ctx) {
      if (!ctx.busy) {
        p = &ctx;
        p->busy = true;
        break;
      }
    }
  }
  struct Release {
    Impl& d;
    PassContext* p;
    ~Release() {
      std::lock_guard<std::mutex> lock(d.ctx_mu);
      p->busy = false;
      d.ctx_cv.notify_one();
    }
  } release{d, p};

  auto run = [&]() -> absl::Status {
    CUDA_RETURN_IF_ERROR(cudaSetDevice(d.device));
    cudaStream_t st = p->stream.get();
    if (d.fault_after > 0 && d.passes.fetch_add(1) + 1 > d.fault_after) {
      spdlog::warn("injecting a device fault (M40LLM_CUDA_FAULT_AFTER_PASSES={})", d.fault_after);
      RETURN_IF_ERROR(gpu::LaunchTrapForTesting(st));
    }
    const int64_t n_embd = c.n_embd, q_dim = c.q_dim(), kv_dim = c.kv_dim();
    gpu::RopeConfig rope;
    rope.n_rot = c.n_rot;
    rope.freq_base = c.rope_freq_base;
    rope.freq_scale = c.rope_freq_scale;
    rope.freq_factors = d.rope_freqs;
    rope.neox = false;  // llama: adjacent pairs
    const DeviceMatrix& head = d.lm_head(c);
    int64_t row_out = 0;

    for (int64_t a = 0; a < total; a += d.T) {
      const int64_t n = std::min(d.T, total - a);
      // Stage ids, slots, positions and lengths (position + 1) in one copy.
      int32_t* hi = p->host_ints.data();
      int max_len = 0;
      for (int64_t t = 0; t < n; ++t) {
        hi[t] = tok[a + t];
        hi[n + t] = slot_of[a + t];
        hi[2 * n + t] = pos_of[a + t];
        hi[3 * n + t] = pos_of[a + t] + 1;
        max_len = std::max(max_len, pos_of[a + t] + 1);
      }
      // Runs of consecutive positions of one slot within the piece: the
      // chunks of the prefill attention kernel (slot, first position, length,
      // first row), staged after the per-token arrays.
      int n_chunks = 0, max_chunk = 0, max_ctx = 0;
      int32_t* hc = hi + 4 * n;
      for (int64_t t = 0; t < n; ++t) {
        const bool starts = t == 0 || slot_of[a + t] != slot_of[a + t - 1] ||
                            pos_of[a + t] != pos_of[a + t - 1] + 1;
        if (starts) {
          hc[n_chunks] = slot_of[a + t];
          hc[n + n_chunks] = pos_of[a + t];
          hc[2 * n + n_chunks] = 0;
          hc[3 * n + n_chunks] = static_cast<int32_t>(t);
          ++n_chunks;
        }
        const int c_i = n_chunks - 1;
        ++hc[2 * n + c_i];
        max_chunk = std::max(max_chunk, hc[2 * n + c_i]);
        max_ctx = std::max(max_ctx, pos_of[a + t] + 1);
      }
      // Decode steps (every chunk one token) take the split-K decode kernel,
      // which spreads long contexts over blocks; prompts take the tiled
      // causal kernel, which reads each K/V tile once per query tile.
      const bool prefill_attention = max_chunk > 1;
      const Product product = prefill_attention ? Product::kPrefill : Product::kDecode;
      int32_t* di = p->ints.get();
      CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(di, hi, 8 * n * sizeof(int32_t),
                                           cudaMemcpyHostToDevice, st));
      const int32_t *d_tok = di, *d_slot = di + n, *d_pos = di + 2 * n, *d_len = di + 3 * n;
      const int32_t* d_chunks = di + 4 * n;

      // Embedding and every layer. attn_max_len bounds the decode kernel's
      // splits: the batch's longest context when run directly, the slot size
      // in a captured step (a fixed grid). With the fixed split length a
      // sequence's result does not depend on it either way.
      auto body = [&](int attn_max_len) -> absl::Status {
        RETURN_IF_ERROR(
            gpu::LaunchEmbeddingGather(d.token_embd.w, c.n_vocab, n_embd, d_tok, n, p->x, st));
        // Decode steps of up to kLogitRows sequences run the fused QKV and
        // gate/up products: the same per-element sums as the separate ones
        // (the skinny kernel's order depends only on cols), in fewer, larger
        // launches.
        const bool fused = product == Product::kDecode && n <= kLogitRows;
        const int64_t qkv_stride = q_dim + 2 * kv_dim;
        // Each block's output product leaves its residual in proj; the next
        // norm adds it into x in the same kernel (LaunchAddRmsNorm).
        bool pending = false;
        auto norm = [&](const float* weight) -> absl::Status {
          const absl::Status s =
              pending ? gpu::LaunchAddRmsNorm(p->x, p->proj, weight, n, n_embd, c.rms_eps, p->h, st)
                      : gpu::LaunchRmsNorm(p->x, weight, n, n_embd, c.rms_eps, p->h, st);
          pending = false;
          return s;
        };
        for (int l = 0; l < c.n_layer; ++l) {
          const DeviceLayer& w = d.layers[l];
          uint16_t* kc = d.k_cache.get() + l * d.layer_cache_values;
          uint16_t* vc = d.v_cache.get() + l * d.layer_cache_values;
          // Attention block.
          RETURN_IF_ERROR(norm(w.attn_norm));
          float *q = p->q, *k = p->k, *v = p->v;
          int64_t q_stride = q_dim, kv_stride = kv_dim;
          if (fused) {
            RETURN_IF_ERROR(MatMul(product, w.qkv, p->h, n, p->qkv, st));
            q = p->qkv;
            k = p->qkv + q_dim;
            v = p->qkv + q_dim + kv_dim;
            q_stride = kv_stride = qkv_stride;
          } else {
            RETURN_IF_ERROR(MatMul(product, w.wq, p->h, n, p->q, st));
            RETURN_IF_ERROR(MatMul(product, w.wk, p->h, n, p->k, st));
            RETURN_IF_ERROR(MatMul(product, w.wv, p->h, n, p->v, st));
          }
          RETURN_IF_ERROR(gpu::LaunchRope(q, n, c.n_head, c.head_dim, q_stride, d_pos, rope, st));
          RETURN_IF_ERROR(
              gpu::LaunchRope(k, n, c.n_head_kv, c.head_dim, kv_stride, d_pos, rope, st));
          RETURN_IF_ERROR(gpu::LaunchKvAppend({.k = k,
                                               .v = v,
                                               .n_tok = n,
                                               .slots = d_slot,
                                               .positions = d_pos,
                                               .n_head_kv = c.n_head_kv,
                                               .head_dim = c.head_dim,
                                               .k_cache = kc,
                                               .v_cache = vc,
                                               .max_slots = opts_.base.max_slots,
                                               .ctx_per_slot = opts_.base.ctx_per_slot,
                                               .row_stride = kv_stride},
                                              st));
          if (prefill_attention) {
            RETURN_IF_ERROR(gpu::LaunchPrefillAttention({.q = q,
                                                         .n_tok = n,
                                                         .n_head = c.n_head,
                                                         .n_head_kv = c.n_head_kv,
                                                         .head_dim = c.head_dim,
                                                         .chunk_slot = d_chunks,
                                                         .chunk_pos = d_chunks + n,
                                                         .chunk_len = d_chunks + 2 * n,
                                                         .chunk_row = d_chunks + 3 * n,
                                                         .n_chunks = n_chunks,
                                                         .max_chunk_len = max_chunk,
                                                         .max_context = max_ctx,
                                                         .k_cache = kc,
                                                         .v_cache = vc,
                                                         .max_slots = opts_.base.max_slots,
                                                         .ctx_per_slot = opts_.base.ctx_per_slot,
                                                         .out = p->att},
                                                        st));
          } else {
            RETURN_IF_ERROR(gpu::LaunchDecodeAttention(
                {.q = q,
                 .n_seq = static_cast<int>(n),
                 .n_head = c.n_head,
                 .slots = d_slot,
                 .lengths = d_len,
                 .max_len = attn_max_len,
                 .n_head_kv = c.n_head_kv,
                 .head_dim = c.head_dim,
                 .k_cache = kc,
                 .v_cache = vc,
                 .max_slots = opts_.base.max_slots,
                 .ctx_per_slot = opts_.base.ctx_per_slot,
                 .workspace = p->attn_ws.get(),
                 .workspace_bytes = p->attn_ws.bytes(),
                 .out = p->att,
                 .fixed_split_len = gpu::DecodeAttentionFixedSplitLen(opts_.base.ctx_per_slot),
                 .q_row_stride = q_stride},
                st));
          }
          RETURN_IF_ERROR(MatMul(product, w.wo, p->att, n, p->proj, st));
          pending = true;
          // Feed-forward block (SwiGLU).
          RETURN_IF_ERROR(norm(w.ffn_norm));
          if (fused) {
            RETURN_IF_ERROR(MatMul(product, w.gate_up, p->h, n, p->gate_up, st));
            RETURN_IF_ERROR(gpu::LaunchSwiGluRows(p->gate_up, n, c.n_ff, p->gate, st));
          } else {
            RETURN_IF_ERROR(MatMul(product, w.gate, p->h, n, p->gate, st));
            RETURN_IF_ERROR(MatMul(product, w.up, p->h, n, p->up, st));
            RETURN_IF_ERROR(gpu::LaunchSwiGlu(p->gate, p->up, n * c.n_ff, p->gate, st));
          }
          RETURN_IF_ERROR(MatMul(product, w.down, p->gate, n, p->proj, st));
          pending = true;
        }
        if (pending) RETURN_IF_ERROR(gpu::LaunchAdd(p->x, p->proj, n * n_embd, p->x, st));
        return absl::OkStatus();
      };

      std::vector<int64_t> rows;  // tokens of the piece that give logits
      for (int64_t t = 0; t < n; ++t) {
        if (emits[a + t]) rows.push_back(t);
      }

      // A decode step of up to kLogitRows sequences is replayed from a CUDA
      // graph captured the first time its shape (tokens, sampling or not)
      // comes up: inputs are staged into the same buffers before the launch
      // and results copied out after it.
      if (d.decode_graphs && !prefill_attention && static_cast<int64_t>(rows.size()) == n &&
          n <= kLogitRows) {
        const int m = static_cast<int>(n);
        if (sampling) {
          RETURN_IF_ERROR(StageSampleInputs(opts_.base.ctx_per_slot, *p, specs.subspan(row_out, m),
                                            st));
        }
        std::unique_ptr<GraphExec>& g = p->graphs[m * 2 + (sampling ? 1 : 0)];
        if (!g) {
          ASSIGN_OR_RETURN(g, CaptureGraph(st, [&]() -> absl::Status {
            RETURN_IF_ERROR(body(opts_.base.ctx_per_slot));
            RETURN_IF_ERROR(
                gpu::LaunchRmsNorm(p->x, d.output_norm, n, n_embd, c.rms_eps, p->h, st));
            RETURN_IF_ERROR(MatMul(Product::kDecode, head, p->h, n, p->logits, st));
            if (sampling) {
              RETURN_IF_ERROR(EnqueueSample(c, opts_.base.ctx_per_slot, *p, m, st));
            }
            return absl::OkStatus();
          }));
        }
        CUDA_RETURN_IF_ERROR(cudaGraphLaunch(g->exec, st));
        if (sampling) {
          RETURN_IF_ERROR(FetchSamples(*p, m, st, samples->data() + row_out));
        } else {
          RETURN_IF_ERROR(FetchLogits(c, *p, n, st, out->logits.data() + row_out * c.n_vocab));
        }
        row_out += n;
        continue;
      }

      RETURN_IF_ERROR(body(max_len));
      // Final norm and LM head for the rows that give logits, kLogitRows at
      // a time: gather them into h (contiguous), normalise, project, copy.
      for (size_t r0 = 0; r0 < rows.size(); r0 += kLogitRows) {
        const int64_t m = std::min<int64_t>(kLogitRows, static_cast<int64_t>(rows.size() - r0));
        const float* src = p->x + rows[r0] * n_embd;
        bool contiguous = true;
        for (int64_t i = 1; i < m; ++i) contiguous &= rows[r0 + i] == rows[r0] + i;
        if (!contiguous) {
          for (int64_t i = 0; i < m; ++i) {
            CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(p->h + i * n_embd, p->x + rows[r0 + i] * n_embd,
                                                 n_embd * sizeof(float),
                                                 cudaMemcpyDeviceToDevice, st));
          }
          src = p->h;
        }
        RETURN_IF_ERROR(gpu::LaunchRmsNorm(src, d.output_norm, m, n_embd, c.rms_eps, p->h, st));
        RETURN_IF_ERROR(MatMul(Product::kDecode, head, p->h, m, p->logits, st));
        if (sampling) {
          const auto rows_specs = specs.subspan(row_out, m);
          RETURN_IF_ERROR(StageSampleInputs(opts_.base.ctx_per_slot, *p, rows_specs, st));
          RETURN_IF_ERROR(EnqueueSample(c, opts_.base.ctx_per_slot, *p, static_cast<int>(m), st));
          RETURN_IF_ERROR(FetchSamples(*p, static_cast<int>(m), st, samples->data() + row_out));
        } else {
          RETURN_IF_ERROR(FetchLogits(c, *p, m, st, out->logits.data() + row_out * c.n_vocab));
        }
        row_out += m;
      }
      // The next piece rewrites the staged ints: wait for this one.
      CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(st));
    }
    return absl::OkStatus();
  };
  absl::Status s = run();
  if (!s.ok()) {
    // Make sure nothing of this pass is still running before the context is
    // reused, and learn whether the error left the device unusable.
    const cudaError_t sync = cudaStreamSynchronize(p->stream.get());
    if (sync != cudaSuccess && gpu::IsStickyCudaError(sync) && !gpu::IsStickyCudaFault(s)) {
      s = gpu::CudaStatus(sync, "cudaStreamSynchronize(pass)", __FILE__, __LINE__);
    }
    return Fail(s);
  }
  return absl::OkStatus();
}

}  // namespace m40llm
