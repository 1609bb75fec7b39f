// A Scheduler over a backend with the host decoder, as `m40llm serve
// --decoder host` builds it, for tests that drive the scheduler directly.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "engine/backend.h"
#include "engine/scheduler.h"
#include "engine/tokenizer.h"
#include "persistent/host_decoder.h"

namespace m40llm::testing {

inline absl::StatusOr<std::unique_ptr<Scheduler>> MakeHostScheduler(
    Backend* backend, const Tokenizer* tokenizer, const SchedulerOptions& so,
    SchedulerMetrics* metrics) {
  DecoderOptions d;
  d.max_slots = so.max_batch;
  d.ctx_per_slot = so.ctx_per_slot;
  d.eog_ids = tokenizer->EogIds();
  auto decoder = HostDecoder::Create(backend, d);
  if (!decoder.ok()) return decoder.status();
  return Scheduler::Create(backend, std::move(*decoder), tokenizer, so, metrics);
}

}  // namespace m40llm::testing
