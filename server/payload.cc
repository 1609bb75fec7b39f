// Raw payload parsing with UTF-8 checks (see payload.h).
#include "server/payload.h"

#include <string>
#include <string_view>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "engine/status.h"
#include "engine/unicode.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/unknown_field_set.h"
#include "grpcpp/impl/codegen/proto_utils.h"
#include "grpcpp/support/slice.h"

namespace m40llm {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::UnknownField;
using google::protobuf::UnknownFieldSet;

// Our messages nest two levels at most; this only bounds hostile input.
constexpr int kMaxNesting = 16;

absl::Status Malformed(const Descriptor* type) {
  return absl::InvalidArgumentError(
      absl::StrCat("the request is not a valid ", Sv(type->full_name()), " message"));
}

// Walks the wire form of one message of `type` and checks every string
// field's bytes (the parser would reject the message without saying which
// field). `path` names the message for errors ("" at the top, "tokens." ...).
absl::Status CheckUtf8(std::string_view wire, const Descriptor* type, const std::string& path,
                       int depth) {
  if (depth > kMaxNesting) {
    return absl::InvalidArgumentError("the request nests messages too deeply");
  }
  UnknownFieldSet fields;
  if (!fields.ParseFromArray(wire.data(), static_cast<int>(wire.size()))) return Malformed(type);
  absl::flat_hash_map<int, int> seen;  // field number -> occurrences so far
  for (int i = 0; i < fields.field_count(); ++i) {
    const UnknownField& f = fields.field(i);
    if (f.type() != UnknownField::TYPE_LENGTH_DELIMITED) continue;
    const FieldDescriptor* fd = type->FindFieldByNumber(f.number());
    if (fd == nullptr) continue;  // unknown fields are skipped, as the parser does
    const bool is_string = fd->type() == FieldDescriptor::TYPE_STRING;
    const bool is_message = fd->type() == FieldDescriptor::TYPE_MESSAGE;
    if (!is_string && !is_message) continue;  // bytes, packed numbers
    std::string name = absl::StrCat(path, Sv(fd->name()));
    if (fd->is_repeated()) absl::StrAppend(&name, "[", seen[f.number()]++, "]");
    if (is_string) {
      if (!IsValidUtf8(f.length_delimited())) {
        return absl::InvalidArgumentError(
            absl::StrCat(name, " is not valid UTF-8 (text fields must be UTF-8 encoded)"));
      }
    } else {
      RETURN_IF_ERROR(
          CheckUtf8(f.length_delimited(), fd->message_type(), absl::StrCat(name, "."), depth + 1));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ParseRequest(const grpc::ByteBuffer& payload, google::protobuf::Message* msg) {
  msg->Clear();
  grpc::Slice flat;  // owns the bytes `wire` points into
  std::string_view wire;
  if (payload.Valid()) {
    if (!payload.DumpToSingleSlice(&flat).ok()) return Malformed(msg->GetDescriptor());
    wire = std::string_view(reinterpret_cast<const char*>(flat.begin()), flat.size());
  }
  RETURN_IF_ERROR(CheckUtf8(wire, msg->GetDescriptor(), "", 0));
  if (!msg->ParseFromArray(wire.data(), static_cast<int>(wire.size()))) {
    return Malformed(msg->GetDescriptor());
  }
  return absl::OkStatus();
}

absl::Status SerializeResponse(const google::protobuf::Message& msg, grpc::ByteBuffer* out) {
  out->Clear();  // the serializer writes into an empty buffer only
  bool own_buffer = false;
  grpc::Status s =
      grpc::SerializationTraits<google::protobuf::Message>::Serialize(msg, out, &own_buffer);
  if (!s.ok()) {
    return absl::InternalError(absl::StrCat(
        "cannot serialize ", Sv(msg.GetDescriptor()->full_name()), ": ", s.error_message()));
  }
  return absl::OkStatus();
}

}  // namespace m40llm
