// The gRPC service end to end in-process: the real InferenceService on
// 127.0.0.1:0 (with the health and reflection services RunServe adds) in
// front of a scripted fake Scheduler, and the demo model's real tokenizer.
#include "server/service.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/demo_vocab.h"
#include "engine/scheduler.h"
#include "engine/tokenizer.h"
#include "gmock/gmock.h"
#include "google/protobuf/descriptor.pb.h"
#include "google/protobuf/unknown_field_set.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/sync_stream.h"
#include "gtest/gtest.h"
#include "m40llm/v1/m40llm.grpc.pb.h"
#include "persistent/config.h"
#include "server/grpc_server.h"
#include "server/metrics.h"
#include "server/status.h"

namespace m40llm {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// ---- a scripted scheduler ----------------------------------------------------

// What the fake plays to each accepted request's observer.
struct Script {
  std::vector<StreamDelta> deltas;
  absl::Status final_status;  // OnDone's status
  FinalInfo info;
  milliseconds delay{0};   // before each delta; a Cancel() cuts it short
  bool in_submit = false;  // play everything inside Submit(), before it returns
};

StreamDelta Delta(std::vector<int32_t> tokens, std::string text) {
  StreamDelta d;
  for (int32_t t : tokens) {
    TokenOut out;
    out.token = t;
    out.logprob = -0.5f * static_cast<float>(t % 7);
    out.top = {{t, out.logprob}, {t + 1, out.logprob - 1.0f}};
    d.tokens.push_back(std::move(out));
  }
  d.text = std::move(text);
  return d;
}

class FakeScheduler final : public Scheduler {
 public:
  explicit FakeScheduler(SchedulerOptions opts) : opts_(opts) {}
  ~FakeScheduler() override { Shutdown(); }

  void SetScript(Script s) {
    std::lock_guard<std::mutex> lock(mu_);
    script_ = std::move(s);
  }
  // Submit() returns `s` (not OK) instead of accepting.
  void FailSubmits(absl::Status s) {
    std::lock_guard<std::mutex> lock(mu_);
    submit_error_ = std::move(s);
  }
  // AdmissionCheck() returns `s`.
  void FailAdmission(absl::Status s) {
    std::lock_guard<std::mutex> lock(mu_);
    admission_error_ = std::move(s);
  }
  absl::Status AdmissionCheck() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return admission_error_;
  }

  absl::StatusOr<uint64_t> Submit(GenerateRequest req,
                                  std::shared_ptr<StreamObserver> observer) override {
    Script script;
    uint64_t handle;
    std::shared_ptr<std::atomic<bool>> cancelled;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (draining_) return absl::UnavailableError("the server is draining (fake)");
      if (!submit_error_.ok()) return submit_error_;
      submitted_.push_back(req);
      handle = ++next_handle_;
      handles_.push_back(handle);
      cancelled = std::make_shared<std::atomic<bool>>(false);
      cancel_flags_.emplace_back(handle, cancelled);
      script = script_;
    }
    if (script.in_submit) {
      Play(script, observer.get(), *cancelled);
    } else {
      std::lock_guard<std::mutex> lock(mu_);
      threads_.emplace_back(
          [this, script, observer, cancelled] { Play(script, observer.get(), *cancelled); });
    }
    return handle;
  }

  void Cancel(uint64_t handle, const absl::Status&) override {
    std::lock_guard<std::mutex> lock(mu_);
    cancelled_.push_back(handle);
    for (auto& [h, flag] : cancel_flags_) {
      if (h == handle) flag->store(true);
    }
    cv_.notify_all();
  }

  void StartDrain() override {
    std::lock_guard<std::mutex> lock(mu_);
    draining_ = true;
  }
  bool WaitIdle(std::chrono::milliseconds) override { return true; }
  void Shutdown() override {
    std::vector<std::thread> threads;
    {
      std::lock_guard<std::mutex> lock(mu_);
      threads.swap(threads_);
    }
    for (std::thread& t : threads) t.join();
  }
  SchedulerStats stats() const override { return {}; }
  const SchedulerOptions& options() const override { return opts_; }

  std::vector<GenerateRequest> submitted() const {
    std::lock_guard<std::mutex> lock(mu_);
    return submitted_;
  }
  std::vector<uint64_t> handles() const {
    std::lock_guard<std::mutex> lock(mu_);
    return handles_;
  }
  // Waits up to `timeout` for a Cancel() call; returns the handles cancelled.
  std::vector<uint64_t> WaitForCancel(milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, timeout, [&] { return !cancelled_.empty(); });
    return cancelled_;
  }

 private:
  void Play(const Script& script, StreamObserver* observer, const std::atomic<bool>& cancelled) {
    for (const StreamDelta& d : script.deltas) {
      if (script.delay.count() > 0) {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait_for(lock, script.delay, [&] { return cancelled.load(); });
      }
      if (cancelled.load()) {
        FinalInfo info = script.info;
        info.reason = StreamFinish::kCancelled;
        observer->OnDone(absl::OkStatus(), info);
        return;
      }
      observer->OnDelta(d);
    }
    observer->OnDone(script.final_status, script.info);
  }

  const SchedulerOptions opts_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  Script script_;
  absl::Status submit_error_;
  bool draining_ = false;
  uint64_t next_handle_ = 100;
  absl::Status admission_error_;
  std::vector<GenerateRequest> submitted_;
  std::vector<uint64_t> handles_;
  std::vector<uint64_t> cancelled_;
  std::vector<std::pair<uint64_t, std::shared_ptr<std::atomic<bool>>>> cancel_flags_;
  std::vector<std::thread> threads_;
};

