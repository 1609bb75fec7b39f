// Tests for server/metrics: family names and types, exact counter and
// histogram movement, build info, a real HTTP scrape, bind failures, and
// `promtool check metrics` on the exposition when promtool is installed.
#include "server/metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/test_support.h"

namespace m40llm {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

// Sample lines of a text exposition, keyed by the series as printed
// (`name{labels}`), and the `# TYPE` of each family.
struct Exposition {
  std::map<std::string, double> samples;
  std::map<std::string, std::string> types;
};

Exposition Parse(const std::string& text) {
  Exposition out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    if (line[0] == '#') {
      std::vector<std::string> parts = absl::StrSplit(line, ' ');
      if (parts.size() == 4 && parts[1] == "TYPE") out.types[parts[2]] = parts[3];
      continue;
    }
    // Label values may hold spaces, so the value starts after the closing
    // brace when there is one.
    size_t value_at = line.rfind('}');
    value_at = line.find(' ', value_at == std::string::npos ? 0 : value_at);
    if (value_at == std::string::npos) {
      ADD_FAILURE() << "unparsable sample line: " << line;
      continue;
    }
    out.samples[line.substr(0, value_at)] = std::strtod(line.c_str() + value_at + 1, nullptr);
  }
  return out;
}

// A series' value, 0 when absent (a series not yet created reads as 0).
double Value(const Exposition& e, const std::string& series) {
  auto it = e.samples.find(series);
  return it == e.samples.end() ? 0 : it->second;
}

// The cumulative count of histogram `name` at the bucket whose bound is `le`.
double Bucket(const Exposition& e, const std::string& name, double le) {
  const std::string prefix = absl::StrCat(name, "_bucket{le=\"");
  for (const auto& [series, value] : e.samples) {
    if (series.rfind(prefix, 0) != 0) continue;
    double bound = 0;
    const std::string text = series.substr(prefix.size(), series.size() - prefix.size() - 2);
    if (absl::SimpleAtod(text, &bound) && bound == le) return value;
  }
  ADD_FAILURE() << name << " has no bucket le=" << le;
  return -1;
}

std::unique_ptr<Metrics> MakeMetrics(const std::string& listen = "") {
  MetricsOptions opts;
  opts.listen = listen;
  opts.version = "0.1.0";
  opts.backend = "cpu";
  opts.device = "Tesla M40 24GB";
  auto m = Metrics::Create(opts);
  EXPECT_TRUE(m.ok()) << m.status();
  return m.ok() ? std::move(m).value() : nullptr;
}

const std::vector<std::pair<std::string, std::string>>& RequiredFamilies() {
  static const auto* families = new std::vector<std::pair<std::string, std::string>>{
      {"m40llm_requests_total", "counter"},
      {"m40llm_prompt_tokens_total", "counter"},
      {"m40llm_generated_tokens_total", "counter"},
      {"m40llm_time_to_first_token_seconds", "histogram"},
      {"m40llm_inter_token_latency_seconds", "histogram"},
      {"m40llm_request_duration_seconds", "histogram"},
      {"m40llm_queue_time_seconds", "histogram"},
      {"m40llm_queue_depth", "gauge"},
      {"m40llm_active_sequences", "gauge"},
      {"m40llm_kv_cache_usage_ratio", "gauge"},
      {"m40llm_decode_steps_total", "counter"},
      {"m40llm_decode_batch_size", "histogram"},
      {"m40llm_build_info", "gauge"},
  };
  return *families;
}

TEST(MetricsTest, EveryFamilyHasItsTypeAndHelp) {
  auto m = MakeMetrics();
  ASSERT_NE(m, nullptr);
  const std::string text = m->Serialize();
  const Exposition e = Parse(text);
  for (const auto& [name, type] : RequiredFamilies()) {
    auto it = e.types.find(name);
    ASSERT_NE(it, e.types.end()) << name << " missing from:\n" << text;
    EXPECT_EQ(it->second, type) << name;
    EXPECT_THAT(text, HasSubstr(absl::StrCat("# HELP ", name, " ")));
  }
  for (const auto& [name, type] : e.types) EXPECT_THAT(name, StartsWith("m40llm_"));
  // The usual statuses exist before any request, so rate() works from zero.
  EXPECT_EQ(e.samples.count("m40llm_requests_total{status=\"ok\"}"), 1u);
  EXPECT_EQ(e.samples.count("m40llm_requests_total{status=\"resource_exhausted\"}"), 1u);
}

