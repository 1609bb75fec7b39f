// Chat templates: a conversation (role, content messages) formatted as the
// prompt text a chat model was trained on.
//
// No template language is interpreted. A template (the model's
// `tokenizer.chat_template`, a template given with the request or on the
// command line) is recognised by its text, in the order and by the markers
// llama.cpp's built-in formatter uses, as one of the common families, and the
// family's format is produced exactly as llama.cpp's llama_chat_apply_template
// produces it (including its quirks: which families trim contents, which
// ignore add_generation_prompt, how a system message folds into the first
// user turn). A family name (chatml, llama2, ...) works in place of a
// template. Special-token texts in the result (<|im_start|>, [INST], ...) are
// meant to be tokenized with special tokens parsed.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace m40llm {

// The formats m40llm produces. The names are llama.cpp's.
enum class ChatFamily {
  kChatml,           // "chatml": Qwen, Hermes, Yi, ...
  kLlama2,           // "llama2": [INST] without <<SYS>>
  kLlama2Sys,        // "llama2-sys": [INST] with <<SYS>>
  kLlama2SysBos,     // "llama2-sys-bos": and <s> before each later [INST]
  kLlama2SysStrip,   // "llama2-sys-strip": and contents stripped
  kMistralV1,        // "mistral-v1"
  kMistralV3,        // "mistral-v3"
  kMistralV3Tekken,  // "mistral-v3-tekken"
  kMistralV7,        // "mistral-v7"
  kLlama3,           // "llama3": Llama 3 and 3.x header ids
  kZephyr,           // "zephyr": Zephyr, TinyLlama chat
  kPhi3,             // "phi3"
  kPhi4,             // "phi4"
  kGemma,            // "gemma"
  kDeepseek2,        // "deepseek2"
  kDeepseek3,        // "deepseek3"
  kVicuna,           // "vicuna"
  kVicunaOrca,       // "vicuna-orca"
  kCommandR,         // "command-r"
};

struct ChatMessage {
  std::string role;  // "system", "user", "assistant" (others as each family treats them)
  std::string content;
};

// The family's name ("chatml", "llama2-sys", ...).
std::string_view ChatFamilyName(ChatFamily f);

// Every family name, comma-separated, for messages.
std::string ChatFamilyNames();

// The family `name` names, or nullopt.
std::optional<ChatFamily> ChatFamilyByName(std::string_view name);

// Recognises `tmpl`: a family name, or a template's text. Errors:
// FAILED_PRECONDITION for an empty template or one m40llm does not recognise
// (the message quotes its first line and says that Generate with a formatted
// prompt still works), and for one llama.cpp recognises as a family m40llm
// does not format (named in the message).
absl::StatusOr<ChatFamily> DetectChatFamily(std::string_view tmpl);

// A --chat-template style argument: a family name, or the path of a file
// holding a template's text (recognised as DetectChatFamily does). NotFound
// when it is neither a name nor a readable file.
absl::StatusOr<ChatFamily> ChatFamilyFromArg(const std::string& name_or_path);

// The prompt text for `messages` in family `f`; with add_generation_prompt
// the opening of the assistant's turn follows. The llama2 and mistral
// families have no such opening (a user turn ends with [/INST]) and ignore
// it, as llama.cpp does. `eos_text` is the model's end-of-sequence token
// text, which zephyr's turns end with ("</s>" for TinyLlama chat); empty (no
// model) gives "<|endoftext|>", llama.cpp's fixed choice, which is
// stablelm-zephyr's EOS.
std::string FormatChat(ChatFamily f, const std::vector<ChatMessage>& messages,
                       bool add_generation_prompt, std::string_view eos_text = {});

}  // namespace m40llm