// ---- raw calls (bytes the typed stubs would not send) -----------------------

// Protobuf wire format by hand: a length-delimited field is the varint tag
// (number << 3 | 2), the varint length, the payload.
std::string Varint(uint64_t v) {
  std::string out;
  do {
    const uint8_t low = v & 0x7f;
    v >>= 7;
    out.push_back(static_cast<char>(v != 0 ? (low | 0x80) : low));
  } while (v != 0);
  return out;
}

std::string Field(int number, const std::string& payload) {
  return Varint((static_cast<uint64_t>(number) << 3) | 2) + Varint(payload.size()) + payload;
}

// Sends each of `requests` on a streaming call to `method` and collects the
// responses. Works for unary and server-streaming methods too: the wire
// protocol is the same.
grpc::Status RawCall(grpc::Channel* channel, const char* method,
                     const std::vector<std::string>& requests,
                     std::vector<std::string>* responses) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + seconds(10));
  const grpc::internal::RpcMethod rpc(method, grpc::internal::RpcMethod::BIDI_STREAMING);
  std::unique_ptr<grpc::ClientReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>> stream(
      grpc::internal::ClientReaderWriterFactory<grpc::ByteBuffer, grpc::ByteBuffer>::Create(
          channel, rpc, &ctx));
  for (const std::string& r : requests) {
    grpc::Slice slice(r);
    grpc::ByteBuffer buf(&slice, 1);
    stream->Write(buf);
  }
  stream->WritesDone();
  grpc::ByteBuffer in;
  while (stream->Read(&in)) {
    grpc::Slice flat;
    EXPECT_TRUE(in.DumpToSingleSlice(&flat).ok());
    responses->emplace_back(reinterpret_cast<const char*>(flat.begin()), flat.size());
  }
  return stream->Finish();
}

// ---- the fixture ---------------------------------------------------------------

struct StreamResult {
  grpc::Status status;
  std::vector<v1::GenerateResponse> messages;

  std::string text() const {
    std::string t;
    for (const auto& m : messages) t += m.text();
    return t;
  }
  std::vector<int32_t> token_ids() const {
    std::vector<int32_t> ids;
    for (const auto& m : messages)
      ids.insert(ids.end(), m.token_ids().begin(), m.token_ids().end());
    return ids;
  }
};

class ServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto tok = Tokenizer::Create(MakeDemoVocab());
    ASSERT_TRUE(tok.ok()) << tok.status();
    tokenizer_ = std::move(*tok);
    SchedulerOptions so;
    so.max_batch = 2;
    so.ctx_per_slot = 64;
    so.queue_size = 4;
    scheduler_ = std::make_unique<FakeScheduler>(so);
    auto metrics = Metrics::Create(MetricsOptions{});
    ASSERT_TRUE(metrics.ok()) << metrics.status();
    metrics_ = std::move(*metrics);
    v1::ModelInfo info;
    info.set_name("demo");
    info.set_n_vocab(tokenizer_->n_vocab());
    service_ = std::make_unique<InferenceService>(scheduler_.get(), tokenizer_.get(),
                                                  metrics_.get(), info);
    int port = 0;
    auto server =
        StartGrpcServer("127.0.0.1:0", service_.get(), v1::Inference::service_full_name(), &port);
    ASSERT_TRUE(server.ok()) << server.status();
    ASSERT_GT(port, 0);
    server_ = std::move(*server);
    channel_ = grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                                   grpc::InsecureChannelCredentials());
    stub_ = v1::Inference::NewStub(channel_);
  }

  void TearDown() override {
    if (server_) server_->Shutdown(std::chrono::system_clock::now() + seconds(5));
    if (scheduler_) scheduler_->Shutdown();
  }

  StreamResult Generate(const v1::GenerateRequest& req,
                        std::optional<std::chrono::system_clock::time_point> deadline = {}) {
    grpc::ClientContext ctx;
    ctx.set_deadline(deadline.value_or(std::chrono::system_clock::now() + seconds(30)));
    StreamResult r;
    auto reader = stub_->Generate(&ctx, req);
    v1::GenerateResponse m;
    while (reader->Read(&m)) r.messages.push_back(m);
    r.status = reader->Finish();
    return r;
  }

  double RequestsTotal(const std::string& status) const {
    const std::string text = metrics_->Serialize();
    const std::string key = "m40llm_requests_total{status=\"" + status + "\"} ";
    const size_t at = text.find(key);
    if (at == std::string::npos) return -1;
    return std::stod(text.substr(at + key.size()));
  }

  static v1::GenerateRequest TextRequest(const std::string& text) {
    v1::GenerateRequest r;
    r.set_text(text);
    return r;
  }

  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<FakeScheduler> scheduler_;
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<InferenceService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Inference::Stub> stub_;
};

// ---- Generate: streaming ---------------------------------------------------------

