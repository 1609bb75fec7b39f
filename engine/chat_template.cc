// Chat template recognition and the families' formats (see chat_template.h).
#include "engine/chat_template.h"

#include <array>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/status.h"

namespace m40llm {
namespace {

constexpr std::array<std::pair<ChatFamily, std::string_view>, 19> kNames = {{
    {ChatFamily::kChatml, "chatml"},
    {ChatFamily::kLlama2, "llama2"},
    {ChatFamily::kLlama2Sys, "llama2-sys"},
    {ChatFamily::kLlama2SysBos, "llama2-sys-bos"},
    {ChatFamily::kLlama2SysStrip, "llama2-sys-strip"},
    {ChatFamily::kMistralV1, "mistral-v1"},
    {ChatFamily::kMistralV3, "mistral-v3"},
    {ChatFamily::kMistralV3Tekken, "mistral-v3-tekken"},
    {ChatFamily::kMistralV7, "mistral-v7"},
    {ChatFamily::kLlama3, "llama3"},
    {ChatFamily::kZephyr, "zephyr"},
    {ChatFamily::kPhi3, "phi3"},
    {ChatFamily::kPhi4, "phi4"},
    {ChatFamily::kGemma, "gemma"},
    {ChatFamily::kDeepseek2, "deepseek2"},
    {ChatFamily::kDeepseek3, "deepseek3"},
    {ChatFamily::kVicuna, "vicuna"},
    {ChatFamily::kVicunaOrca, "vicuna-orca"},
    {ChatFamily::kCommandR, "command-r"},
}};

// Families llama.cpp knows and m40llm does not format.
constexpr std::array<std::string_view, 14> kUnsupported = {
    "falcon3",  "glmedge", "monarch", "orion",      "openchat", "deepseek", "chatglm3",
    "chatglm4", "minicpm", "exaone3", "rwkv-world", "granite",  "gigachat", "megrez"};

// DeepSeek's fullwidth markers, spelt out as UTF-8 bytes.
#define M40_FW "\xEF\xBD\x9C"  // U+FF5C FULLWIDTH VERTICAL LINE
#define M40_SP "\xE2\x96\x81"  // U+2581 LOWER ONE EIGHTH BLOCK
constexpr const char* kDsUser = "<" M40_FW "User" M40_FW ">";
constexpr const char* kDsAssistant = "<" M40_FW "Assistant" M40_FW ">";
constexpr const char* kDsEnd = "<" M40_FW "end" M40_SP "of" M40_SP "sentence" M40_FW ">";
#undef M40_FW
#undef M40_SP

// ASCII whitespace off both ends, as llama.cpp's trim() (isspace on bytes).
std::string Trim(std::string_view s) {
  auto space = [](char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
  };
  size_t b = 0, e = s.size();
  while (b < e && space(s[b])) ++b;
  while (e > b && space(s[e - 1])) --e;
  return std::string(s.substr(b, e - b));
}

// A recognised template: a family we format, or the name of one we do not.
struct Detected {
  std::optional<ChatFamily> family;
  std::string_view unsupported;
};

Detected Recognise(std::string_view t) {
  auto has = [t](std::string_view x) { return t.find(x) != std::string_view::npos; };
  using F = ChatFamily;
  if (has("<|im_start|>")) return {has("<|im_sep|>") ? F::kPhi4 : F::kChatml, {}};
  if (t.starts_with("mistral") || has("[INST]")) {
    if (has("[SYSTEM_PROMPT]")) return {F::kMistralV7, {}};
    if (has("' [INST] ' + system_message") || has("[AVAILABLE_TOOLS]")) {
      if (has(" [INST]")) return {F::kMistralV1, {}};
      if (has("\"[INST]\"")) return {F::kMistralV3Tekken, {}};
      return {F::kMistralV3, {}};
    }
    if (has("content.strip()")) return {F::kLlama2SysStrip, {}};
    if (has("bos_token + '[INST]")) return {F::kLlama2SysBos, {}};
    return {has("<<SYS>>") ? F::kLlama2Sys : F::kLlama2, {}};
  }
  if (has("<|assistant|>") && has("<|end|>")) return {F::kPhi3, {}};
  // Zephyr's own template (TinyLlama chat's too) ends each turn with
  // eos_token; llama.cpp, checking GLM-Edge's markers first, takes it for
  // GLM-Edge, whose template never names eos_token. We check for it first.
  if (has("<|assistant|>") && has("<|user|>") && has("eos_token")) return {F::kZephyr, {}};
  if (has("<|assistant|>") && has("<|user|>")) return {{}, has("</s>") ? "falcon3" : "glmedge"};
  if (has("<|user|>") && has("<|endoftext|>")) return {F::kZephyr, {}};
  if (has("bos_token + message['role']")) return {{}, "monarch"};
  if (has("<start_of_turn>")) return {F::kGemma, {}};
  if (has("'\\n\\nAssistant: ' + eos_token")) return {{}, "orion"};
  if (has("GPT4 Correct ")) return {{}, "openchat"};
  if (has("USER: ") && has("ASSISTANT: ")) return {has("SYSTEM: ") ? F::kVicunaOrca : F::kVicuna, {}};
  if (has("### Instruction:") && has("<|EOT|>")) return {{}, "deepseek"};
  if (has("<|START_OF_TURN_TOKEN|>") && has("<|USER_TOKEN|>")) return {F::kCommandR, {}};
  if (has("<|start_header_id|>") && has("<|end_header_id|>")) return {F::kLlama3, {}};
  if (has("[gMASK]sop")) return {{}, "chatglm3"};
  if (has("[gMASK]<sop>")) return {{}, "chatglm4"};
  if (has("<\xE7\x94\xA8\xE6\x88\xB7>")) return {{}, "minicpm"};  // <用户>
  if (has("'Assistant: ' + message['content'] + eos_token")) return {F::kDeepseek2, {}};
  if (has(kDsAssistant) && has(kDsUser) && has(kDsEnd)) return {F::kDeepseek3, {}};
  if (has("[|system|]") && has("[|assistant|]") && has("[|endofturn|]")) return {{}, "exaone3"};
  if (has("rwkv-world")) return {{}, "rwkv-world"};
  if (has("<|start_of_role|>")) return {{}, "granite"};
  if (has("message['role'] + additional_special_tokens[0] + message['content'] + "
          "additional_special_tokens[1]")) {
    return {{}, "gigachat"};
  }
  if (has("<|role_start|>")) return {{}, "megrez"};
  return {};
}

// The llama2 family and its variants.
void FormatLlama2(ChatFamily f, const std::vector<ChatMessage>& chat, std::string* out) {
  const bool system = f != ChatFamily::kLlama2;
  const bool bos_inside = f == ChatFamily::kLlama2SysBos;
  const bool strip = f == ChatFamily::kLlama2SysStrip;
  bool inside_turn = true;  // the first [INST] needs no BOS: the tokenizer adds it
  absl::StrAppend(out, "[INST] ");
  for (const ChatMessage& m : chat) {
    const std::string content = strip ? Trim(m.content) : m.content;
    if (!inside_turn) {
      inside_turn = true;
      absl::StrAppend(out, bos_inside ? "<s>[INST] " : "[INST] ");
    }
    if (m.role == "system") {
      if (system) {
        absl::StrAppend(out, "<<SYS>>\n", content, "\n<</SYS>>\n\n");
      } else {
        absl::StrAppend(out, content, "\n");  // folded into the first turn, unmarked
      }
    } else if (m.role == "user") {
      absl::StrAppend(out, content, " [/INST]");
    } else {
      absl::StrAppend(out, content, "</s>");
      inside_turn = false;
    }
  }
}

// Mistral v1, v3 and v3-tekken: [INST] turns with the system message at the
// start of a turn.
void FormatMistral(ChatFamily f, const std::vector<ChatMessage>& chat, std::string* out) {
  const char* lead = f == ChatFamily::kMistralV1 ? " " : "";
  const char* trail = f == ChatFamily::kMistralV3Tekken ? "" : " ";
  const bool trim_assistant = f == ChatFamily::kMistralV3;
  bool inside_turn = false;
  for (const ChatMessage& m : chat) {
    if (!inside_turn) {
      absl::StrAppend(out, lead, "[INST]", trail);
      inside_turn = true;
    }
    if (m.role == "system") {
      absl::StrAppend(out, m.content, "\n\n");
    } else if (m.role == "user") {
      absl::StrAppend(out, m.content, lead, "[/INST]");
    } else {
      absl::StrAppend(out, trail, trim_assistant ? Trim(m.content) : m.content, "</s>");
      inside_turn = false;
    }
  }
}

}  // namespace

std::string_view ChatFamilyName(ChatFamily f) {
  for (const auto& [family, name] : kNames) {
    if (family == f) return name;
  }
  return "unknown";
}

std::string ChatFamilyNames() {
  std::string names;
  for (const auto& [family, name] : kNames) absl::StrAppend(&names, names.empty() ? "" : ", ", Sv(name));
  return names;
}

std::optional<ChatFamily> ChatFamilyByName(std::string_view name) {
  for (const auto& [family, n] : kNames) {
    if (n == name) return family;
  }
  return std::nullopt;
}

absl::StatusOr<ChatFamily> DetectChatFamily(std::string_view tmpl) {
  if (Trim(tmpl).empty()) {
    return absl::FailedPreconditionError(
        "no chat template: the model has none (tokenizer.chat_template) and none was given; "
        "name one (" + ChatFamilyNames() + ") or use Generate with a formatted prompt");
  }
  if (auto named = ChatFamilyByName(tmpl)) return *named;
  const Detected d = Recognise(tmpl);
  if (d.family) return *d.family;
  const std::string_view first_line = tmpl.substr(0, std::min(tmpl.find('\n'), size_t{120}));
  for (std::string_view u : kUnsupported) {
    if (tmpl == u || d.unsupported == u) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the chat template is of the '", Sv(u), "' family, which m40llm does not format (it "
          "formats ", ChatFamilyNames(), "); Generate with a formatted prompt still works"));
    }
  }
  return absl::FailedPreconditionError(absl::StrCat(
      "unrecognised chat template (first line: \"", Sv(first_line), "\"); name a family (",
      ChatFamilyNames(), ") or use Generate with a formatted prompt, which still works"));
}

