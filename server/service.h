// The gRPC service m40llm.v1.Inference (proto/m40llm/v1/m40llm.proto) on the
// callback API: request validation and conversion to engine requests, the
// scheduler hand-off (GenerateReactor streams the results) and the unary
// tokenizer and model-info methods. docs/api.md is the client's view.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/chat_template.h"
#include "engine/scheduler.h"
#include "engine/tokenizer.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/server_callback.h"
#include "m40llm/v1/m40llm.grpc.pb.h"

namespace m40llm {

class Metrics;

// Request limits (docs/api.md). The context bound comes from the scheduler:
// prompt + max_tokens beyond ctx_per_slot is OUT_OF_RANGE.
inline constexpr int32_t kDefaultMaxTokens = 256;  // unset max_tokens, lowered to fit
inline constexpr int32_t kMaxMaxTokens = 131072;   // largest explicit max_tokens
inline constexpr int kMaxStopStrings = 16;
inline constexpr size_t kMaxStopStringBytes = 256;
inline constexpr size_t kMaxRequestIdLength = 128;

// A fresh request id: 128 random bits as 32 lower-case hex digits.
std::string NewRequestId();

// Token ids for `text` as the API defines add_special: unset follows the
// model (Encode with add_special), true adds BOS even where the model would
// not, false adds nothing.
std::vector<int32_t> EncodePrompt(const Tokenizer& tokenizer, std::string_view text,
                                  std::optional<bool> add_special, bool parse_special);

// Methods whose requests carry text are raw (see server/payload.h); the
// others use the generated typed callback API.
using InferenceServiceBase = v1::Inference::WithRawCallbackMethod_Generate<
    v1::Inference::WithRawCallbackMethod_Chat<v1::Inference::WithRawCallbackMethod_Tokenize<
        v1::Inference::WithCallbackMethod_Detokenize<
            v1::Inference::WithCallbackMethod_GetModelInfo<v1::Inference::Service>>>>>;

// Most messages and role bytes a Chat request may carry.
inline constexpr int kMaxChatMessages = 1024;
inline constexpr size_t kMaxChatRoleBytes = 64;

// The chat template Chat uses when a request names none: a family, or why
// there is none (FAILED_PRECONDITION, sent to such requests).
struct ChatDefault {
  absl::StatusOr<ChatFamily> family =
      absl::FailedPreconditionError("the server has no chat template; name one in the request");
  std::string eos_text;  // the model's EOS token text (zephyr ends turns with it)
};

// Server-wide request policy.
struct ServicePolicy {
  ChatDefault chat;
  // Most tokens one request may generate (--max-tokens-limit); 0: only the
  // context and kMaxMaxTokens bound it.
  int32_t max_tokens_limit = 0;
};

class InferenceService final : public InferenceServiceBase {
 public:
  // `scheduler` and `tokenizer` must outlive the service (and the server
  // running it); `metrics` may be null. `model_info` describes the model;
  // ctx_per_slot, max_batch and queue_size are filled in from the scheduler.
  InferenceService(Scheduler* scheduler, const Tokenizer* tokenizer, Metrics* metrics,
                   v1::ModelInfo model_info, ServicePolicy policy = {});

  // Validates `proto` and turns it into a scheduler request with id
  // `request_id` (deadline left unset): INVALID_ARGUMENT naming the field for
  // anything out of range.
  absl::StatusOr<GenerateRequest> ToEngineRequest(const v1::GenerateRequest& proto,
                                                  const std::string& request_id) const;

  // The GenerateRequest a Chat request amounts to: its options with the
  // formatted conversation as the text prompt, special tokens parsed.
  // INVALID_ARGUMENT for bad messages or options; FAILED_PRECONDITION for an
  // unrecognised template (or none at all).
  absl::StatusOr<v1::GenerateRequest> ChatToGenerate(const v1::ChatRequest& chat) const;

  // m40llm.v1.Inference.
  grpc::ServerWriteReactor<grpc::ByteBuffer>* Generate(grpc::CallbackServerContext* context,
                                                       const grpc::ByteBuffer* request) override;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* Chat(grpc::CallbackServerContext* context,
                                                   const grpc::ByteBuffer* request) override;
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* context,
                                     const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* Detokenize(grpc::CallbackServerContext* context,
                                       const v1::DetokenizeRequest* request,
                                       v1::DetokenizeResponse* response) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* context,
                                         const v1::GetModelInfoRequest* request,
                                         v1::ModelInfo* response) override;

 private:
  // Starts the stream of `method` for `proto`, or refuses it with its
  // status; the stream is named `client_id` when that is a valid request id.
  grpc::ServerWriteReactor<grpc::ByteBuffer>* StartStream(
      grpc::CallbackServerContext* context, const char* method,
      absl::StatusOr<v1::GenerateRequest> proto, const std::string& client_id);

  Scheduler* const scheduler_;
  const Tokenizer* const tokenizer_;
  Metrics* const metrics_;
  const int32_t ctx_per_slot_;
  const v1::ModelInfo model_info_;
  const ChatDefault chat_;
  const int32_t max_tokens_limit_;
};

}  // namespace m40llm
