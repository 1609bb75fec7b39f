// InferenceService: validation, the scheduler hand-off and the unary methods
// (see service.h).
#include "server/service.h"

#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <random>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/sampler.h"
#include "engine/status.h"
#include "engine/unicode.h"
#include "persistent/config.h"
#include "server/generate_reactor.h"
#include "server/payload.h"
#include "server/status.h"
#include "spdlog/spdlog.h"

namespace m40llm {
namespace {

using Clock = std::chrono::steady_clock;

// Per-thread generator for request ids and default seeds. Not for secrets:
// ids only need to be unique, seeds only unpredictable enough to differ.
std::mt19937_64& Rng() {
  thread_local std::mt19937_64 rng = [] {
    std::random_device rd;
    std::seed_seq seq{rd(), rd(), rd(), rd(), rd(), rd(), rd(), rd()};
    return std::mt19937_64(seq);
  }();
  return rng;
}

// The client's deadline on the steady clock the scheduler uses. gRPC gives
// it on the system clock, time_point::max() when there is none.
SteadyTime ToSteadyDeadline(std::chrono::system_clock::time_point deadline) {
  const auto sys_now = std::chrono::system_clock::now();
  // Also treats absurdly far deadlines as none, which keeps the
  // arithmetic below clear of overflow.
  if (deadline >= sys_now + std::chrono::hours(24 * 365 * 10)) return SteadyTime::max();
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(deadline - sys_now);
}

bool IsValidRequestId(const std::string& id) {
  if (id.empty() || id.size() > kMaxRequestIdLength) return false;
  for (char c : id) {
    if (c < 0x21 || c > 0x7e) return false;
  }
  return true;
}

absl::Status CheckTokenId(int32_t id, int32_t n_vocab, const std::string& field) {
  if (id >= 0 && id < n_vocab) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(field, " = ", id,
                                                 " is not a token id: the vocabulary has ", n_vocab,
                                                 " tokens (0..", n_vocab - 1, ")"));
}

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// Ends a unary call with `status` and writes its access-log line.
grpc::ServerUnaryReactor* FinishUnary(grpc::CallbackServerContext* context, const char* method,
                                      const absl::Status& status, Clock::time_point start) {
  spdlog::info("{} peer={} status={} duration={:.3f}s{}{}{}", method, context->peer(),
               absl::StatusCodeToString(status.code()), Seconds(Clock::now() - start),
               status.ok() ? "" : " error=\"", std::string(status.message()),
               status.ok() ? "" : "\"");
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

}  // namespace

std::string NewRequestId() {
  char buf[33];
  std::snprintf(buf, sizeof(buf), "%016" PRIx64 "%016" PRIx64, Rng()(), Rng()());
  return buf;
}

std::vector<int32_t> EncodePrompt(const Tokenizer& tokenizer, std::string_view text,
                                  std::optional<bool> add_special, bool parse_special) {
  std::vector<int32_t> ids = tokenizer.Encode(text, add_special.value_or(true), parse_special);
  const int32_t bos = tokenizer.vocab().bos;
  if (add_special.value_or(false) && bos >= 0 && (ids.empty() || ids.front() != bos)) {
    ids.insert(ids.begin(), bos);
  }
  return ids;
}

InferenceService::InferenceService(Scheduler* scheduler, const Tokenizer* tokenizer,
                                   Metrics* metrics, v1::ModelInfo model_info,
                                   ServicePolicy policy)
    : scheduler_(scheduler),
      tokenizer_(tokenizer),
      metrics_(metrics),
      ctx_per_slot_(scheduler->options().ctx_per_slot),
      model_info_([&] {
        model_info.set_ctx_per_slot(scheduler->options().ctx_per_slot);
        model_info.set_max_batch(scheduler->options().max_batch);
        model_info.set_queue_size(scheduler->options().queue_size);
        if (policy.chat.family.ok()) {
          model_info.set_chat_template(std::string(ChatFamilyName(*policy.chat.family)));
        }
        model_info.set_max_tokens_limit(policy.max_tokens_limit);
        return std::move(model_info);
      }()),
      chat_(std::move(policy.chat)),
      max_tokens_limit_(policy.max_tokens_limit) {}

absl::StatusOr<v1::GenerateRequest> InferenceService::ChatToGenerate(
    const v1::ChatRequest& chat) const {
  if (chat.messages().empty()) {
    return absl::InvalidArgumentError("messages is empty: a conversation needs at least one");
  }
  if (chat.messages_size() > kMaxChatMessages) {
    return absl::InvalidArgumentError(absl::StrCat("messages has ", chat.messages_size(),
                                                   " entries; at most ", kMaxChatMessages,
                                                   " are allowed"));
  }
  const v1::GenerateRequest& o = chat.options();
  if (o.prompt_case() != v1::GenerateRequest::PROMPT_NOT_SET) {
    return absl::InvalidArgumentError(
        "options.text and options.tokens must be unset: the conversation is the prompt");
  }
  if (o.parse_special()) {
    return absl::InvalidArgumentError(
        "options.parse_special must be unset: Chat always parses the template's special tokens");
  }
  std::vector<ChatMessage> messages;
  for (int i = 0; i < chat.messages_size(); ++i) {
    const v1::ChatMessage& m = chat.messages(i);
    if (m.role().empty() || m.role().size() > kMaxChatRoleBytes) {
      return absl::InvalidArgumentError(absl::StrCat("messages[", i, "].role must be 1..",
                                                     kMaxChatRoleBytes, " bytes"));
    }
    messages.push_back({m.role(), m.content()});
  }
  absl::StatusOr<ChatFamily> family =
      chat.chat_template().empty() ? chat_.family : DetectChatFamily(chat.chat_template());
  if (!family.ok()) return family.status();
  v1::GenerateRequest g = o;
  g.set_text(FormatChat(*family, messages,
                        !chat.has_add_generation_prompt() || chat.add_generation_prompt(),
                        chat_.eos_text));
  g.set_parse_special(true);
  return g;
}

absl::StatusOr<GenerateRequest> InferenceService::ToEngineRequest(
    const v1::GenerateRequest& p, const std::string& request_id) const {
  const int32_t n_vocab = tokenizer_->n_vocab();
  GenerateRequest r;
  r.id = request_id;

  if (!p.request_id().empty() && !IsValidRequestId(p.request_id())) {
    return absl::InvalidArgumentError(
        absl::StrCat("request_id must be 1..", kMaxRequestIdLength,
                     " printable ASCII characters without spaces (or empty for a generated one)"));
  }

  switch (p.prompt_case()) {
    case v1::GenerateRequest::kText: {
      if (p.text().empty()) {
        return absl::InvalidArgumentError("text is empty: the prompt needs at least one character");
      }
      // Longer texts cannot fit the context whatever they hold: refused
      // before any tokenizing.
      const size_t limit = (static_cast<size_t>(ctx_per_slot_) + 1) * tokenizer_->max_token_bytes();
      if (p.text().size() > limit) {
        return absl::OutOfRangeError(absl::StrCat(
            "text is ", p.text().size(), " bytes: it cannot fit the context of ", ctx_per_slot_,
            " tokens (a token stands for at most ", tokenizer_->max_token_bytes(),
            " bytes, so at most ", limit, " bytes can)"));
      }
      r.prompt =
          EncodePrompt(*tokenizer_, p.text(),
                       p.has_add_special() ? std::optional<bool>(p.add_special()) : std::nullopt,
                       p.parse_special());
      if (r.prompt.empty()) {
        return absl::InvalidArgumentError("text encodes to no tokens: the prompt is empty");
      }
      break;
    }
    case v1::GenerateRequest::kTokens:
      if (p.tokens().ids().empty()) {
        return absl::InvalidArgumentError(
            "tokens.ids is empty: the prompt needs at least one token");
      }
      for (int i = 0; i < p.tokens().ids_size(); ++i) {
        RETURN_IF_ERROR(
            CheckTokenId(p.tokens().ids(i), n_vocab, absl::StrCat("tokens.ids[", i, "]")));
      }
      r.prompt.assign(p.tokens().ids().begin(), p.tokens().ids().end());
      break;
    case v1::GenerateRequest::PROMPT_NOT_SET:
      return absl::InvalidArgumentError("no prompt: set text or tokens");
  }

  SamplingParams& s = r.sampling;
  if (p.has_temperature()) s.temperature = p.temperature();
  s.top_k = p.top_k();
  if (p.has_top_p()) s.top_p = p.top_p();
  s.min_p = p.min_p();
  if (p.has_repetition_penalty()) s.repetition_penalty = p.repetition_penalty();
  s.presence_penalty = p.presence_penalty();
  s.frequency_penalty = p.frequency_penalty();
  if (p.has_penalty_last_n()) s.penalty_last_n = p.penalty_last_n();
  s.seed = p.has_seed() ? p.seed() : Rng()();
  if (p.logprobs() < 0 || p.logprobs() > kMaxLogprobs) {
    return absl::InvalidArgumentError(
        absl::StrCat("logprobs must be in [0, ", kMaxLogprobs, "], got ", p.logprobs()));
  }
  s.n_logprobs = p.logprobs();
  RETURN_IF_ERROR(s.Validate(n_vocab));

  const int32_t prompt_len = static_cast<int32_t>(r.prompt.size());
  if (p.has_max_tokens()) {
    if (p.max_tokens() < 1 || p.max_tokens() > kMaxMaxTokens) {
      return absl::InvalidArgumentError(
          absl::StrCat("max_tokens must be in [1, ", kMaxMaxTokens, "], got ", p.max_tokens()));
    }
    if (max_tokens_limit_ > 0 && p.max_tokens() > max_tokens_limit_) {
      return absl::InvalidArgumentError(absl::StrCat("max_tokens ", p.max_tokens(),
                                                     " exceeds this server's limit of ",
                                                     max_tokens_limit_, " (--max-tokens-limit)"));
    }
    r.max_tokens = p.max_tokens();
  } else {
    // What fits (and the server's limit); a prompt that fills the context
    // still asks for one token and gets the scheduler's OUT_OF_RANGE.
    int32_t n = std::min(kDefaultMaxTokens, ctx_per_slot_ - prompt_len);
    if (max_tokens_limit_ > 0) n = std::min(n, max_tokens_limit_);
    r.max_tokens = std::max(1, n);
  }

  if (p.stop_size() > kMaxStopStrings) {
    return absl::InvalidArgumentError(absl::StrCat("stop has ", p.stop_size(), " strings; at most ",
                                                   kMaxStopStrings, " are allowed"));
  }
  for (int i = 0; i < p.stop_size(); ++i) {
    if (p.stop(i).empty()) {
      return absl::InvalidArgumentError(absl::StrCat("stop[", i, "] is empty"));
    }
    if (p.stop(i).size() > kMaxStopStringBytes) {
      return absl::InvalidArgumentError(absl::StrCat("stop[", i, "] is ", p.stop(i).size(),
                                                     " bytes long; at most ", kMaxStopStringBytes,
                                                     " are allowed"));
    }
    r.stop.push_back(p.stop(i));
  }
  if (p.stop_token_ids_size() > kMaxStopIds) {
    return absl::InvalidArgumentError(absl::StrCat("stop_token_ids has ", p.stop_token_ids_size(),
                                                   " ids; at most ", kMaxStopIds, " are allowed"));
  }
  for (int i = 0; i < p.stop_token_ids_size(); ++i) {
    RETURN_IF_ERROR(
        CheckTokenId(p.stop_token_ids(i), n_vocab, absl::StrCat("stop_token_ids[", i, "]")));
    r.stop_ids.push_back(p.stop_token_ids(i));
  }
  r.ignore_eos = p.ignore_eos();
  return r;
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* InferenceService::Generate(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request) {
  v1::GenerateRequest proto;
  const absl::Status parsed = ParseRequest(*request, &proto);
  const std::string client_id = parsed.ok() ? proto.request_id() : "";
  if (!parsed.ok()) return StartStream(context, "Generate", parsed, client_id);
  return StartStream(context, "Generate", std::move(proto), client_id);
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* InferenceService::Chat(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request) {
  v1::ChatRequest chat;
  const absl::Status parsed = ParseRequest(*request, &chat);
  if (!parsed.ok()) return StartStream(context, "Chat", parsed, "");
  return StartStream(context, "Chat", ChatToGenerate(chat), chat.options().request_id());
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* InferenceService::StartStream(
    grpc::CallbackServerContext* context, const char* method,
    absl::StatusOr<v1::GenerateRequest> proto, const std::string& client_id) {
  // The client's request id, when valid, names the stream even when the
  // request is refused.
  std::string id = IsValidRequestId(client_id) ? client_id : NewRequestId();
  const SteadyTime deadline = ToSteadyDeadline(context->deadline());
  auto* reactor = new GenerateReactor(scheduler_, metrics_, method, id, context->peer(), deadline);
  // The cheap refusals first, before any tokenizing: an expired deadline, a
  // full queue, a draining or failed server.
  if (proto.ok() && deadline <= Clock::now()) {
    proto = absl::DeadlineExceededError("the request deadline passed before it was admitted");
  }
  if (proto.ok()) {
    if (absl::Status a = scheduler_->AdmissionCheck(); !a.ok()) proto = a;
  }
  absl::StatusOr<GenerateRequest> req =
      proto.ok() ? ToEngineRequest(*proto, id) : absl::StatusOr<GenerateRequest>(proto.status());
  if (!req.ok()) {
    reactor->Reject(req.status());
    return reactor;
  }
  req->deadline = deadline;
  reactor->Start(*std::move(req));
  return reactor;
}

grpc::ServerUnaryReactor* InferenceService::Tokenize(grpc::CallbackServerContext* context,
                                                     const grpc::ByteBuffer* request,
                                                     grpc::ByteBuffer* response) {
  const Clock::time_point start = Clock::now();
  v1::TokenizeRequest req;
  absl::Status status = ParseRequest(*request, &req);
  if (status.ok()) {
    const std::vector<int32_t> ids =
        EncodePrompt(*tokenizer_, req.text(),
                     req.has_add_special() ? std::optional<bool>(req.add_special()) : std::nullopt,
                     req.parse_special());
    v1::TokenizeResponse resp;
    resp.mutable_ids()->Add(ids.begin(), ids.end());
    status = SerializeResponse(resp, response);
  }
  return FinishUnary(context, "Tokenize", status, start);
}

grpc::ServerUnaryReactor* InferenceService::Detokenize(grpc::CallbackServerContext* context,
                                                       const v1::DetokenizeRequest* request,
                                                       v1::DetokenizeResponse* response) {
  const Clock::time_point start = Clock::now();
  absl::Status status;
  for (int i = 0; i < request->ids_size() && status.ok(); ++i) {
    status = CheckTokenId(request->ids(i), tokenizer_->n_vocab(), absl::StrCat("ids[", i, "]"));
  }
  if (status.ok()) {
    const std::vector<int32_t> ids(request->ids().begin(), request->ids().end());
    response->set_text(SanitizeUtf8(tokenizer_->Decode(ids)));
  }
  return FinishUnary(context, "Detokenize", status, start);
}

grpc::ServerUnaryReactor* InferenceService::GetModelInfo(grpc::CallbackServerContext* context,
                                                         const v1::GetModelInfoRequest* request,
                                                         v1::ModelInfo* response) {
  const Clock::time_point start = Clock::now();
  *response = model_info_;
  return FinishUnary(context, "GetModelInfo", absl::OkStatus(), start);
}

}  // namespace m40llm
