// The single boundary where engine statuses (absl::Status) become the gRPC
// statuses clients see, plus the other engine -> API enum mappings the
// service needs. Nothing else in the server constructs a grpc::Status from an
// engine error.
#pragma once

#include <string_view>

#include "absl/status/status.h"
#include "engine/scheduler.h"
#include "grpcpp/support/status.h"
#include "m40llm/v1/m40llm.pb.h"

namespace m40llm {

// The gRPC status for an engine status: the same canonical code (absl and
// gRPC share the numbering) and message. Engine codes keep their meaning on
// the wire; the ones a client should expect from Generate:
//   INVALID_ARGUMENT    a request field is out of range or malformed
//   OUT_OF_RANGE        prompt + max_tokens does not fit ctx_per_slot
//   RESOURCE_EXHAUSTED  the admission queue is full (retry later)
//   UNAVAILABLE         the server is draining or shutting down
//   DEADLINE_EXCEEDED   the client's deadline passed during generation
//   INTERNAL            an engine fault
grpc::Status ToGrpcStatus(const absl::Status& status);

// The API's finish reason for a finished stream.
v1::FinishReason ToProtoFinishReason(StreamFinish finish);

// Lower-case name of a finish reason for logs ("stop", "length",
// "stop_sequence", "cancelled").
std::string_view FinishName(StreamFinish finish);

}  // namespace m40llm