TEST_F(ServiceTest, StreamsDeltasThenAFinalMessage) {
  Script s;
  s.deltas = {Delta({300}, "He"), Delta({301}, "llo"), Delta({302, 303}, " wo"), Delta({}, "rld")};
  s.delay = milliseconds(5);
  s.info.reason = StreamFinish::kLength;
  s.info.prompt_tokens = 3;
  s.info.completion_tokens = 4;
  s.info.queue_seconds = 0.25;
  s.info.ttft_seconds = 0.5;
  s.info.decode_seconds = 1.5;
  scheduler_->SetScript(s);

  v1::GenerateRequest req = TextRequest("hello");
  req.set_request_id("req-42");
  req.set_seed(1234);
  req.set_max_tokens(4);
  req.set_temperature(0.5f);
  const StreamResult r = Generate(req);

  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  ASSERT_GE(r.messages.size(), 1u);
  EXPECT_EQ(r.text(), "Hello world");
  EXPECT_THAT(r.token_ids(), ElementsAre(300, 301, 302, 303));
  for (size_t i = 0; i < r.messages.size(); ++i) {
    const v1::GenerateResponse& m = r.messages[i];
    EXPECT_EQ(m.request_id(), "req-42");
    EXPECT_EQ(m.logprobs_size(), 0) << "logprobs were not asked for";
    if (i + 1 < r.messages.size()) {
      EXPECT_EQ(m.finish_reason(), v1::FINISH_REASON_UNSPECIFIED) << "message " << i;
      EXPECT_FALSE(m.has_usage());
    }
  }
  const v1::GenerateResponse& last = r.messages.back();
  EXPECT_EQ(last.finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(last.usage().prompt_tokens(), 3);
  EXPECT_EQ(last.usage().completion_tokens(), 4);
  EXPECT_DOUBLE_EQ(last.timings().queue_seconds(), 0.25);
  EXPECT_DOUBLE_EQ(last.timings().time_to_first_token_seconds(), 0.5);
  EXPECT_DOUBLE_EQ(last.timings().decode_seconds(), 1.5);
  EXPECT_EQ(last.seed(), 1234u);

  // What reached the scheduler.
  const std::vector<GenerateRequest> sub = scheduler_->submitted();
  ASSERT_EQ(sub.size(), 1u);
  EXPECT_EQ(sub[0].id, "req-42");
  EXPECT_EQ(sub[0].prompt, tokenizer_->Encode("hello", true, false));
  EXPECT_EQ(sub[0].prompt.front(), tokenizer_->vocab().bos) << "the demo model adds BOS";
  EXPECT_EQ(sub[0].max_tokens, 4);
  EXPECT_FLOAT_EQ(sub[0].sampling.temperature, 0.5f);
  EXPECT_EQ(sub[0].sampling.seed, 1234u);
  EXPECT_EQ(sub[0].sampling.n_logprobs, 0);
}

TEST_F(ServiceTest, FinishReasonsMapToTheApi) {
  const std::pair<StreamFinish, v1::FinishReason> cases[] = {
      {StreamFinish::kStop, v1::FINISH_REASON_STOP},
      {StreamFinish::kLength, v1::FINISH_REASON_LENGTH},
      {StreamFinish::kStopSequence, v1::FINISH_REASON_STOP_SEQUENCE},
      {StreamFinish::kCancelled, v1::FINISH_REASON_CANCELLED}};
  for (const auto& [finish, expected] : cases) {
    Script s;
    s.deltas = {Delta({300}, "a")};
    s.info.reason = finish;
    scheduler_->SetScript(s);
    const StreamResult r = Generate(TextRequest("hi"));
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    EXPECT_EQ(r.messages.back().finish_reason(), expected);
  }
}

TEST_F(ServiceTest, DefaultsFillUnsetFields) {
  scheduler_->SetScript(Script{});
  v1::GenerateRequest req;
  req.mutable_tokens()->add_ids(1);
  req.mutable_tokens()->add_ids(300);
  ASSERT_TRUE(Generate(req).status.ok());
  // Explicit zeros where zero is meaningful.
  req.set_temperature(0);
  req.set_penalty_last_n(0);
  req.set_seed(0);
  req.set_add_special(true);  // ignored for token prompts
  ASSERT_TRUE(Generate(req).status.ok());

  const std::vector<GenerateRequest> sub = scheduler_->submitted();
  ASSERT_EQ(sub.size(), 2u);
  const SamplingParams defaults;
  EXPECT_EQ(sub[0].prompt, (std::vector<int32_t>{1, 300}));
  EXPECT_FLOAT_EQ(sub[0].sampling.temperature, defaults.temperature);
  EXPECT_FLOAT_EQ(sub[0].sampling.top_p, defaults.top_p);
  EXPECT_FLOAT_EQ(sub[0].sampling.repetition_penalty, defaults.repetition_penalty);
  EXPECT_EQ(sub[0].sampling.penalty_last_n, defaults.penalty_last_n);
  // Unset max_tokens: min(256, ctx_per_slot 64 - 2 prompt tokens).
  EXPECT_EQ(sub[0].max_tokens, 62);
  EXPECT_EQ(sub[0].deadline - std::chrono::steady_clock::now() > std::chrono::seconds(25), true);

  EXPECT_EQ(sub[1].prompt, (std::vector<int32_t>{1, 300}));
  EXPECT_FLOAT_EQ(sub[1].sampling.temperature, 0.0f);
  EXPECT_EQ(sub[1].sampling.penalty_last_n, 0);
  EXPECT_EQ(sub[1].sampling.seed, 0u);
}

TEST_F(ServiceTest, AddSpecialFollowsTheModelUnlessSet) {
  scheduler_->SetScript(Script{});
  const int32_t bos = tokenizer_->vocab().bos;
  v1::GenerateRequest req = TextRequest("hello world");
  ASSERT_TRUE(Generate(req).status.ok());
  req.set_add_special(false);
  ASSERT_TRUE(Generate(req).status.ok());
  req.set_add_special(true);
  ASSERT_TRUE(Generate(req).status.ok());
  const std::vector<GenerateRequest> sub = scheduler_->submitted();
  ASSERT_EQ(sub.size(), 3u);
  EXPECT_EQ(sub[0].prompt.front(), bos);
  EXPECT_NE(sub[1].prompt.front(), bos);
  EXPECT_EQ(sub[1].prompt, tokenizer_->Encode("hello world", false, false));
  EXPECT_EQ(sub[2].prompt, sub[0].prompt);
}

// ---- The server's max_tokens limit ----------------------------------------------

TEST_F(ServiceTest, MaxTokensLimitRefusesLargerRequestsAndCapsTheDefault) {
  ServicePolicy policy;
  policy.max_tokens_limit = 10;
  v1::ModelInfo info;
  InferenceService svc(scheduler_.get(), tokenizer_.get(), nullptr, info, policy);
  v1::GenerateRequest p = TextRequest("hello");
  p.set_max_tokens(11);
  auto r = svc.ToEngineRequest(p, "id");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("--max-tokens-limit"));
  p.set_max_tokens(10);
  ASSERT_TRUE(svc.ToEngineRequest(p, "id").ok());
  p.clear_max_tokens();  // the default: min(256, what fits, the limit)
  auto d = svc.ToEngineRequest(p, "id");
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->max_tokens, 10);
  // Without a limit the default is what fits the context of 64.
  auto free = service_->ToEngineRequest(p, "id");
  ASSERT_TRUE(free.ok());
  EXPECT_EQ(free->max_tokens, 64 - static_cast<int32_t>(free->prompt.size()));
}

