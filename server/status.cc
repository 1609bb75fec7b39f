// Engine -> gRPC status and enum mappings (see status.h).
#include "server/status.h"

#include <string>

namespace m40llm {
namespace {

grpc::StatusCode ToGrpcCode(absl::StatusCode code) {
  // Spelled out rather than cast so that a code one library adds and the
  // other lacks becomes UNKNOWN instead of an out-of-range enum value.
  switch (code) {
    case absl::StatusCode::kOk:
      return grpc::StatusCode::OK;
    case absl::StatusCode::kCancelled:
      return grpc::StatusCode::CANCELLED;
    case absl::StatusCode::kUnknown:
      return grpc::StatusCode::UNKNOWN;
    case absl::StatusCode::kInvalidArgument:
      return grpc::StatusCode::INVALID_ARGUMENT;
    case absl::StatusCode::kDeadlineExceeded:
      return grpc::StatusCode::DEADLINE_EXCEEDED;
    case absl::StatusCode::kNotFound:
      return grpc::StatusCode::NOT_FOUND;
    case absl::StatusCode::kAlreadyExists:
      return grpc::StatusCode::ALREADY_EXISTS;
    case absl::StatusCode::kPermissionDenied:
      return grpc::StatusCode::PERMISSION_DENIED;
    case absl::StatusCode::kResourceExhausted:
      return grpc::StatusCode::RESOURCE_EXHAUSTED;
    case absl::StatusCode::kFailedPrecondition:
      return grpc::StatusCode::FAILED_PRECONDITION;
    case absl::StatusCode::kAborted:
      return grpc::StatusCode::ABORTED;
    case absl::StatusCode::kOutOfRange:
      return grpc::StatusCode::OUT_OF_RANGE;
    case absl::StatusCode::kUnimplemented:
      return grpc::StatusCode::UNIMPLEMENTED;
    case absl::StatusCode::kInternal:
      return grpc::StatusCode::INTERNAL;
    case absl::StatusCode::kUnavailable:
      return grpc::StatusCode::UNAVAILABLE;
    case absl::StatusCode::kDataLoss:
      return grpc::StatusCode::DATA_LOSS;
    case absl::StatusCode::kUnauthenticated:
      return grpc::StatusCode::UNAUTHENTICATED;
    default:
      return grpc::StatusCode::UNKNOWN;
  }
}

}  // namespace

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(ToGrpcCode(status.code()), std::string(status.message()));
}

v1::FinishReason ToProtoFinishReason(StreamFinish finish) {
  switch (finish) {
    case StreamFinish::kStop:
      return v1::FINISH_REASON_STOP;
    case StreamFinish::kLength:
      return v1::FINISH_REASON_LENGTH;
    case StreamFinish::kStopSequence:
      return v1::FINISH_REASON_STOP_SEQUENCE;
    case StreamFinish::kCancelled:
      return v1::FINISH_REASON_CANCELLED;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

std::string_view FinishName(StreamFinish finish) {
  switch (finish) {
    case StreamFinish::kStop:
      return "stop";
    case StreamFinish::kLength:
      return "length";
    case StreamFinish::kStopSequence:
      return "stop_sequence";
    case StreamFinish::kCancelled:
      return "cancelled";
  }
  return "unknown";
}

}  // namespace m40llm
