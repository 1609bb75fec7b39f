// `m40llm client`: a command-line client for a running `m40llm serve`:
// `generate` streams a completion, `chat` holds a conversation through the
// Chat RPC, `health` checks readiness (exit 0 when
// SERVING, for container health checks), `info` prints the model info.
#pragma once

#include <string>

#include "CLI/CLI.hpp"
#include "m40llm/v1/m40llm.pb.h"

namespace m40llm {

struct ClientOpts {
  std::string addr = "localhost:50051";
  double timeout_seconds = 0;  // 0: no deadline (health: 5 s)
  // generate
  v1::GenerateRequest request;  // sampling fields set only when given
  std::string prompt;
  std::string tokens;  // comma-separated ids, instead of --prompt
  bool json = false;
  // chat
  std::string chat_template;  // "" = the server's
  std::string system;
  // health
  std::string service;  // "" = the server as a whole
};

// Adds `client` and its subcommands to `app`; returns the `client` command.
CLI::App* AddClientCommand(CLI::App* app, ClientOpts* o);

// Runs the subcommand of `client` that was given; returns the exit code.
int RunClient(const CLI::App& client, ClientOpts& o);

}  // namespace m40llm