// ---- Admission before work ----------------------------------------------------

TEST_F(ServiceTest, RefusesCheaplyBeforeTokenizing) {
  scheduler_->SetScript(Script{});
  // A text longer than the context can hold whatever it says: the bound
  // comes from the context (64 here) and the longest token.
  const size_t limit = 65 * tokenizer_->max_token_bytes();
  StreamResult r = Generate(TextRequest(std::string(limit + 1, 'a')));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::OUT_OF_RANGE);
  EXPECT_THAT(r.status.error_message(), HasSubstr("cannot fit the context of 64 tokens"));
  EXPECT_TRUE(scheduler_->submitted().empty());
  // A full queue (or a draining server) answers before the prompt is read.
  scheduler_->FailAdmission(absl::ResourceExhaustedError("the admission queue is full (fake)"));
  r = Generate(TextRequest("hello"));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_TRUE(scheduler_->submitted().empty());
  scheduler_->FailAdmission(absl::OkStatus());
  // A deadline that has passed by the time the call is handled.
  r = Generate(TextRequest("hello"), std::chrono::system_clock::now() - std::chrono::seconds(1));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_TRUE(scheduler_->submitted().empty());
}

// ---- Chat ------------------------------------------------------------------

TEST_F(ServiceTest, ChatFormatsTheConversationWithTheNamedTemplate) {
  scheduler_->SetScript(Script{});
  v1::ChatRequest req;
  auto* m = req.add_messages();
  m->set_role("system");
  m->set_content("Be brief.");
  m = req.add_messages();
  m->set_role("user");
  m->set_content("hello world");
  req.set_chat_template("chatml");
  req.mutable_options()->set_temperature(0);
  req.mutable_options()->set_max_tokens(5);
  req.mutable_options()->set_request_id("chat-1");
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + seconds(30));
  auto reader = stub_->Chat(&ctx, req);
  v1::GenerateResponse resp;
  std::vector<v1::GenerateResponse> got;
  while (reader->Read(&resp)) got.push_back(resp);
  ASSERT_TRUE(reader->Finish().ok());
  ASSERT_FALSE(got.empty());
  EXPECT_EQ(got.back().request_id(), "chat-1");
  // The conversation as ChatML writes it, then tokenized with BOS per the
  // model and special tokens parsed.
  const std::string want =
      "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhello world<|im_end|>\n"
      "<|im_start|>assistant\n";
  const std::vector<GenerateRequest> sub = scheduler_->submitted();
  ASSERT_EQ(sub.size(), 1u);
  EXPECT_EQ(sub[0].prompt, tokenizer_->Encode(want, true, true));
  EXPECT_FLOAT_EQ(sub[0].sampling.temperature, 0.0f);
  EXPECT_EQ(sub[0].max_tokens, 5);

  // Without the generation prompt: the last turn is the user's.
  req.set_add_generation_prompt(false);
  grpc::ClientContext ctx2;
  auto reader2 = stub_->Chat(&ctx2, req);
  while (reader2->Read(&resp)) {
  }
  ASSERT_TRUE(reader2->Finish().ok());
  ASSERT_EQ(scheduler_->submitted().size(), 2u);
  EXPECT_EQ(scheduler_->submitted()[1].prompt,
            tokenizer_->Encode(want.substr(0, want.size() - std::string("<|im_start|>assistant\n").size()),
                               true, true));
}

TEST_F(ServiceTest, ChatRefusesBadConversationsAndTemplates) {
  scheduler_->SetScript(Script{});
  auto chat = [this](const v1::ChatRequest& req) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + seconds(30));
    auto reader = stub_->Chat(&ctx, req);
    v1::GenerateResponse resp;
    while (reader->Read(&resp)) {
    }
    return reader->Finish();
  };
  v1::ChatRequest ok;
  auto* m = ok.add_messages();
  m->set_role("user");
  m->set_content("hi");
  // This server has no default template: a request must name one.
  grpc::Status s = chat(ok);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(s.error_message(), HasSubstr("name one"));

  v1::ChatRequest r = ok;
  r.set_chat_template("{% for m in messages %}~~{{ m.content }}~~{% endfor %}");
  s = chat(r);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(s.error_message(), HasSubstr("{% for m in messages %}~~"));
  EXPECT_THAT(s.error_message(), HasSubstr("Generate with a formatted prompt"));

  r = ok;
  r.set_chat_template("llama3");
  r.clear_messages();
  s = chat(r);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("messages is empty"));

  r = ok;
  r.set_chat_template("llama3");
  r.mutable_messages(0)->set_role("");
  s = chat(r);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("messages[0].role"));

  r = ok;
  r.set_chat_template("llama3");
  r.mutable_options()->set_text("a prompt");
  s = chat(r);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("options.text"));

  r = ok;
  r.set_chat_template("llama3");
  r.mutable_options()->set_top_p(7);
  s = chat(r);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("top_p"));
  EXPECT_TRUE(scheduler_->submitted().empty());

  // The model info names no template for this server.
  grpc::ClientContext ctx;
  v1::ModelInfo info;
  ASSERT_TRUE(stub_->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info).ok());
  EXPECT_EQ(info.chat_template(), "");
}

