// A small built-in SentencePiece-style vocabulary for random-weight demo
// models (`m40llm mkmodel`), so that they can be driven with English text
// without shipping a real tokenizer.
#pragma once

#include "engine/tokenizer.h"

namespace m40llm {

// Number of tokens in MakeDemoVocab().
inline constexpr int kDemoVocabSize = 512;

// A deterministic `llama`-model vocabulary of kDemoVocabSize tokens: <unk>
// (0, unknown), <s> (1, BOS, control), </s> (2, EOS, control), the 256 byte
// tokens <0x00>..<0xFF> (3..258, type byte), "▁" and every printable ASCII
// character, then word pieces such as "▁the" and "ing" built so that each is
// reachable by pairwise merges, scored so that earlier (more common) pieces
// merge first. Any UTF-8 (or arbitrary bytes) encodes, via byte fallback
// where no piece fits. add_bos is set, add_eos is not.
//
// With `n_tokens` > kDemoVocabSize, ids kDemoVocabSize.. are filler so that
// the vocabulary has a real model's size: normal tokens "<extra_ID>" (ID =
// the token's id) scored far below every demo piece. No merge of demo pieces
// forms them, so text tokenizes exactly as with the plain demo vocabulary.
// `n_tokens` below kDemoVocabSize is treated as kDemoVocabSize.
Vocab MakeDemoVocab(int n_tokens = kDemoVocabSize);

}  // namespace m40llm