TEST(MetricsTest, HistogramBucketsMatchTheDocumentedBounds) {
  auto m = MakeMetrics();
  ASSERT_NE(m, nullptr);
  const Exposition e = Parse(m->Serialize());
  for (double le : kDecodeBatchSizeBuckets) Bucket(e, "m40llm_decode_batch_size", le);
  for (double le : kTimeToFirstTokenBuckets) Bucket(e, "m40llm_time_to_first_token_seconds", le);
  for (double le : kInterTokenLatencyBuckets) Bucket(e, "m40llm_inter_token_latency_seconds", le);
  for (double le : kRequestDurationBuckets) Bucket(e, "m40llm_request_duration_seconds", le);
  for (double le : kQueueTimeBuckets) Bucket(e, "m40llm_queue_time_seconds", le);
  EXPECT_EQ(kDecodeBatchSizeBuckets[0], 1);
  EXPECT_EQ(std::size(kDecodeBatchSizeBuckets), 9u);
  EXPECT_EQ(kDecodeBatchSizeBuckets[8], 256);
}

TEST(MetricsTest, CountersAndHistogramsMoveByExactlyWhatWasReported) {
  auto m = MakeMetrics();
  ASSERT_NE(m, nullptr);
  const Exposition before = Parse(m->Serialize());

  FinalInfo done;
  done.completion_tokens = 5;
  done.prompt_tokens = 12;
  done.ttft_seconds = 0.3;
  done.queue_seconds = 0.02;
  m->RequestDone("ok", done, 1.7);

  FinalInfo cancelled;  // ended before its first token: no TTFT sample
  cancelled.completion_tokens = 0;
  cancelled.queue_seconds = 0.5;
  m->RequestDone("cancelled", cancelled, 0.6);

  m->RequestRejected("resource_exhausted");
  m->RequestRejected("failed_precondition");  // not pre-created

  m->PromptTokens(12);
  m->PromptTokens(0);
  m->PromptTokens(-3);  // ignored: counters never go down
  m->GeneratedTokens(7);
  for (int i = 0; i < 3; ++i) m->InterTokenLatency(0.012);
  m->DecodeStep(3, 0.003);
  m->DecodeStep(8, 0.02);
  m->Gauges(4, 2, 0.375);

  const Exposition after = Parse(m->Serialize());
  const auto delta = [&](const std::string& series) {
    return Value(after, series) - Value(before, series);
  };
  const auto bucket_delta = [&](const std::string& name, double le) {
    return Bucket(after, name, le) - Bucket(before, name, le);
  };

  EXPECT_EQ(delta("m40llm_requests_total{status=\"ok\"}"), 1);
  EXPECT_EQ(delta("m40llm_requests_total{status=\"cancelled\"}"), 1);
  EXPECT_EQ(delta("m40llm_requests_total{status=\"resource_exhausted\"}"), 1);
  EXPECT_EQ(delta("m40llm_requests_total{status=\"failed_precondition\"}"), 1);
  EXPECT_EQ(delta("m40llm_requests_total{status=\"internal\"}"), 0);

  EXPECT_EQ(delta("m40llm_prompt_tokens_total"), 12);
  EXPECT_EQ(delta("m40llm_generated_tokens_total"), 7);
  EXPECT_EQ(delta("m40llm_decode_steps_total"), 2);
  const std::string step = "m40llm_decode_step_seconds";
  EXPECT_EQ(delta(step + "_count"), 2);
  EXPECT_DOUBLE_EQ(delta(step + "_sum"), 0.023);
  EXPECT_EQ(bucket_delta(step, 0.002), 0);
  EXPECT_EQ(bucket_delta(step, 0.004), 1);
  EXPECT_EQ(bucket_delta(step, 0.032), 2);

  const std::string ttft = "m40llm_time_to_first_token_seconds";
  EXPECT_EQ(delta(ttft + "_count"), 1);
  EXPECT_DOUBLE_EQ(delta(ttft + "_sum"), 0.3);
  EXPECT_EQ(bucket_delta(ttft, 0.25), 0);
  EXPECT_EQ(bucket_delta(ttft, 0.5), 1);

  const std::string queue = "m40llm_queue_time_seconds";
  EXPECT_EQ(delta(queue + "_count"), 2);
  EXPECT_DOUBLE_EQ(delta(queue + "_sum"), 0.52);
  EXPECT_EQ(bucket_delta(queue, 0.01), 0);
  EXPECT_EQ(bucket_delta(queue, 0.025), 1);
  EXPECT_EQ(bucket_delta(queue, 0.5), 2);

  // Rejections never reached the scheduler: no duration sample.
  const std::string duration = "m40llm_request_duration_seconds";
  EXPECT_EQ(delta(duration + "_count"), 2);
  EXPECT_DOUBLE_EQ(delta(duration + "_sum"), 2.3);
  EXPECT_EQ(bucket_delta(duration, 0.5), 0);
  EXPECT_EQ(bucket_delta(duration, 1), 1);
  EXPECT_EQ(bucket_delta(duration, 2.5), 2);

  const std::string itl = "m40llm_inter_token_latency_seconds";
  EXPECT_EQ(delta(itl + "_count"), 3);
  EXPECT_NEAR(delta(itl + "_sum"), 0.036, 1e-12);
  EXPECT_EQ(bucket_delta(itl, 0.01), 0);
  EXPECT_EQ(bucket_delta(itl, 0.015), 3);

  const std::string batch = "m40llm_decode_batch_size";
  EXPECT_EQ(delta(batch + "_count"), 2);
  EXPECT_EQ(delta(batch + "_sum"), 11);
  EXPECT_EQ(bucket_delta(batch, 2), 0);
  EXPECT_EQ(bucket_delta(batch, 4), 1);
  EXPECT_EQ(bucket_delta(batch, 8), 2);
  EXPECT_EQ(bucket_delta(batch, 256), 2);

  EXPECT_EQ(Value(after, "m40llm_queue_depth"), 4);
  EXPECT_EQ(Value(after, "m40llm_active_sequences"), 2);
  EXPECT_EQ(Value(after, "m40llm_kv_cache_usage_ratio"), 0.375);
}

