// A StreamObserver for tests: collects a request's tokens, text and final
// status, checks the call order (no delta after OnDone, OnDone once), and
// waits for the end.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "engine/scheduler.h"
#include "gtest/gtest.h"

namespace m40llm::testing {

class Collector : public StreamObserver {
 public:
  void OnDelta(StreamDelta d) override {
    std::lock_guard<std::mutex> lock(mu_);
    EXPECT_FALSE(done_) << "delta after OnDone";
    for (const TokenOut& t : d.tokens) tokens.push_back(t.token);
    text += d.text;
    ++deltas;
    cv_.notify_all();
  }
  void OnDone(const absl::Status& s, const FinalInfo& i) override {
    std::lock_guard<std::mutex> lock(mu_);
    EXPECT_FALSE(done_) << "OnDone twice";
    done_ = true;
    status = s;
    info = i;
    cv_.notify_all();
  }
  bool Wait(std::chrono::milliseconds t = std::chrono::seconds(30)) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, t, [&] { return done_; });
  }
  bool WaitTokens(size_t n, std::chrono::milliseconds t = std::chrono::seconds(30)) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, t, [&] { return tokens.size() >= n || done_; });
  }
  bool done() {
    std::lock_guard<std::mutex> lock(mu_);
    return done_;
  }

  std::vector<int32_t> tokens;
  std::string text;
  int deltas = 0;
  absl::Status status;
  FinalInfo info;

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
};

}  // namespace m40llm::testing
