// `m40llm client` (see client.h).
#include "tools/m40llm/client.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <utility>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "google/protobuf/util/json_util.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "m40llm/v1/m40llm.grpc.pb.h"

namespace m40llm {
namespace {

std::shared_ptr<grpc::Channel> Connect(const ClientOpts& o) {
  return grpc::CreateChannel(o.addr, grpc::InsecureChannelCredentials());
}

void SetDeadline(grpc::ClientContext* ctx, double seconds) {
  if (seconds > 0) {
    ctx->set_deadline(std::chrono::system_clock::now() +
                      std::chrono::duration_cast<std::chrono::system_clock::duration>(
                          std::chrono::duration<double>(seconds)));
  }
}

int RpcFailed(const grpc::Status& s) {
  std::fprintf(stderr, "error: %s: %s\n",
               absl::StatusCodeToString(static_cast<absl::StatusCode>(s.error_code())).c_str(),
               s.error_message().c_str());
  return 1;
}

std::string Json(const google::protobuf::Message& m) {
  google::protobuf::util::JsonPrintOptions opts;
  opts.preserve_proto_field_names = true;
  std::string out;
  if (!google::protobuf::util::MessageToJsonString(m, &out, opts).ok()) out = "{}";
  return out;
}

const char* FinishName(v1::FinishReason r) {
  switch (r) {
    case v1::FINISH_REASON_STOP:
      return "stop";
    case v1::FINISH_REASON_LENGTH:
      return "length";
    case v1::FINISH_REASON_STOP_SEQUENCE:
      return "stop_sequence";
    case v1::FINISH_REASON_CANCELLED:
      return "cancelled";
    default:
      return "unspecified";
  }
}

int RunGenerate(ClientOpts& o) {
  v1::GenerateRequest& req = o.request;
  if (!o.tokens.empty()) {
    for (absl::string_view part : absl::StrSplit(o.tokens, ',', absl::SkipWhitespace())) {
      int32_t id;
      if (!absl::SimpleAtoi(part, &id)) {
        std::fprintf(stderr, "error: not a token id: '%s'\n", std::string(part).c_str());
        return 1;
      }
      req.mutable_tokens()->add_ids(id);
    }
  } else {
    req.set_text(o.prompt);
  }
  auto stub = v1::Inference::NewStub(Connect(o));
  grpc::ClientContext ctx;
  SetDeadline(&ctx, o.timeout_seconds);
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader = stub->Generate(&ctx, req);
  v1::GenerateResponse m;
  v1::GenerateResponse last;
  std::vector<v1::TokenLogprobs> logprobs;
  bool wrote_text = false;
  while (reader->Read(&m)) {
    if (o.json) {
      std::printf("%s\n", Json(m).c_str());
    } else {
      std::fputs(m.text().c_str(), stdout);
      wrote_text = wrote_text || !m.text().empty();
      logprobs.insert(logprobs.end(), m.logprobs().begin(), m.logprobs().end());
    }
    std::fflush(stdout);
    last = m;
  }
  const grpc::Status status = reader->Finish();
  if (wrote_text) std::fputs("\n", stdout);
  if (!status.ok()) return RpcFailed(status);
  for (const v1::TokenLogprobs& lp : logprobs) {
    std::fprintf(stderr, "token %6d  logprob %8.4f", lp.token(), lp.logprob());
    if (lp.top_size() > 0) std::fprintf(stderr, "  top:");
    for (const v1::TopLogprob& t : lp.top())
      std::fprintf(stderr, " %d (%.4f)", t.token(), t.logprob());
    std::fprintf(stderr, "\n");
  }
  const v1::Timings& t = last.timings();
  const int completion = last.usage().completion_tokens();
  std::fprintf(
      stderr,
      "request %s: finish %s; prompt %d tokens, completion %d tokens; queue %.3f s, "
      "first token %.3f s, decode %.3f s (%.1f tok/s); seed %llu\n",
      last.request_id().c_str(), FinishName(last.finish_reason()), last.usage().prompt_tokens(),
      completion, t.queue_seconds(), t.time_to_first_token_seconds(), t.decode_seconds(),
      completion > 1 && t.decode_seconds() > 0 ? (completion - 1) / t.decode_seconds() : 0.0,
      static_cast<unsigned long long>(last.seed()));
  return 0;
}

int RunHealth(const ClientOpts& o) {
  auto stub = grpc::health::v1::Health::NewStub(Connect(o));
  grpc::ClientContext ctx;
  SetDeadline(&ctx, o.timeout_seconds > 0 ? o.timeout_seconds : 5);
  grpc::health::v1::HealthCheckRequest req;
  req.set_service(o.service);
  grpc::health::v1::HealthCheckResponse resp;
  const grpc::Status status = stub->Check(&ctx, req, &resp);
  if (!status.ok()) return RpcFailed(status);
  std::printf("%s\n",
              grpc::health::v1::HealthCheckResponse::ServingStatus_Name(resp.status()).c_str());
  return resp.status() == grpc::health::v1::HealthCheckResponse::SERVING ? 0 : 1;
}

int RunInfo(const ClientOpts& o) {
  auto stub = v1::Inference::NewStub(Connect(o));
  grpc::ClientContext ctx;
  SetDeadline(&ctx, o.timeout_seconds > 0 ? o.timeout_seconds : 10);
  v1::ModelInfo info;
  const grpc::Status status = stub->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info);
  if (!status.ok()) return RpcFailed(status);
  std::printf("%s\n", Json(info).c_str());
  return 0;
}

// The GenerateRequest options both generate and chat take (sampling,
// limits, stops, logprobs, request id), set on `r` only when given.
void AddRequestFlags(CLI::App* app, v1::GenerateRequest* r) {
  app->add_option_function<int32_t>(
      "-n,--max-tokens", [r](int32_t v) { r->set_max_tokens(v); },
      "tokens to generate (default: the server's, 256 or what fits)");
  app->add_option_function<float>(
      "--temperature,--temp", [r](float v) { r->set_temperature(v); }, "0 = greedy (default 1)");
  app->add_option_function<int32_t>(
      "--top-k", [r](int32_t v) { r->set_top_k(v); }, "keep the k most likely tokens (0 = off)");
  app->add_option_function<float>(
      "--top-p", [r](float v) { r->set_top_p(v); }, "nucleus sampling mass (1 = off)");
  app->add_option_function<float>(
      "--min-p", [r](float v) { r->set_min_p(v); },
      "drop tokens below min-p x the top probability");
  app->add_option_function<float>(
      "--repeat-penalty", [r](float v) { r->set_repetition_penalty(v); },
      "repetition penalty (1 = off)");
  app->add_option_function<float>("--presence-penalty", [r](float v) { r->set_presence_penalty(v); });
  app->add_option_function<float>("--frequency-penalty",
                                [r](float v) { r->set_frequency_penalty(v); });
  app->add_option_function<int32_t>(
      "--penalty-last-n", [r](int32_t v) { r->set_penalty_last_n(v); },
      "tokens the penalties look back over (-1 = all; default 64)");
  app->add_option_function<uint64_t>(
      "--seed", [r](uint64_t v) { r->set_seed(v); }, "sampling seed (default: random)");
  app->add_option_function<std::vector<std::string>>(
      "--stop",
      [r](const std::vector<std::string>& v) {
        for (const std::string& s : v) r->add_stop(s);
      },
      "stop string (repeatable)");
  app->add_option_function<std::vector<int32_t>>(
      "--stop-id",
      [r](const std::vector<int32_t>& v) {
        for (int32_t id : v) r->add_stop_token_ids(id);
      },
      "stop token id (repeatable)");
  app->add_flag_callback(
      "--no-add-special", [r] { r->set_add_special(false); }, "do not add BOS");
  app->add_flag_callback(
      "--ignore-eos", [r] { r->set_ignore_eos(true); }, "keep going past end-of-generation tokens");
  app->add_option_function<int32_t>(
      "--logprobs", [r](int32_t v) { r->set_logprobs(v); },
      "report the top N log-probabilities per token on stderr (0..20)");
  app->add_option_function<std::string>(
      "--request-id", [r](const std::string& v) { r->set_request_id(v); },
      "request id (default: generated by the server)");
}

// One Chat call with the conversation so far; streams the reply to stdout
// and returns its text (empty on failure, which is reported).
bool ChatTurn(v1::Inference::Stub* stub, const ClientOpts& o,
              const std::vector<std::pair<std::string, std::string>>& history,
              std::string* reply) {
  v1::ChatRequest req;
  for (const auto& [role, content] : history) {
    v1::ChatMessage* m = req.add_messages();
    m->set_role(role);
    m->set_content(content);
  }
  req.set_chat_template(o.chat_template);
  *req.mutable_options() = o.request;
  grpc::ClientContext ctx;
  SetDeadline(&ctx, o.timeout_seconds);
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader = stub->Chat(&ctx, req);
  v1::GenerateResponse m;
  while (reader->Read(&m)) {
    *reply += m.text();
    std::fputs(m.text().c_str(), stdout);
    std::fflush(stdout);
  }
  std::fputs("\n", stdout);
  std::fflush(stdout);
  const grpc::Status status = reader->Finish();
  if (!status.ok()) {
    RpcFailed(status);
    return false;
  }
  return true;
}

// An interactive chat: one line of standard input a user turn.
int RunChat(const ClientOpts& o) {
  auto stub = v1::Inference::NewStub(Connect(o));
  std::vector<std::pair<std::string, std::string>> history;
  if (!o.system.empty()) history.emplace_back("system", o.system);
  const bool tty = isatty(STDIN_FILENO) != 0;
  std::string line;
  for (;;) {
    if (tty) std::fputs("> ", stderr);
    if (!std::getline(std::cin, line)) return 0;
    if (line.empty()) continue;
    history.emplace_back("user", line);
    std::string reply;
    if (!ChatTurn(stub.get(), o, history, &reply)) return 1;
    history.emplace_back("assistant", reply);
  }
}

void AddConnectionOpts(CLI::App* app, ClientOpts* o, const char* timeout_help) {
  app->add_option("--addr", o->addr, "server address host:port")
      ->envname("M40LLM_ADDR")
      ->capture_default_str();
  app->add_option("--timeout", o->timeout_seconds, timeout_help);
}

}  // namespace