TEST_F(ServiceTest, GeneratesARequestIdWhenNoneIsGiven) {
  scheduler_->SetScript(Script{{Delta({300}, "x")}, {}, {}, {}, false});
  const StreamResult a = Generate(TextRequest("hi"));
  const StreamResult b = Generate(TextRequest("hi"));
  ASSERT_TRUE(a.status.ok());
  ASSERT_TRUE(b.status.ok());
  const std::string id = a.messages.front().request_id();
  EXPECT_TRUE(std::regex_match(id, std::regex("[0-9a-f]{32}"))) << id;
  for (const auto& m : a.messages) EXPECT_EQ(m.request_id(), id);
  EXPECT_NE(b.messages.front().request_id(), id);
  EXPECT_EQ(scheduler_->submitted().at(0).id, id);
}

TEST_F(ServiceTest, ForwardsLogprobsWhenAsked) {
  Script s;
  s.deltas = {Delta({300, 301}, "ab"), Delta({302}, "c")};
  scheduler_->SetScript(s);
  v1::GenerateRequest req = TextRequest("hi");
  req.set_logprobs(2);
  const StreamResult r = Generate(req);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(scheduler_->submitted().at(0).sampling.n_logprobs, 2);
  std::vector<v1::TokenLogprobs> lps;
  for (const auto& m : r.messages) {
    EXPECT_EQ(m.logprobs_size(), m.token_ids_size());
    lps.insert(lps.end(), m.logprobs().begin(), m.logprobs().end());
  }
  ASSERT_EQ(lps.size(), 3u);
  EXPECT_EQ(lps[1].token(), 301);
  EXPECT_FLOAT_EQ(lps[1].logprob(), -0.5f * (301 % 7));
  ASSERT_EQ(lps[1].top_size(), 2);
  EXPECT_EQ(lps[1].top(1).token(), 302);
  EXPECT_FLOAT_EQ(lps[1].top(1).logprob(), -0.5f * (301 % 7) - 1.0f);
}

TEST_F(ServiceTest, CoalescesDeltasWhileAWriteIsInFlight) {
  // Everything arrives inside Submit(), before the stream can write at all:
  // the first delta becomes the one write in flight, the other 199 must be
  // merged into the final message rather than queued as 199 writes.
  Script s;
  std::string expected;
  std::vector<int32_t> ids;
  for (int i = 0; i < 200; ++i) {
    s.deltas.push_back(Delta({300 + i % 100}, std::string(1, static_cast<char>('a' + i % 26))));
    expected += static_cast<char>('a' + i % 26);
    ids.push_back(300 + i % 100);
  }
  s.in_submit = true;
  s.info.reason = StreamFinish::kLength;
  s.info.completion_tokens = 200;
  scheduler_->SetScript(s);
  const StreamResult r = Generate(TextRequest("hi"));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.text(), expected);
  EXPECT_EQ(r.token_ids(), ids);
  EXPECT_LE(r.messages.size(), 2u);
  EXPECT_EQ(r.messages.back().usage().completion_tokens(), 200);
}

TEST_F(ServiceTest, EngineErrorAfterTokensEndsTheStreamWithThatError) {
  Script s;
  s.deltas = {Delta({300}, "par"), Delta({301}, "tial")};
  s.final_status = absl::InternalError("engine fault (fake)");
  scheduler_->SetScript(s);
  const StreamResult r = Generate(TextRequest("hi"));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INTERNAL);
  EXPECT_EQ(r.status.error_message(), "engine fault (fake)");
  EXPECT_EQ(r.text(), "partial") << "tokens produced before the error are delivered";
}

// ---- Generate: validation ---------------------------------------------------------

struct InvalidCase {
  const char* name;
  std::function<void(v1::GenerateRequest*)> edit;
  const char* message;  // expected substring
};

