// `m40llm chat-template` and `m40llm chat` (see chat.h).
#include "tools/m40llm/chat.h"

#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/chat_template.h"
#include "engine/status.h"
#include "nlohmann/json.hpp"

namespace m40llm {
namespace {

// A JSON list of {"role": ..., "content": ...} objects.
absl::StatusOr<std::vector<ChatMessage>> ReadMessages(const std::string& path) {
  ASSIGN_OR_RETURN(const std::string text, ReadFileOrStdin(path));
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_array()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not a JSON list of {\"role\", \"content\"} objects"));
  }
  std::vector<ChatMessage> out;
  for (size_t i = 0; i < j.size(); ++i) {
    const nlohmann::json& m = j[i];
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string() ||
        !m.contains("content") || !m["content"].is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": message ", i, " needs string fields \"role\" and \"content\""));
    }
    out.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
  }
  return out;
}

// The longest common prefix of two token sequences.
int CommonPrefix(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  size_t n = 0;
  while (n < a.size() && n < b.size() && a[n] == b[n]) ++n;
  return static_cast<int>(n);
}

}  // namespace

CLI::App* AddChatTemplateCommand(CLI::App* app, ChatTemplateOpts* o) {
  CLI::App* c = app->add_subcommand(
      "chat-template", "print the prompt a chat template makes of a conversation, raw");
  c->add_option("--template", o->chat_template,
                "a family name (" + ChatFamilyNames() + ") or a file holding a template's text")
      ->required();
  c->add_option("--messages", o->messages,
                "JSON file with a list of {\"role\", \"content\"} (- reads standard input)")
      ->required();
  c->add_flag("--no-generation-prompt", o->no_generation_prompt,
              "do not open the assistant's turn after the last message");
  return c;
}

int RunChatTemplate(const ChatTemplateOpts& o) {
  auto family = ChatFamilyFromArg(o.chat_template);
  if (!family.ok()) return Fail(family.status());
  auto messages = ReadMessages(o.messages);
  if (!messages.ok()) return Fail(messages.status());
  const std::string prompt = FormatChat(*family, *messages, !o.no_generation_prompt);
  std::fwrite(prompt.data(), 1, prompt.size(), stdout);
  return 0;
}

CLI::App* AddChatCommand(CLI::App* app, ChatOpts* o) {
  CLI::App* c = app->add_subcommand(
      "chat", "chat with a model in the terminal (one line a turn; the history is kept)");
  AddModelOpts(c, &o->model);
  c->add_option("--template", o->chat_template,
                "chat template: a family name or a template file (default: the model's)");
  c->add_option("--system", o->system, "system message opening the conversation");
  c->add_option("-n,--max-tokens", o->max_tokens, "most tokens per reply")->capture_default_str();
  o->sampling.temperature = 0.8f;
  AddSamplingOpts(c, &o->sampling);
  return c;
}

int RunChat(ChatOpts& o) {
  auto file = OpenModelFile(o.model);
  if (!file.ok()) return Fail(file.status());
  auto tok = Tokenizer::FromGguf(**file);
  if (!tok.ok()) return Fail(tok.status());
  absl::StatusOr<ChatFamily> family = absl::FailedPreconditionError("no template");
  if (!o.chat_template.empty()) {
    family = ChatFamilyFromArg(o.chat_template);
  } else {
    auto text = (*file)->GetString("tokenizer.chat_template");
    family = text.ok() ? DetectChatFamily(*text)
                       : absl::FailedPreconditionError(
                             "the model has no chat template (tokenizer.chat_template): give "
                             "one with --template");
  }
  if (!family.ok()) return Fail(family.status());
  auto engine = LoadEngine(**file, o.model, 0);
  if (!engine.ok()) return Fail(engine.status());
  const Tokenizer& t = **tok;
  const std::string eos_text = t.vocab().eos >= 0 ? t.TokenText(t.vocab().eos) : "";

  const bool tty = isatty(STDIN_FILENO) != 0;
  std::fprintf(stderr, "chat template %s; context %d positions. One line a turn; end with "
               "Ctrl-D.\n",
               std::string(ChatFamilyName(*family)).c_str(),
               engine->backend->options().ctx_per_slot);
  std::vector<ChatMessage> history;
  if (!o.system.empty()) history.push_back({"system", o.system});
  std::vector<int32_t> in_cache;  // the tokens slot 0's KV holds
  LocalGeneration g;
  g.sampling = o.sampling;
  g.max_tokens = o.max_tokens;
  std::string line;
  for (;;) {
    if (tty) std::fputs("> ", stderr);
    if (!std::getline(std::cin, line)) break;
    if (line.empty()) continue;
    history.push_back({"user", line});
    const std::string prompt = FormatChat(*family, history, true, eos_text);
    const std::vector<int32_t> ids = t.Encode(prompt, /*add_special=*/true, /*parse_special=*/true);
    const int ctx = engine->backend->options().ctx_per_slot;
    if (static_cast<int>(ids.size()) + g.max_tokens > ctx) {
      std::fprintf(stderr,
                   "error: the conversation (%zu tokens) + a reply of %d no longer fits the "
                   "context of %d positions; start a new chat (or lower --max-tokens)\n",
                   ids.size(), g.max_tokens, ctx);
      return 1;
    }
    IncrementalDetokenizer detok(t);
    detok.ContinueAfter(ids);
    std::string reply;
    auto r = GenerateLocally(*engine->backend, t, ids, CommonPrefix(in_cache, ids), g, &detok,
                             [&reply](const std::string& text) {
                               reply += text;
                               std::fputs(text.c_str(), stdout);
                               std::fflush(stdout);
                             });
    std::fputs("\n", stdout);
    if (!r.ok()) return Fail(r.status());
    g.sampling.seed += 1;  // a fresh draw for the next reply
    in_cache = ids;
    in_cache.insert(in_cache.end(), r->tokens.begin(), r->tokens.end());
    if (tty) PrintGenerationStats(*r);
    history.push_back({"assistant", reply});
  }
  return 0;
}

}  // namespace m40llm