CLI::App* AddClientCommand(CLI::App* app, ClientOpts* o) {
  CLI::App* client = app->add_subcommand("client", "talk to a running m40llm server");
  client->require_subcommand(1);

  CLI::App* g = client->add_subcommand(
      "generate", "stream a completion to stdout; usage and timings go to stderr");
  AddConnectionOpts(g, o, "deadline in seconds (default: none)");
  v1::GenerateRequest* r = &o->request;
  auto* prompt = g->add_option("-p,--prompt", o->prompt, "prompt text");
  auto* tokens = g->add_option("--tokens", o->tokens, "prompt as comma-separated token ids");
  prompt->excludes(tokens);
  AddRequestFlags(g, r);
  g->add_flag_callback(
      "--special", [r] { r->set_parse_special(true); },
      "parse special tokens (e.g. <s>) in the prompt");
  g->add_flag("--json", o->json, "print every response message as one JSON line instead of text");

  CLI::App* ch = client->add_subcommand(
      "chat", "chat through the server's Chat RPC (one line of standard input a turn)");
  AddConnectionOpts(ch, o, "deadline per reply in seconds (default: none)");
  ch->add_option("--template", o->chat_template,
                 "chat template: a family name or a template's text (default: the server's)");
  ch->add_option("--system", o->system, "system message opening the conversation");
  AddRequestFlags(ch, r);

  CLI::App* h = client->add_subcommand(
      "health", "check the server's health; exit 0 when SERVING, 1 otherwise");
  AddConnectionOpts(h, o, "deadline in seconds (default 5)");
  h->add_option("--service", o->service,
                "service to ask about (default: the server as a whole; e.g. m40llm.v1.Inference)");

  CLI::App* i = client->add_subcommand("info", "print the server's model info as JSON");
  AddConnectionOpts(i, o, "deadline in seconds (default 10)");
  return client;
}

int RunClient(const CLI::App& client, ClientOpts& o) {
  if (*client.get_subcommand("generate")) {
    if (o.prompt.empty() && o.tokens.empty()) {
      std::fprintf(stderr, "error: client generate needs --prompt or --tokens\n");
      return 1;
    }
    return RunGenerate(o);
  }
  if (*client.get_subcommand("chat")) return RunChat(o);
  if (*client.get_subcommand("health")) return RunHealth(o);
  if (*client.get_subcommand("info")) return RunInfo(o);
  return 1;
}

}  // namespace m40llm
