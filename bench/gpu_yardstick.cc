// GPU yardsticks: copy bandwidth and our FP16-weight products beside cuBLAS
// (see gpu_yardstick.h).
#include "bench/gpu_yardstick.h"

#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cuda/cuda_check.h"
#include "cuda/device_memory.h"
#include "cuda/gemm.cuh"
#include "cuda/matvec.cuh"
#include "engine/fp16.h"
#include "engine/status.h"

namespace m40llm::bench {
namespace {

using gpu::CudaEvent;
using gpu::CudaStream;
using gpu::DeviceBuffer;

// cuBLAS, loaded with dlopen on first use instead of linked: linking it
// gives every thread of the process libcublasLt's 94 KB static TLS block,
// which leaves no room on the small stacks of civetweb's worker threads, so
// `m40llm` (which serves metrics and also runs `bench`) must not link it.
// cublas_v2.h supplies only the types and prototypes here.
struct CublasApi {
  decltype(&cublasCreate_v2) create = nullptr;
  decltype(&cublasDestroy_v2) destroy = nullptr;
  decltype(&cublasSetStream_v2) set_stream = nullptr;
  decltype(&cublasSetMathMode) set_math_mode = nullptr;
  decltype(&cublasSgemv_v2) sgemv = nullptr;
  decltype(&cublasSgemm_v2) sgemm = nullptr;
  decltype(&cublasGetStatusString) status_string = nullptr;
};

absl::StatusOr<const CublasApi*> Cublas() {
  static const absl::StatusOr<CublasApi> api = []() -> absl::StatusOr<CublasApi> {
    void* lib = nullptr;
    for (const char* name : {"libcublas.so.13", "libcublas.so.12", "libcublas.so.11",
                             "libcublas.so"}) {
      lib = dlopen(name, RTLD_NOW | RTLD_LOCAL);
      if (lib != nullptr) break;
    }
    if (lib == nullptr) {
      return absl::FailedPreconditionError(
          "cuBLAS (libcublas.so.13/12/11) is not on the library path; the yardstick needs it");
    }
    CublasApi a;
    bool ok = true;
    auto load = [&](auto* fn, const char* symbol) {
      *fn = reinterpret_cast<std::remove_pointer_t<decltype(fn)>>(dlsym(lib, symbol));
      ok = ok && *fn != nullptr;
    };
    load(&a.create, "cublasCreate_v2");
    load(&a.destroy, "cublasDestroy_v2");
    load(&a.set_stream, "cublasSetStream_v2");
    load(&a.set_math_mode, "cublasSetMathMode");
    load(&a.sgemv, "cublasSgemv_v2");
    load(&a.sgemm, "cublasSgemm_v2");
    load(&a.status_string, "cublasGetStatusString");
    if (!ok) return absl::FailedPreconditionError("libcublas lacks a symbol the yardstick uses");
    return a;
  }();
  if (!api.ok()) return api.status();
  return &*api;
}

absl::Status CublasStatus(cublasStatus_t st, const char* what) {
  if (st == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  ASSIGN_OR_RETURN(const CublasApi* api, Cublas());
  return absl::InternalError(absl::StrCat(what, ": ", api->status_string(st)));
}

#define YARDSTICK_CUBLAS(expr) RETURN_IF_ERROR(CublasStatus((expr), #expr))

// Median milliseconds of options.reps back-to-back runs of run(i) on
// `stream`, each between two timing events, after options.warmup untimed runs.
template <typename Run>
absl::StatusOr<double> MedianMs(cudaStream_t stream, const TimingOptions& options, Run run) {
  const int reps = std::max(1, options.reps);
  for (int i = 0; i < options.warmup; ++i) RETURN_IF_ERROR(run(i));
  std::vector<CudaEvent> events;
  for (int i = 0; i <= reps; ++i) {
    ASSIGN_OR_RETURN(CudaEvent e, CudaEvent::Create(cudaEventDefault));
    events.push_back(std::move(e));
  }
  for (int i = 0; i < reps; ++i) {
    RETURN_IF_ERROR(events[i].Record(stream));
    RETURN_IF_ERROR(run(options.warmup + i));
  }
  RETURN_IF_ERROR(events[reps].Record(stream));
  RETURN_IF_ERROR(events[reps].Synchronize());
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    ASSIGN_OR_RETURN(float t, CudaEvent::ElapsedMs(events[i], events[i + 1]));
    ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

double RelL2(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0;
  double den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = static_cast<double>(a[i]) - b[i];
    num += d * d;
    den += static_cast<double>(b[i]) * b[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

// Uniform values in [-1, 1) from a xorshift generator (fast enough for a
// few hundred million weights).
class Uniform {
 public:
  explicit Uniform(uint64_t seed) : s_(seed | 1) {}
  float operator()() {
    s_ ^= s_ << 13;
    s_ ^= s_ >> 7;
    s_ ^= s_ << 17;
    return static_cast<float>(s_ >> 40) * (2.0f / 16777216.0f) - 1.0f;
  }

 private:
  uint64_t s_;
};

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

absl::StatusOr<GpuInfo> QueryGpu() {
  GpuInfo info;
  CUDA_RETURN_IF_ERROR(cudaGetDevice(&info.device));
  cudaDeviceProp prop{};
  CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, info.device));
  info.name = prop.name;
  info.sm_count = prop.multiProcessorCount;
  info.cc_major = prop.major;
  info.cc_minor = prop.minor;
  info.l2_bytes = prop.l2CacheSize;
  info.memory_bytes = static_cast<int64_t>(prop.totalGlobalMem);
  return info;
}

absl::StatusOr<CopyBandwidth> MeasureCopyBandwidth(int64_t bytes, const TimingOptions& options) {
  if (bytes <= 0) return absl::InvalidArgumentError("MeasureCopyBandwidth: bytes <= 0");
  ASSIGN_OR_RETURN(auto src, DeviceBuffer<uint8_t>::Allocate(bytes));
  ASSIGN_OR_RETURN(auto dst, DeviceBuffer<uint8_t>::Allocate(bytes));
  RETURN_IF_ERROR(src.FillBytes(1));
  ASSIGN_OR_RETURN(CudaStream stream, CudaStream::Create());
  ASSIGN_OR_RETURN(const double ms, MedianMs(stream.get(), options, [&](int) -> absl::Status {
                     CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst.get(), src.get(), bytes,
                                                          cudaMemcpyDeviceToDevice, stream.get()));
                     return absl::OkStatus();
                   }));
  CopyBandwidth r;
  r.bytes = bytes;
  r.ms = ms;
  r.gbs = 2.0 * static_cast<double>(bytes) / (ms * 1e-3) / 1e9;
  return r;
}

struct ProductBench::Impl {
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t max_tok = 0;
  std::vector<DeviceBuffer<uint16_t>> w16;  // each (rows, cols) FP16, identical
  std::vector<DeviceBuffer<float>> w32;     // each (rows, cols) FP32, the same values
  DeviceBuffer<float> x;                    // (max_tok, cols)
  DeviceBuffer<float> y;                    // (max_tok, rows), ours
  DeviceBuffer<float> y_ref;                // (max_tok, rows), cuBLAS
  CudaStream stream;
  cublasHandle_t cublas = nullptr;