TEST(MetricsTest, ConcurrentReportsAreAllCounted) {
  auto m = MakeMetrics();
  ASSERT_NE(m, nullptr);
  constexpr int kThreads = 4;
  constexpr int kPerThread = 2000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&m, t] {
      FinalInfo info;
      info.completion_tokens = 1;
      info.ttft_seconds = 0.1;
      for (int i = 0; i < kPerThread; ++i) {
        m->RequestDone(t % 2 == 0 ? "ok" : "made_up_status", info, 0.2);
        m->GeneratedTokens(1);
        m->DecodeStep(1, 0.001);
      }
    });
  }
  for (auto& th : threads) th.join();
  const Exposition e = Parse(m->Serialize());
  EXPECT_EQ(Value(e, "m40llm_requests_total{status=\"ok\"}"), kThreads / 2 * kPerThread);
  EXPECT_EQ(Value(e, "m40llm_requests_total{status=\"made_up_status\"}"),
            kThreads / 2 * kPerThread);
  EXPECT_EQ(Value(e, "m40llm_generated_tokens_total"), kThreads * kPerThread);
  EXPECT_EQ(Value(e, "m40llm_decode_steps_total"), kThreads * kPerThread);
  EXPECT_EQ(Value(e, "m40llm_time_to_first_token_seconds_count"), kThreads * kPerThread);
}

TEST(MetricsTest, BuildInfoCarriesItsLabelsAndIsOne) {
  auto m = MakeMetrics();
  ASSERT_NE(m, nullptr);
  const Exposition e = Parse(m->Serialize());
  int found = 0;
  for (const auto& [series, value] : e.samples) {
    if (series.rfind("m40llm_build_info{", 0) != 0) continue;
    ++found;
    EXPECT_THAT(series, HasSubstr("version=\"0.1.0\""));
    EXPECT_THAT(series, HasSubstr("backend=\"cpu\""));
    EXPECT_THAT(series, HasSubstr("device=\"Tesla M40 24GB\""));
    EXPECT_EQ(value, 1);
  }
  EXPECT_EQ(found, 1);
}

TEST(MetricsTest, StatusLabelIsLowerSnakeCase) {
  EXPECT_EQ(StatusLabel(absl::StatusCode::kOk), "ok");
  EXPECT_EQ(StatusLabel(absl::StatusCode::kCancelled), "cancelled");
  EXPECT_EQ(StatusLabel(absl::StatusCode::kDeadlineExceeded), "deadline_exceeded");
  EXPECT_EQ(StatusLabel(absl::StatusCode::kResourceExhausted), "resource_exhausted");
  EXPECT_EQ(StatusLabel(absl::StatusCode::kOutOfRange), "out_of_range");
}

TEST(MetricsTest, NoListenerMeansNoAddress) {
  auto m = MakeMetrics();
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(m->listen_address(), "");
}

// A plain HTTP/1.0 GET (the server closes the connection after the reply);
// returns the whole response, headers included, or "" on a socket error.
std::string HttpGet(int port, const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return "";
  timeval timeout{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string response;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    const std::string request = absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    if (send(fd, request.data(), request.size(), 0) == static_cast<ssize_t>(request.size())) {
      char buf[4096];
      ssize_t n;
      while ((n = recv(fd, buf, sizeof(buf), 0)) > 0) response.append(buf, n);
    }
  }
  close(fd);
  return response;
}