TEST_F(ServiceTest, RejectsInvalidRequestsWithPreciseMessages) {
  const InvalidCase cases[] = {
      {"no prompt", [](v1::GenerateRequest* r) { r->clear_prompt(); }, "no prompt"},
      {"empty text", [](v1::GenerateRequest* r) { r->set_text(""); }, "text is empty"},
      {"empty ids", [](v1::GenerateRequest* r) { r->mutable_tokens(); }, "tokens.ids is empty"},
      {"id past vocab",
       [](v1::GenerateRequest* r) {
         r->mutable_tokens()->add_ids(1);
         r->mutable_tokens()->add_ids(kDemoVocabSize);
       },
       "tokens.ids[1] = 512 is not a token id"},
      {"negative id", [](v1::GenerateRequest* r) { r->mutable_tokens()->add_ids(-1); },
       "tokens.ids[0] = -1"},
      {"temperature", [](v1::GenerateRequest* r) { r->set_temperature(-1); }, "temperature"},
      {"temperature nan", [](v1::GenerateRequest* r) { r->set_temperature(NAN); }, "temperature"},
      {"top_k", [](v1::GenerateRequest* r) { r->set_top_k(-1); }, "top_k"},
      {"top_p zero", [](v1::GenerateRequest* r) { r->set_top_p(0); }, "top_p"},
      {"top_p big", [](v1::GenerateRequest* r) { r->set_top_p(1.5f); }, "top_p"},
      {"min_p", [](v1::GenerateRequest* r) { r->set_min_p(2); }, "min_p"},
      {"repetition_penalty", [](v1::GenerateRequest* r) { r->set_repetition_penalty(0); },
       "repetition_penalty"},
      {"presence_penalty", [](v1::GenerateRequest* r) { r->set_presence_penalty(3); },
       "presence_penalty"},
      {"frequency_penalty", [](v1::GenerateRequest* r) { r->set_frequency_penalty(-2.5f); },
       "frequency_penalty"},
      {"penalty_last_n", [](v1::GenerateRequest* r) { r->set_penalty_last_n(-2); },
       "penalty_last_n"},
      {"max_tokens zero", [](v1::GenerateRequest* r) { r->set_max_tokens(0); },
       "max_tokens must be in [1, 131072], got 0"},
      {"max_tokens huge", [](v1::GenerateRequest* r) { r->set_max_tokens(kMaxMaxTokens + 1); },
       "max_tokens must be in [1, 131072]"},
      {"logprobs 21", [](v1::GenerateRequest* r) { r->set_logprobs(21); },
       "logprobs must be in [0, 20], got 21"},
      {"logprobs negative", [](v1::GenerateRequest* r) { r->set_logprobs(-1); }, "logprobs"},
      {"too many stops",
       [](v1::GenerateRequest* r) {
         for (int i = 0; i <= kMaxStopStrings; ++i) r->add_stop(absl::StrCat("s", i));
       },
       "stop has 17 strings; at most 16"},
      {"empty stop",
       [](v1::GenerateRequest* r) {
         r->add_stop("ok");
         r->add_stop("");
       },
       "stop[1] is empty"},
      {"long stop", [](v1::GenerateRequest* r) { r->add_stop(std::string(257, 'x')); },
       "stop[0] is 257 bytes long; at most 256"},
      {"too many stop ids",
       [](v1::GenerateRequest* r) {
         for (int i = 0; i <= kMaxStopIds; ++i) r->add_stop_token_ids(2);
       },
       "stop_token_ids has 9 ids; at most 8"},
      {"stop id past vocab", [](v1::GenerateRequest* r) { r->add_stop_token_ids(600); },
       "stop_token_ids[0] = 600 is not a token id"},
      {"request_id with space", [](v1::GenerateRequest* r) { r->set_request_id("a b"); },
       "request_id must be"},
      {"request_id too long",
       [](v1::GenerateRequest* r) { r->set_request_id(std::string(129, 'a')); },
       "request_id must be"},
  };
  int n = 0;
  for (const InvalidCase& c : cases) {
    v1::GenerateRequest req = TextRequest("hello");
    c.edit(&req);
    const StreamResult r = Generate(req);
    EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.name;
    EXPECT_THAT(r.status.error_message(), HasSubstr(c.message)) << c.name;
    EXPECT_TRUE(r.messages.empty()) << c.name;
    ++n;
  }
  EXPECT_TRUE(scheduler_->submitted().empty()) << "no invalid request may reach the scheduler";
  EXPECT_EQ(RequestsTotal("invalid_argument"), n);
}

TEST_F(ServiceTest, AcceptsTheBoundaryValues) {
  scheduler_->SetScript(Script{});
  v1::GenerateRequest req = TextRequest("hello");
  req.set_logprobs(kMaxLogprobs);
  req.set_max_tokens(1);
  req.set_top_p(1);
  req.set_min_p(1);
  req.set_temperature(0);
  req.set_presence_penalty(2);
  req.set_frequency_penalty(-2);
  req.set_penalty_last_n(-1);
  req.set_request_id(std::string(kMaxRequestIdLength, 'z'));
  for (int i = 0; i < kMaxStopStrings; ++i) req.add_stop(std::string(kMaxStopStringBytes, 'q'));
  for (int i = 0; i < kMaxStopIds; ++i) req.add_stop_token_ids(kDemoVocabSize - 1 - i);
  const StreamResult r = Generate(req);
  EXPECT_TRUE(r.status.ok()) << r.status.error_message();
  ASSERT_EQ(scheduler_->submitted().size(), 1u);
  EXPECT_EQ(scheduler_->submitted()[0].stop_ids.size(), static_cast<size_t>(kMaxStopIds));
  EXPECT_EQ(scheduler_->submitted()[0].stop.size(), static_cast<size_t>(kMaxStopStrings));
}