  ~Impl() {
    if (cublas != nullptr) static_cast<void>((*Cublas())->destroy(cublas));
  }

  // Our y against cuBLAS's for the first n_tok tokens.
  absl::StatusOr<double> CompareOutputs(int64_t n_tok) const {
    RETURN_IF_ERROR(stream.Synchronize());
    std::vector<float> a(n_tok * rows);
    std::vector<float> b(n_tok * rows);
    RETURN_IF_ERROR(y.CopyToHost(a.data(), a.size()));
    RETURN_IF_ERROR(y_ref.CopyToHost(b.data(), b.size()));
    return RelL2(a, b);
  }

  // cuBLAS on FP32 copy `copy`: y_ref (n_tok, rows) = x (n_tok, cols) * W^T.
  // Column-major view: W is (cols x rows), x is (cols x n_tok), y is
  // (rows x n_tok), so y = W^T x.
  absl::Status RunCublas(int64_t n_tok, size_t copy, bool gemv) const {
    ASSIGN_OR_RETURN(const CublasApi* api, Cublas());
    const float one = 1.0f;
    const float zero = 0.0f;
    const int m = static_cast<int>(rows);
    const int k = static_cast<int>(cols);
    if (gemv) {
      YARDSTICK_CUBLAS(api->sgemv(cublas, CUBLAS_OP_T, k, m, &one, w32[copy].get(), k, x.get(), 1,
                                   &zero, y_ref.get(), 1));
    } else {
      YARDSTICK_CUBLAS(api->sgemm(cublas, CUBLAS_OP_T, CUBLAS_OP_N, m, static_cast<int>(n_tok), k,
                                   &one, w32[copy].get(), k, x.get(), k, &zero, y_ref.get(), m));
    }
    return absl::OkStatus();
  }
};

ProductBench::ProductBench(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ProductBench::~ProductBench() = default;

absl::StatusOr<std::unique_ptr<ProductBench>> ProductBench::Create(int64_t rows, int64_t cols,
                                                                   int64_t max_tok) {
  if (rows <= 0 || cols <= 0 || max_tok <= 0 || rows > INT32_MAX || cols > INT32_MAX ||
      max_tok > INT32_MAX) {
    return absl::InvalidArgumentError("ProductBench: sizes must be in 1..2^31-1");
  }
  ASSIGN_OR_RETURN(const GpuInfo gpu, QueryGpu());
  auto impl = std::make_unique<Impl>();
  impl->rows = rows;
  impl->cols = cols;
  impl->max_tok = max_tok;
  const int64_t n = rows * cols;
  const int64_t n16 = std::clamp<int64_t>(CeilDiv(3 * gpu.l2_bytes, 2 * n), 1, 8);
  const int64_t n32 = std::clamp<int64_t>(CeilDiv(3 * gpu.l2_bytes, 4 * n), 1, 8);
  for (int64_t i = 0; i < n16; ++i) {
    ASSIGN_OR_RETURN(auto b, DeviceBuffer<uint16_t>::Allocate(n));
    impl->w16.push_back(std::move(b));
  }
  for (int64_t i = 0; i < n32; ++i) {
    ASSIGN_OR_RETURN(auto b, DeviceBuffer<float>::Allocate(n));
    impl->w32.push_back(std::move(b));
  }
  // Fill the first copies a slice at a time (FP16 values, and the same
  // values widened for cuBLAS), then copy them on the device.
  Uniform uniform(0x9e3779b97f4a7c15ull ^ static_cast<uint64_t>(rows * 131 + cols));
  constexpr int64_t kSlice = int64_t{1} << 24;
  std::vector<float> f(std::min(n, kSlice));
  std::vector<uint16_t> h(f.size());
  for (int64_t off = 0; off < n; off += kSlice) {
    const int64_t len = std::min(kSlice, n - off);
    for (int64_t i = 0; i < len; ++i) f[i] = uniform();
    FloatToHalfN(f.data(), h.data(), len);
    HalfToFloatN(h.data(), f.data(), len);
    CUDA_RETURN_IF_ERROR(cudaMemcpy(impl->w16[0].get() + off, h.data(), len * sizeof(uint16_t),
                                    cudaMemcpyHostToDevice));
    CUDA_RETURN_IF_ERROR(cudaMemcpy(impl->w32[0].get() + off, f.data(), len * sizeof(float),
                                    cudaMemcpyHostToDevice));
  }
  for (size_t i = 1; i < impl->w16.size(); ++i) {
    CUDA_RETURN_IF_ERROR(cudaMemcpy(impl->w16[i].get(), impl->w16[0].get(), n * sizeof(uint16_t),
                                    cudaMemcpyDeviceToDevice));
  }
  for (size_t i = 1; i < impl->w32.size(); ++i) {
    CUDA_RETURN_IF_ERROR(cudaMemcpy(impl->w32[i].get(), impl->w32[0].get(), n * sizeof(float),
                                    cudaMemcpyDeviceToDevice));
  }
  std::vector<float> hx(max_tok * cols);
  for (float& v : hx) v = uniform();
  ASSIGN_OR_RETURN(impl->x, DeviceBuffer<float>::Allocate(hx.size()));
  RETURN_IF_ERROR(impl->x.CopyFromHost(hx.data(), hx.size()));
  ASSIGN_OR_RETURN(impl->y, DeviceBuffer<float>::Allocate(max_tok * rows));
  ASSIGN_OR_RETURN(impl->y_ref, DeviceBuffer<float>::Allocate(max_tok * rows));
  ASSIGN_OR_RETURN(impl->stream, CudaStream::Create());
  ASSIGN_OR_RETURN(const CublasApi* api, Cublas());
  YARDSTICK_CUBLAS(api->create(&impl->cublas));
  YARDSTICK_CUBLAS(api->set_stream(impl->cublas, impl->stream.get()));
  // Plain FP32 arithmetic (no TF32 tensor cores), like our kernels.
  YARDSTICK_CUBLAS(api->set_math_mode(impl->cublas, CUBLAS_DEFAULT_MATH));
  CUDA_RETURN_IF_ERROR(cudaDeviceSynchronize());
  return std::unique_ptr<ProductBench>(new ProductBench(std::move(impl)));
}

absl::StatusOr<MatVecResult> ProductBench::MatVec(int64_t n_tok, const TimingOptions& options) {
  Impl& p = *impl_;
  if (n_tok <= 0 || n_tok > p.max_tok) {
    return absl::InvalidArgumentError("ProductBench::MatVec: n_tok out of range");
  }
  MatVecResult r;
  r.rows = p.rows;
  r.cols = p.cols;
  r.n_tok = n_tok;
  ASSIGN_OR_RETURN(r.ms, MedianMs(p.stream.get(), options, [&](int i) {
                     return gpu::LaunchMatVecF16(p.w16[i % p.w16.size()].get(), p.rows, p.cols,
                                                 p.cols, p.x.get(), n_tok, p.y.get(),
                                                 p.stream.get());
                   }));
  const bool gemv = n_tok == 1;
  r.cublas_routine = gemv ? "sgemv" : "sgemm";
  ASSIGN_OR_RETURN(r.cublas_ms, MedianMs(p.stream.get(), options, [&](int i) {
                     return p.RunCublas(n_tok, i % p.w32.size(), gemv);
                   }));
  const double n = static_cast<double>(p.rows) * static_cast<double>(p.cols);
  r.weight_gbs = 2.0 * n / (r.ms * 1e-3) / 1e9;
  r.cublas_weight_gbs = 4.0 * n / (r.cublas_ms * 1e-3) / 1e9;
  ASSIGN_OR_RETURN(r.rel_l2_vs_cublas, p.CompareOutputs(n_tok));
  return r;
}

absl::StatusOr<GemmResult> ProductBench::Gemm(int64_t n_tok, gpu::GemmTile tile, bool with_cublas,
                                              const TimingOptions& options) {
  Impl& p = *impl_;
  if (n_tok <= 0 || n_tok > p.max_tok) {
    return absl::InvalidArgumentError("ProductBench::Gemm: n_tok out of range");
  }
  GemmResult r;
  r.rows = p.rows;
  r.cols = p.cols;
  r.n_tok = n_tok;
  r.tile = tile;
  const double flop =
      2.0 * static_cast<double>(n_tok) * static_cast<double>(p.rows) * static_cast<double>(p.cols);
  ASSIGN_OR_RETURN(r.ms, MedianMs(p.stream.get(), options, [&](int i) {
                     return gpu::LaunchGemmF16Tiled(p.w16[i % p.w16.size()].get(), p.rows, p.cols,
                                                    p.cols, p.x.get(), n_tok, p.y.get(), tile,
                                                    p.stream.get());
                   }));
  r.tflops = flop / (r.ms * 1e-3) / 1e12;
  if (with_cublas) {
    ASSIGN_OR_RETURN(r.cublas_ms, MedianMs(p.stream.get(), options, [&](int i) {
                       return p.RunCublas(n_tok, i % p.w32.size(), false);
                     }));
    r.cublas_tflops = flop / (r.cublas_ms * 1e-3) / 1e12;
    ASSIGN_OR_RETURN(r.rel_l2_vs_cublas, p.CompareOutputs(n_tok));
  }
  return r;
}

absl::StatusOr<MatVecResult> MeasureMatVec(int64_t rows, int64_t cols, int64_t n_tok,
                                           const TimingOptions& options) {
  ASSIGN_OR_RETURN(auto bench, ProductBench::Create(rows, cols, n_tok));
  return bench->MatVec(n_tok, options);
}

absl::StatusOr<GemmResult> MeasureGemm(int64_t rows, int64_t cols, int64_t n_tok,
                                       const TimingOptions& options) {
  ASSIGN_OR_RETURN(auto bench, ProductBench::Create(rows, cols, n_tok));
  return bench->Gemm(n_tok, gpu::GemmTile::kAuto, true, options);
}

}  // namespace m40llm::bench
