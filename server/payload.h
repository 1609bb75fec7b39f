// Parsing request payloads ourselves instead of letting gRPC do it.
//
// A proto3 `string` field holding invalid UTF-8 makes the C++ protobuf parser
// fail, and gRPC 1.51 answers such a call before any handler runs: callback
// methods with UNIMPLEMENTED and an empty message, synchronous ones with
// INTERNAL. Neither tells the client what is wrong. Methods whose requests
// carry text are therefore registered raw (grpc::ByteBuffer in and out), and
// ParseRequest checks the text fields first, so that bad UTF-8 becomes
// INVALID_ARGUMENT naming the field.
#pragma once

#include "absl/status/status.h"
#include "google/protobuf/message.h"
#include "grpcpp/support/byte_buffer.h"

namespace m40llm {

// Parses `payload` into `msg` (cleared first). INVALID_ARGUMENT when a string
// field, at any depth, is not valid UTF-8 ("stop[1] is not valid UTF-8"), or
// when the bytes are not a valid message of that type.
[[nodiscard]] absl::Status ParseRequest(const grpc::ByteBuffer& payload,
                                        google::protobuf::Message* msg);

// Serializes `msg` into `out` (replacing its contents). INTERNAL on failure
// (only possible for messages over 2 GiB).
[[nodiscard]] absl::Status SerializeResponse(const google::protobuf::Message& msg,
                                             grpc::ByteBuffer* out);

}  // namespace m40llm