absl::StatusOr<ChatFamily> ChatFamilyFromArg(const std::string& arg) {
  if (auto named = ChatFamilyByName(arg)) return *named;
  std::ifstream in(arg, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("chat template '", arg,
                                            "' is neither a family name (", ChatFamilyNames(),
                                            ") nor a readable file"));
  }
  std::stringstream text;
  text << in.rdbuf();
  auto f = DetectChatFamily(text.str());
  if (!f.ok()) return absl::Status(f.status().code(), absl::StrCat(arg, ": ", f.status().message()));
  return f;
}

std::string FormatChat(ChatFamily f, const std::vector<ChatMessage>& chat, bool add_ass,
                       std::string_view eos_text) {
  using F = ChatFamily;
  std::string out;
  switch (f) {
    case F::kChatml:
      for (const ChatMessage& m : chat) {
        absl::StrAppend(&out, "<|im_start|>", m.role, "\n", m.content, "<|im_end|>\n");
      }
      if (add_ass) absl::StrAppend(&out, "<|im_start|>assistant\n");
      break;
    case F::kPhi4:
      for (const ChatMessage& m : chat) {
        absl::StrAppend(&out, "<|im_start|>", m.role, "<|im_sep|>", m.content, "<|im_end|>");
      }
      if (add_ass) absl::StrAppend(&out, "<|im_start|>assistant<|im_sep|>");
      break;
    case F::kMistralV7:
      for (const ChatMessage& m : chat) {
        if (m.role == "system") {
          absl::StrAppend(&out, "[SYSTEM_PROMPT] ", m.content, "[/SYSTEM_PROMPT]");
        } else if (m.role == "user") {
          absl::StrAppend(&out, "[INST] ", m.content, "[/INST]");
        } else {
          absl::StrAppend(&out, " ", m.content, "</s>");
        }
      }
      break;
    case F::kMistralV1:
    case F::kMistralV3:
    case F::kMistralV3Tekken:
      FormatMistral(f, chat, &out);
      break;
    case F::kLlama2:
    case F::kLlama2Sys:
    case F::kLlama2SysBos:
    case F::kLlama2SysStrip:
      FormatLlama2(f, chat, &out);
      break;
    case F::kPhi3:
      for (const ChatMessage& m : chat) {
        absl::StrAppend(&out, "<|", m.role, "|>\n", m.content, "<|end|>\n");
      }
      if (add_ass) absl::StrAppend(&out, "<|assistant|>\n");
      break;
    case F::kZephyr:
      for (const ChatMessage& m : chat) {
        absl::StrAppend(&out, "<|", m.role, "|>\n", m.content,
                        eos_text.empty() ? "<|endoftext|>" : Sv(eos_text), "\n");
      }
      if (add_ass) absl::StrAppend(&out, "<|assistant|>\n");
      break;
    case F::kGemma: {
      // No system role: its text opens the next user turn.
      std::string system;
      for (const ChatMessage& m : chat) {
        if (m.role == "system") {
          system = Trim(m.content);
          continue;
        }
        const std::string role = m.role == "assistant" ? "model" : m.role;
        absl::StrAppend(&out, "<start_of_turn>", role, "\n");
        if (!system.empty() && role != "model") {
          absl::StrAppend(&out, system, "\n\n");
          system.clear();
        }
        absl::StrAppend(&out, Trim(m.content), "<end_of_turn>\n");
      }
      if (add_ass) absl::StrAppend(&out, "<start_of_turn>model\n");
      break;
    }
    case F::kVicuna:
    case F::kVicunaOrca:
      for (const ChatMessage& m : chat) {
        if (m.role == "system") {
          absl::StrAppend(&out, f == F::kVicunaOrca ? "SYSTEM: " : "", m.content,
                          f == F::kVicunaOrca ? "\n" : "\n\n");
        } else if (m.role == "user") {
          absl::StrAppend(&out, "USER: ", m.content, "\n");
        } else if (m.role == "assistant") {
          absl::StrAppend(&out, "ASSISTANT: ", m.content, "</s>\n");
        }
      }
      if (add_ass) absl::StrAppend(&out, "ASSISTANT:");
      break;
    case F::kCommandR:
      for (const ChatMessage& m : chat) {
        const std::string tag = m.role == "system"           ? "<|SYSTEM_TOKEN|>"
                                     : m.role == "user"      ? "<|USER_TOKEN|>"
                                     : m.role == "assistant" ? "<|CHATBOT_TOKEN|>"
                                                             : "";
        if (tag.empty()) continue;
        absl::StrAppend(&out, "<|START_OF_TURN_TOKEN|>", tag, Trim(m.content),
                        "<|END_OF_TURN_TOKEN|>");
      }
      if (add_ass) absl::StrAppend(&out, "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>");
      break;
    case F::kLlama3:
      for (const ChatMessage& m : chat) {
        absl::StrAppend(&out, "<|start_header_id|>", m.role, "<|end_header_id|>\n\n",
                        Trim(m.content), "<|eot_id|>");
      }
      if (add_ass) absl::StrAppend(&out, "<|start_header_id|>assistant<|end_header_id|>\n\n");
      break;
    case F::kDeepseek2:
      for (const ChatMessage& m : chat) {
        if (m.role == "system") {
          absl::StrAppend(&out, m.content, "\n\n");
        } else if (m.role == "user") {
          absl::StrAppend(&out, "User: ", m.content, "\n\n");
        } else if (m.role == "assistant") {
          absl::StrAppend(&out, "Assistant: ", m.content, kDsEnd);
        }
      }
      if (add_ass) absl::StrAppend(&out, "Assistant:");
      break;
    case F::kDeepseek3:
      for (const ChatMessage& m : chat) {
        if (m.role == "system") {
          absl::StrAppend(&out, m.content, "\n\n");
        } else if (m.role == "user") {
          absl::StrAppend(&out, kDsUser, m.content);
        } else if (m.role == "assistant") {
          absl::StrAppend(&out, kDsAssistant, m.content, kDsEnd);
        }
      }
      if (add_ass) absl::StrAppend(&out, kDsAssistant);
      break;
  }
  return out;
}

}  // namespace m40llm
