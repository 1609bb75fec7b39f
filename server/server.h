// `m40llm serve`: loads the model, starts the scheduler, the metrics
// listener and the gRPC server (m40llm.v1.Inference, gRPC health checking
// and server reflection), serves until SIGTERM or SIGINT, then drains.
#pragma once

#include <string>

namespace m40llm {

// What `m40llm serve` takes; each field has a flag and an environment
// variable (README.md, docs/api.md).
struct ServeOptions {
  std::string model;                            // GGUF path; empty: the demo model
  std::string backend = "cpu";                  // "cpu" or "cuda"
  int device = 0;                               // CUDA device ordinal (cuda)
  int max_tokens_per_pass = 512;                // cuda: tokens per forward pass
  std::string listen = "0.0.0.0:50051";         // gRPC host:port
  std::string metrics_listen = "0.0.0.0:8002";  // /metrics host:port; empty: none
  int max_batch = 8;                            // sequences decoding at once
  int ctx_per_slot = 0;                         // 0: min(model context, 2048)
  int queue_size = 64;                          // requests waiting for a slot
  double drain_timeout_seconds = 30;            // wait for in-flight requests on SIGTERM
  int threads = 0;                              // CPU threads; 0: all cores
  std::string chat_template;                    // Chat's default: family name or file; empty: the model's
  std::string weights = "native";               // "native" or "f16"
  int max_tokens_limit = 0;                     // most tokens a request may generate; 0: none
  std::string log_level = "info";
  std::string log_format = "text";  // "text" or "json"
};

// The server's version (the CMake project version).
const char* ServerVersion();

// Runs the server until SIGTERM/SIGINT: health NOT_SERVING, no new requests
// (UNAVAILABLE), in-flight ones get up to drain_timeout_seconds (a second
// signal cuts that short), the rest end with UNAVAILABLE, then the server
// stops. Returns the process exit code: 0 after a clean shutdown, 1 when
// startup fails (the reason is logged).
int RunServe(const ServeOptions& opts);

}  // namespace m40llm