TEST_F(ServiceTest, InvalidUtf8IsInvalidArgumentNamingTheField) {
  // Raw bytes: the typed client stub would refuse to send them cleanly.
  const std::string text_field = Field(1, "hi");
  const struct {
    std::string wire;
    const char* message;
  } cases[] = {
      {Field(1, "caf\xc3"), "text is not valid UTF-8"},       // truncated sequence
      {Field(1, "\xc0\xaf"), "text is not valid UTF-8"},      // overlong '/'
      {Field(1, "\xed\xa0\x80"), "text is not valid UTF-8"},  // UTF-16 surrogate
      {Field(1, "\xff"), "text is not valid UTF-8"},
      {text_field + Field(15, "ok") + Field(15, "\xfe"), "stop[1] is not valid UTF-8"},
      {text_field + Field(19, "id\x80"), "request_id is not valid UTF-8"},
      {"\xff\xff\xff", "not a valid m40llm.v1.GenerateRequest message"},
  };
  for (const auto& c : cases) {
    std::vector<std::string> out;
    grpc::Status st = RawCall(channel_.get(), "/m40llm.v1.Inference/Generate", {c.wire}, &out);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.message;
    EXPECT_THAT(st.error_message(), HasSubstr(c.message));
    EXPECT_TRUE(out.empty());
  }
  // The same path accepts valid UTF-8 beyond ASCII.
  scheduler_->SetScript(Script{});
  std::vector<std::string> out;
  grpc::Status st = RawCall(channel_.get(), "/m40llm.v1.Inference/Generate",
                            {Field(1, "caf\xc3\xa9 \xf0\x9f\x98\x80")}, &out);
  EXPECT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(scheduler_->submitted().size(), 1u);

  out.clear();
  st = RawCall(channel_.get(), "/m40llm.v1.Inference/Tokenize", {Field(1, "a\xff")}, &out);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(st.error_message(), HasSubstr("text is not valid UTF-8"));
}

// ---- Generate: scheduler errors, cancellation, deadlines ---------------------------

TEST_F(ServiceTest, SchedulerRefusalsPassThroughWithTheirCodes) {
  const std::pair<absl::Status, grpc::StatusCode> cases[] = {
      {absl::ResourceExhaustedError("the admission queue is full (4 requests waiting)"),
       grpc::StatusCode::RESOURCE_EXHAUSTED},
      {absl::OutOfRangeError("prompt (6 tokens) + max_tokens (100) exceeds 64 positions"),
       grpc::StatusCode::OUT_OF_RANGE},
      {absl::UnavailableError("the server is draining"), grpc::StatusCode::UNAVAILABLE},
  };
  for (const auto& [status, code] : cases) {
    scheduler_->FailSubmits(status);
    const StreamResult r = Generate(TextRequest("hello"));
    EXPECT_EQ(r.status.error_code(), code);
    EXPECT_EQ(r.status.error_message(), std::string(status.message()));
    EXPECT_TRUE(r.messages.empty());
  }
  EXPECT_EQ(RequestsTotal("resource_exhausted"), 1);
  EXPECT_EQ(RequestsTotal("out_of_range"), 1);
  EXPECT_EQ(RequestsTotal("unavailable"), 1);
}

TEST_F(ServiceTest, DrainingSchedulerMeansUnavailable) {
  scheduler_->StartDrain();
  const StreamResult r = Generate(TextRequest("hello"));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  // Tokenizing still works while draining.
  v1::TokenizeRequest treq;
  treq.set_text("hello");
  v1::TokenizeResponse tresp;
  grpc::ClientContext ctx;
  EXPECT_TRUE(stub_->Tokenize(&ctx, treq, &tresp).ok());
}

TEST_F(ServiceTest, ClientCancelCancelsTheSchedulerRequest) {
  Script s;
  for (int i = 0; i < 1000; ++i) s.deltas.push_back(Delta({300}, "x"));
  s.delay = milliseconds(20);
  scheduler_->SetScript(s);

  grpc::ClientContext ctx;
  auto reader = stub_->Generate(&ctx, TextRequest("hello"));
  v1::GenerateResponse m;
  ASSERT_TRUE(reader->Read(&m));
  EXPECT_EQ(m.text(), "x");
  ctx.TryCancel();
  while (reader->Read(&m)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);

  const std::vector<uint64_t> cancelled = scheduler_->WaitForCancel(seconds(5));
  EXPECT_THAT(cancelled, ElementsAre(scheduler_->handles().at(0)));
}

TEST_F(ServiceTest, PassesTheClientDeadlineToTheScheduler) {
  scheduler_->SetScript(Script{});
  const auto before = std::chrono::steady_clock::now();
  ASSERT_TRUE(
      Generate(TextRequest("hi"), std::chrono::system_clock::now() + seconds(30)).status.ok());
  const SteadyTime deadline = scheduler_->submitted().at(0).deadline;
  EXPECT_GT(deadline, before + seconds(28));
  EXPECT_LT(deadline, before + seconds(32));
}

TEST_F(ServiceTest, ExpiredDeadlineCancelsTheSchedulerRequest) {
  Script s;
  for (int i = 0; i < 1000; ++i) s.deltas.push_back(Delta({300}, "x"));
  s.delay = milliseconds(20);
  scheduler_->SetScript(s);
  const StreamResult r =
      Generate(TextRequest("hi"), std::chrono::system_clock::now() + milliseconds(300));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_THAT(scheduler_->WaitForCancel(seconds(5)), ElementsAre(scheduler_->handles().at(0)));
}

// ---- unary methods -------------------------------------------------------------------

TEST_F(ServiceTest, TokenizeAndDetokenizeRoundTrip) {
  v1::TokenizeRequest treq;
  treq.set_text("hello world");
  v1::TokenizeResponse tresp;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub_->Tokenize(&ctx, treq, &tresp).ok());
  }
  const std::vector<int32_t> ids(tresp.ids().begin(), tresp.ids().end());
  EXPECT_EQ(ids, tokenizer_->Encode("hello world", true, false));
  EXPECT_EQ(ids.front(), tokenizer_->vocab().bos);

  treq.set_add_special(false);
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub_->Tokenize(&ctx, treq, &tresp).ok());
  }
  EXPECT_EQ(std::vector<int32_t>(tresp.ids().begin(), tresp.ids().end()),
            tokenizer_->Encode("hello world", false, false));

  v1::DetokenizeRequest dreq;
  *dreq.mutable_ids() = tresp.ids();
  v1::DetokenizeResponse dresp;
  grpc::ClientContext ctx;
  ASSERT_TRUE(stub_->Detokenize(&ctx, dreq, &dresp).ok());
  EXPECT_EQ(dresp.text(), "hello world");
}

