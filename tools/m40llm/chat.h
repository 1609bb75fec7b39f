// Chat from the command line: `m40llm chat-template` (formats a conversation
// with a template family or template file and prints the prompt, raw; outside
// checks use it, so its interface stays stable) and `m40llm chat` (an
// interactive terminal chat against a model file, keeping the history).
#pragma once

#include <string>

#include "CLI/CLI.hpp"
#include "engine/sampler.h"
#include "tools/m40llm/local.h"

namespace m40llm {

struct ChatTemplateOpts {
  std::string chat_template;  // family name or file
  std::string messages;       // JSON file of [{"role", "content"}], "-" = stdin
  bool no_generation_prompt = false;
};

struct ChatOpts {
  ModelOpts model;
  std::string chat_template;  // empty: the model's
  std::string system;         // an optional system message
  int max_tokens = 512;       // per reply
  SamplingParams sampling;
};

// Add the subcommands to `app`; return them.
CLI::App* AddChatTemplateCommand(CLI::App* app, ChatTemplateOpts* o);
CLI::App* AddChatCommand(CLI::App* app, ChatOpts* o);

// Run them; return the exit code.
int RunChatTemplate(const ChatTemplateOpts& o);
int RunChat(ChatOpts& o);

}  // namespace m40llm
