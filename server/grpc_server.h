// The gRPC server around the inference service: listening port, gRPC's
// health checking service and server reflection. RunServe and the service
// tests build the server the same way.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/server.h"

namespace m40llm {

// Builds and starts a gRPC server listening on `listen` (host:port; port 0
// picks a free one, stored in *bound_port) with `service`, gRPC's default
// health service (the server as a whole and `health_service_name` set
// SERVING) and server reflection. UNAVAILABLE when the address cannot be
// bound. `service` must outlive the server.
absl::StatusOr<std::unique_ptr<grpc::Server>> StartGrpcServer(
    const std::string& listen, grpc::Service* service, const std::string& health_service_name,
    int* bound_port);

}  // namespace m40llm