TEST_F(ServiceTest, DetokenizeRepairsSplitCharactersAndRejectsUnknownIds) {
  // The demo vocabulary's byte tokens are 3 + byte; 0xE2 alone is half of a
  // character.
  v1::DetokenizeRequest req;
  req.add_ids(3 + 'a');
  req.add_ids(3 + 0xE2);
  v1::DetokenizeResponse resp;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub_->Detokenize(&ctx, req, &resp).ok());
  }
  EXPECT_EQ(resp.text(), "a\xEF\xBF\xBD");

  req.add_ids(kDemoVocabSize);
  grpc::ClientContext ctx;
  const grpc::Status st = stub_->Detokenize(&ctx, req, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(st.error_message(), HasSubstr("ids[2] = 512 is not a token id"));
}

TEST_F(ServiceTest, GetModelInfoAddsTheSchedulerCapacity) {
  v1::ModelInfo info;
  grpc::ClientContext ctx;
  ASSERT_TRUE(stub_->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info).ok());
  EXPECT_EQ(info.name(), "demo");
  EXPECT_EQ(info.n_vocab(), kDemoVocabSize);
  EXPECT_EQ(info.ctx_per_slot(), 64);
  EXPECT_EQ(info.max_batch(), 2);
  EXPECT_EQ(info.queue_size(), 4);
}

// ---- health and reflection -------------------------------------------------------------

TEST_F(ServiceTest, HealthServiceReportsServingThenNotServing) {
  auto health = grpc::health::v1::Health::NewStub(channel_);
  for (const char* name : {"", "m40llm.v1.Inference"}) {
    grpc::health::v1::HealthCheckRequest req;
    req.set_service(name);
    grpc::health::v1::HealthCheckResponse resp;
    grpc::ClientContext ctx;
    ASSERT_TRUE(health->Check(&ctx, req, &resp).ok()) << name;
    EXPECT_EQ(resp.status(), grpc::health::v1::HealthCheckResponse::SERVING) << name;
  }
  server_->GetHealthCheckService()->SetServingStatus(false);
  grpc::health::v1::HealthCheckResponse resp;
  grpc::ClientContext ctx;
  ASSERT_TRUE(health->Check(&ctx, grpc::health::v1::HealthCheckRequest(), &resp).ok());
  EXPECT_EQ(resp.status(), grpc::health::v1::HealthCheckResponse::NOT_SERVING);
}

TEST_F(ServiceTest, ReflectionDescribesTheService) {
  // grpc.reflection.v1alpha.ServerReflectionRequest fields: list_services
  // (7), file_containing_symbol (4). Responses: list_services_response (6)
  // { service (1) { name (1) } }, file_descriptor_response (4)
  // { file_descriptor_proto (1) }.
  std::vector<std::string> out;
  const grpc::Status st =
      RawCall(channel_.get(), "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
              {Field(7, ""), Field(4, "m40llm.v1.Inference")}, &out);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(out.size(), 2u);

  auto sub_fields = [](const std::string& wire, int number) {
    google::protobuf::UnknownFieldSet f;
    EXPECT_TRUE(f.ParseFromString(wire));
    std::vector<std::string> values;
    for (int i = 0; i < f.field_count(); ++i) {
      if (f.field(i).number() == number) values.push_back(f.field(i).length_delimited());
    }
    return values;
  };
  std::vector<std::string> names;
  for (const std::string& list : sub_fields(out[0], 6)) {
    for (const std::string& service : sub_fields(list, 1)) {
      for (const std::string& name : sub_fields(service, 1)) names.push_back(name);
    }
  }
  EXPECT_THAT(names, ::testing::IsSupersetOf(
                         {"m40llm.v1.Inference", "grpc.reflection.v1alpha.ServerReflection"}));

  std::vector<std::string> files;
  for (const std::string& r : sub_fields(out[1], 4)) {
    for (const std::string& f : sub_fields(r, 1)) files.push_back(f);
  }
  ASSERT_FALSE(files.empty());
  google::protobuf::FileDescriptorProto fd;
  ASSERT_TRUE(fd.ParseFromString(files[0]));
  EXPECT_EQ(fd.name(), "m40llm/v1/m40llm.proto");
  ASSERT_EQ(fd.service_size(), 1);
  EXPECT_EQ(fd.service(0).name(), "Inference");
  EXPECT_EQ(fd.service(0).method(0).name(), "Generate");
  EXPECT_TRUE(fd.service(0).method(0).server_streaming());
}

// ---- small pieces -------------------------------------------------------------------------

TEST(StatusMappingTest, KeepsCodeAndMessage) {
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
  const grpc::Status s = ToGrpcStatus(absl::OutOfRangeError("too long"));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::OUT_OF_RANGE);
  EXPECT_EQ(s.error_message(), "too long");
  for (int code = 1; code <= 16; ++code) {
    EXPECT_EQ(
        static_cast<int>(
            ToGrpcStatus(absl::Status(static_cast<absl::StatusCode>(code), "x")).error_code()),
        code);
  }
}

TEST(RequestIdTest, Is32HexDigits) {
  const std::string a = NewRequestId();
  EXPECT_TRUE(std::regex_match(a, std::regex("[0-9a-f]{32}"))) << a;
  EXPECT_NE(a, NewRequestId());
}

}  // namespace
}  // namespace m40llm
