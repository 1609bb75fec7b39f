// Decoder's default event wait (see decoder.h).
#include "persistent/decoder.h"

#include <thread>

namespace m40llm {

void Decoder::WaitForEvents(std::chrono::milliseconds timeout) {
  ring_internal::Backoff backoff(timeout);
  while (rings()->events.Empty() && !backoff.Expired()) backoff.Pause();
}

}  // namespace m40llm