int PortOf(const std::string& address) {
  int port = -1;
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || !absl::SimpleAtoi(address.substr(colon + 1), &port)) {
    return -1;
  }
  return port;
}

TEST(MetricsTest, HttpScrapeServesTheSameFamilies) {
  auto m = MakeMetrics("127.0.0.1:0");
  ASSERT_NE(m, nullptr);
  ASSERT_THAT(m->listen_address(), StartsWith("127.0.0.1:"));
  const int port = PortOf(m->listen_address());
  ASSERT_GT(port, 0) << m->listen_address();

  m->RequestRejected("invalid_argument");
  m->GeneratedTokens(42);
  const std::string response = HttpGet(port, "/metrics");
  ASSERT_THAT(response, StartsWith("HTTP/1.")) << response;
  EXPECT_THAT(response.substr(0, response.find("\r\n")), HasSubstr(" 200"));
  const size_t body_at = response.find("\r\n\r\n");
  ASSERT_NE(body_at, std::string::npos);
  const Exposition scraped = Parse(response.substr(body_at + 4));
  const Exposition local = Parse(m->Serialize());

  for (const auto& [name, type] : local.types) {
    auto it = scraped.types.find(name);
    ASSERT_NE(it, scraped.types.end()) << name << " not served over HTTP";
    EXPECT_EQ(it->second, type) << name;
  }
  EXPECT_EQ(Value(scraped, "m40llm_requests_total{status=\"invalid_argument\"}"), 1);
  EXPECT_EQ(Value(scraped, "m40llm_generated_tokens_total"), 42);
}

TEST(MetricsTest, AddressInUseIsAnErrorNamingTheAddress) {
  // Hold a port with a plain listening socket.
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = 0;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(fd, 1), 0);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  const std::string taken = absl::StrCat("127.0.0.1:", ntohs(addr.sin_port));

  MetricsOptions opts;
  opts.listen = taken;
  auto m = Metrics::Create(opts);
  close(fd);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(m.status().message()), HasSubstr(taken));
}

TEST(MetricsTest, SecondMetricsOnTheSamePortFails) {
  auto first = MakeMetrics("127.0.0.1:0");
  ASSERT_NE(first, nullptr);
  MetricsOptions opts;
  opts.listen = first->listen_address();
  auto second = Metrics::Create(opts);
  ASSERT_FALSE(second.ok());
  EXPECT_THAT(std::string(second.status().message()), HasSubstr(first->listen_address()));
}

TEST(MetricsTest, MalformedListenAddressIsInvalidArgument) {
  for (const char* bad : {"nonsense", ":8002", "127.0.0.1:", "127.0.0.1:99999", "127.0.0.1:-1",
                          "127.0.0.1:80x", "::1:8002"}) {
    MetricsOptions opts;
    opts.listen = bad;
    auto m = Metrics::Create(opts);
    ASSERT_FALSE(m.ok()) << bad;
    EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(std::string(m.status().message()), HasSubstr(bad));
  }
}

// promtool from PATH, or "" when it is not installed.
std::string FindPromtool() {
  const char* path = std::getenv("PATH");
  if (path == nullptr) return "";
  for (absl::string_view dir : absl::StrSplit(path, ':')) {
    if (dir.empty()) continue;
    const std::string candidate = absl::StrCat(dir, "/promtool");
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

TEST(MetricsTest, PromtoolFindsNoLintProblems) {
  const std::string promtool = FindPromtool();
  if (promtool.empty()) {
    GTEST_SKIP() << "promtool not on PATH (Debian package `prometheus`); "
                    "skipping `promtool check metrics`";
  }
  auto m = MakeMetrics();
  ASSERT_NE(m, nullptr);
  FinalInfo info;
  info.completion_tokens = 3;
  info.ttft_seconds = 0.2;
  m->RequestDone("ok", info, 0.4);
  m->RequestRejected("resource_exhausted");
  m->InterTokenLatency(0.03);
  m->DecodeStep(2, 0.002);
  m->Gauges(1, 2, 0.25);

  const std::string file = absl::StrCat(testing::TempDir(), "/metrics.prom");
  {
    std::ofstream out(file, std::ios::binary);
    out << m->Serialize();
    ASSERT_TRUE(out.good());
  }
  const std::string command = absl::StrCat(promtool, " check metrics < '", file, "' 2>&1");
  FILE* pipe = popen(command.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string output;
  char buf[1024];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) output.append(buf, n);
  const int status = pclose(pipe);
  ASSERT_TRUE(WIFEXITED(status)) << output;
  EXPECT_EQ(WEXITSTATUS(status), 0) << output;
  EXPECT_EQ(output, "") << "promtool reported problems";
}

}  // namespace
}  // namespace m40llm
