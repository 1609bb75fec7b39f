// Chat template families: each family's output for one conversation (a
// system message, alternating turns, leading and trailing spaces, non-ASCII
// text), written out by hand below from the family's published format (as
// llama.cpp's built-in formatter renders it), never produced by our
// formatter; and recognition of real templates by their text.
#include "engine/chat_template.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace m40llm {
namespace {

using ::testing::HasSubstr;

// The conversation every family formats.
const std::vector<ChatMessage>& Conversation() {
  static const std::vector<ChatMessage> c = {
      {"system", " You are a helpful assistant. "},
      {"user", "H\xC3\xA9llo, w\xC3\xB6rld! \xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E"},  // Héllo, wörld! 日本語
      {"assistant", "  Bonjour \xE2\x9C\x93  "},                                   // Bonjour ✓
      {"user", "Say more. "},
  };
  return c;
}

// The pieces, spelt out once more for the expected strings.
#define SYS " You are a helpful assistant. "
#define SYS_T "You are a helpful assistant."
#define U1 "H\xC3\xA9llo, w\xC3\xB6rld! \xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E"
#define A1 "  Bonjour \xE2\x9C\x93  "
#define A1_T "Bonjour \xE2\x9C\x93"
#define U2 "Say more. "
#define U2_T "Say more."
#define DS_USER "<\xEF\xBD\x9CUser\xEF\xBD\x9C>"
#define DS_ASSISTANT "<\xEF\xBD\x9C" "Assistant\xEF\xBD\x9C>"
#define DS_END "<\xEF\xBD\x9C" "end\xE2\x96\x81" "of\xE2\x96\x81" "sentence\xEF\xBD\x9C>"

struct Expected {
  const char* family;
  std::string with_prompt;     // add_generation_prompt
  std::string without_prompt;  // add_generation_prompt false
};

const std::vector<Expected>& Table() {
  static const std::vector<Expected> t = {
      {"chatml",
       "<|im_start|>system\n" SYS "<|im_end|>\n<|im_start|>user\n" U1
       "<|im_end|>\n<|im_start|>assistant\n" A1 "<|im_end|>\n<|im_start|>user\n" U2
       "<|im_end|>\n<|im_start|>assistant\n",
       "<|im_start|>system\n" SYS "<|im_end|>\n<|im_start|>user\n" U1
       "<|im_end|>\n<|im_start|>assistant\n" A1 "<|im_end|>\n<|im_start|>user\n" U2
       "<|im_end|>\n"},
      // Llama 2 without <<SYS>>: the system text opens the first turn.
      {"llama2", "[INST] " SYS "\n" U1 " [/INST]" A1 "</s>[INST] " U2 " [/INST]",
       "[INST] " SYS "\n" U1 " [/INST]" A1 "</s>[INST] " U2 " [/INST]"},
      {"llama2-sys", "[INST] <<SYS>>\n" SYS "\n<</SYS>>\n\n" U1 " [/INST]" A1 "</s>[INST] " U2 " [/INST]",
       "[INST] <<SYS>>\n" SYS "\n<</SYS>>\n\n" U1 " [/INST]" A1 "</s>[INST] " U2 " [/INST]"},
      {"llama2-sys-bos",
       "[INST] <<SYS>>\n" SYS "\n<</SYS>>\n\n" U1 " [/INST]" A1 "</s><s>[INST] " U2 " [/INST]",
       "[INST] <<SYS>>\n" SYS "\n<</SYS>>\n\n" U1 " [/INST]" A1 "</s><s>[INST] " U2 " [/INST]"},
      {"llama2-sys-strip",
       "[INST] <<SYS>>\n" SYS_T "\n<</SYS>>\n\n" U1 " [/INST]" A1_T "</s>[INST] " U2_T " [/INST]",
       "[INST] <<SYS>>\n" SYS_T "\n<</SYS>>\n\n" U1 " [/INST]" A1_T "</s>[INST] " U2_T " [/INST]"},
      // Mistral v1: " [INST] " around turns, the system text heads the first.
      {"mistral-v1", " [INST] " SYS "\n\n" U1 " [/INST] " A1 "</s> [INST] " U2 " [/INST]",
       " [INST] " SYS "\n\n" U1 " [/INST] " A1 "</s> [INST] " U2 " [/INST]"},
      // v3: no space before [/INST], the assistant's text trimmed.
      {"mistral-v3", "[INST] " SYS "\n\n" U1 "[/INST] " A1_T "</s>[INST] " U2 "[/INST]",
       "[INST] " SYS "\n\n" U1 "[/INST] " A1_T "</s>[INST] " U2 "[/INST]"},
      // v3-tekken: no spaces at all around [INST].
      {"mistral-v3-tekken", "[INST]" SYS "\n\n" U1 "[/INST]" A1 "</s>[INST]" U2 "[/INST]",
       "[INST]" SYS "\n\n" U1 "[/INST]" A1 "</s>[INST]" U2 "[/INST]"},
      {"mistral-v7",
       "[SYSTEM_PROMPT] " SYS "[/SYSTEM_PROMPT][INST] " U1 "[/INST] " A1 "</s>[INST] " U2 "[/INST]",
       "[SYSTEM_PROMPT] " SYS "[/SYSTEM_PROMPT][INST] " U1 "[/INST] " A1 "</s>[INST] " U2 "[/INST]"},
      // Llama 3: header ids, contents trimmed.
      {"llama3",
       "<|start_header_id|>system<|end_header_id|>\n\n" SYS_T
       "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n" U1
       "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n" A1_T
       "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n" U2_T
       "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
       "<|start_header_id|>system<|end_header_id|>\n\n" SYS_T
       "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n" U1
       "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n" A1_T
       "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n" U2_T "<|eot_id|>"},
      {"zephyr",
       "<|system|>\n" SYS "<|endoftext|>\n<|user|>\n" U1 "<|endoftext|>\n<|assistant|>\n" A1
       "<|endoftext|>\n<|user|>\n" U2 "<|endoftext|>\n<|assistant|>\n",
       "<|system|>\n" SYS "<|endoftext|>\n<|user|>\n" U1 "<|endoftext|>\n<|assistant|>\n" A1
       "<|endoftext|>\n<|user|>\n" U2 "<|endoftext|>\n"},
      {"phi3",
       "<|system|>\n" SYS "<|end|>\n<|user|>\n" U1 "<|end|>\n<|assistant|>\n" A1
       "<|end|>\n<|user|>\n" U2 "<|end|>\n<|assistant|>\n",
       "<|system|>\n" SYS "<|end|>\n<|user|>\n" U1 "<|end|>\n<|assistant|>\n" A1
       "<|end|>\n<|user|>\n" U2 "<|end|>\n"},
      {"phi4",
       "<|im_start|>system<|im_sep|>" SYS "<|im_end|><|im_start|>user<|im_sep|>" U1
       "<|im_end|><|im_start|>assistant<|im_sep|>" A1 "<|im_end|><|im_start|>user<|im_sep|>" U2
       "<|im_end|><|im_start|>assistant<|im_sep|>",
       "<|im_start|>system<|im_sep|>" SYS "<|im_end|><|im_start|>user<|im_sep|>" U1
       "<|im_end|><|im_start|>assistant<|im_sep|>" A1 "<|im_end|><|im_start|>user<|im_sep|>" U2
       "<|im_end|>"},
      // Gemma: no system role (its trimmed text opens the first user turn),
      // "model" for the assistant, contents trimmed.
      {"gemma",
       "<start_of_turn>user\n" SYS_T "\n\n" U1 "<end_of_turn>\n<start_of_turn>model\n" A1_T
       "<end_of_turn>\n<start_of_turn>user\n" U2_T "<end_of_turn>\n<start_of_turn>model\n",
       "<start_of_turn>user\n" SYS_T "\n\n" U1 "<end_of_turn>\n<start_of_turn>model\n" A1_T
       "<end_of_turn>\n<start_of_turn>user\n" U2_T "<end_of_turn>\n"},
      {"deepseek2",
       SYS "\n\nUser: " U1 "\n\nAssistant: " A1 DS_END "User: " U2 "\n\nAssistant:",
       SYS "\n\nUser: " U1 "\n\nAssistant: " A1 DS_END "User: " U2 "\n\n"},
      {"deepseek3", SYS "\n\n" DS_USER U1 DS_ASSISTANT A1 DS_END DS_USER U2 DS_ASSISTANT,
       SYS "\n\n" DS_USER U1 DS_ASSISTANT A1 DS_END DS_USER U2},
      {"vicuna", SYS "\n\nUSER: " U1 "\nASSISTANT: " A1 "</s>\nUSER: " U2 "\nASSISTANT:",
       SYS "\n\nUSER: " U1 "\nASSISTANT: " A1 "</s>\nUSER: " U2 "\n"},
      {"vicuna-orca",
       "SYSTEM: " SYS "\nUSER: " U1 "\nASSISTANT: " A1 "</s>\nUSER: " U2 "\nASSISTANT:",
       "SYSTEM: " SYS "\nUSER: " U1 "\nASSISTANT: " A1 "</s>\nUSER: " U2 "\n"},
      {"command-r",
       "<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>" SYS_T
       "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>" U1
       "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>" A1_T
       "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>" U2_T
       "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>",
       "<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>" SYS_T
       "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>" U1
       "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>" A1_T
       "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>" U2_T "<|END_OF_TURN_TOKEN|>"},
  };
  return t;
}

TEST(ChatTemplate, EveryFamilyFormatsTheConversationAsPublished) {
  ASSERT_EQ(Table().size(), 19u);  // every family
  for (const Expected& e : Table()) {
    SCOPED_TRACE(e.family);
    const std::optional<ChatFamily> f = ChatFamilyByName(e.family);
    ASSERT_TRUE(f.has_value());
    EXPECT_EQ(ChatFamilyName(*f), e.family);
    EXPECT_EQ(FormatChat(*f, Conversation(), true), e.with_prompt);
    EXPECT_EQ(FormatChat(*f, Conversation(), false), e.without_prompt);
    // A name is a template too.
    auto d = DetectChatFamily(e.family);
    ASSERT_TRUE(d.ok()) << d.status();
    EXPECT_EQ(*d, *f);
  }
}

TEST(ChatTemplate, ZephyrEndsTurnsWithTheModelsEos) {
  const std::vector<ChatMessage> c = {{"user", "hi"}};
  EXPECT_EQ(FormatChat(ChatFamily::kZephyr, c, true, "</s>"), "<|user|>\nhi</s>\n<|assistant|>\n");
}

// Real templates, abridged to the markers that tell them apart.
TEST(ChatTemplate, RealTemplatesAreRecognisedByTheirText) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
       "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
       "{{ '<|im_start|>assistant\\n' }}{% endif %}",
       "chatml"},
      {"{% for m in messages %}{{'<|im_start|>' + m['role'] + '<|im_sep|>' + m['content'] + "
       "'<|im_end|>'}}{% endfor %}",
       "phi4"},
      {"{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
       "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' "
       "%}{{ message['content'] + eos_token}}{% endif %}{% endfor %}",
       "llama2"},
      {"{% if messages[0]['role'] == 'system' %}{% set system_message = '<<SYS>>\\n' + "
       "messages[0]['content'] + '\\n<</SYS>>\\n\\n' %}{% endif %}{{ '[INST] ' + content }}",
       "llama2-sys"},
      {"{{ bos_token + '[INST] ' + '<<SYS>>' }}", "llama2-sys-bos"},
      {"{% set content = message['content'] %}{{ '[INST] <<SYS>>' + content.strip() }}", "llama2-sys-strip"},
      {"{%- if messages[0]['role'] == 'system' %}{{- ' [INST] ' + system_message }}"
       "{%- for tool in tools %}[AVAILABLE_TOOLS]{%- endfor %}",
       "mistral-v1"},
      {"{%- for message in loop_messages %}{{- \"[AVAILABLE_TOOLS] [\" }}{{- \"[INST] \" + "
       "message[\"content\"] + \"[/INST]\" }}",
       "mistral-v3"},
      {"{{- \"[AVAILABLE_TOOLS][\" }}{{- \"[INST]\" + message[\"content\"] + \"[/INST]\" }}",
       "mistral-v3-tekken"},
      {"{{- '[SYSTEM_PROMPT]' + system_message + '[/SYSTEM_PROMPT]' }}{{- '[INST]' }}",
       "mistral-v7"},
      {"{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + "
       "message['content'] | trim + '<|eot_id|>' }}",
       "llama3"},
      // TinyLlama-1.1B-Chat's own template.
      {"{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\\n' + "
       "message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n"
       "{{ '<|assistant|>\\n'  + message['content'] + eos_token }}\n{% endif %}\n{% endfor %}",
       "zephyr"},
      {"{{ '<|user|>\\n' + message['content'] + '<|endoftext|>' }}", "zephyr"},
      {"{{ '<|user|>\\n' + message['content'] + '<|end|>\\n' + '<|assistant|>\\n' }}", "phi3"},
      {"{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}",
       "gemma"},
      {"{{ 'User: ' + message['content'] + '\\n\\n' }}{{ 'Assistant: ' + message['content'] + "
       "eos_token }}",
       "deepseek2"},
      {"{{'<\xEF\xBD\x9CUser\xEF\xBD\x9C>' + message['content']}}{{'<\xEF\xBD\x9C"
       "Assistant\xEF\xBD\x9C>' + content + '<\xEF\xBD\x9C" "end\xE2\x96\x81" "of\xE2\x96\x81"
       "sentence\xEF\xBD\x9C>'}}",
       "deepseek3"},
      {"{{ 'USER: ' + message['content'] + '\\n' }}{{ 'ASSISTANT: ' + message['content'] }}",
       "vicuna"},
      {"{{ 'SYSTEM: ' + s }}{{ 'USER: ' + u }}{{ 'ASSISTANT: ' + a }}", "vicuna-orca"},
      {"{{ '<|START_OF_TURN_TOKEN|><|USER_TOKEN|>' + content + '<|END_OF_TURN_TOKEN|>' }}",
       "command-r"},
  };
  for (const auto& [tmpl, family] : cases) {
    auto d = DetectChatFamily(tmpl);
    ASSERT_TRUE(d.ok()) << family << ": " << d.status();
    EXPECT_EQ(ChatFamilyName(*d), family) << tmpl;
  }
}

TEST(ChatTemplate, UnrecognisedTemplatesAreRefusedWithTheFirstLine) {
  auto d = DetectChatFamily("{% for m in messages %}<<<{{ m.content }}>>>\n{% endfor %}");
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(d.status().message()),
              HasSubstr("{% for m in messages %}<<<{{ m.content }}>>>\""));
  EXPECT_THAT(std::string(d.status().message()), HasSubstr("Generate with a formatted prompt"));
  // One llama.cpp knows but we do not format: named.
  auto glm = DetectChatFamily("[gMASK]<sop>{% for item in messages %}<|user|>{% endfor %}");
  ASSERT_FALSE(glm.ok());
  EXPECT_THAT(std::string(glm.status().message()), HasSubstr("'chatglm4'"));
  EXPECT_FALSE(DetectChatFamily("openchat").ok());
  EXPECT_EQ(DetectChatFamily("   ").status().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace m40llm
