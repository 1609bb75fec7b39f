#!/usr/bin/python3
"""End-to-end: the m40llm.v1.Inference API, health and reflection of the real
`m40llm serve`, through python3-grpcio (see harness.py for the flags)."""
import re
import time
import unittest

import harness as h
from harness import ServerTestCase

PROMPT = "Once upon a time"


class InferenceApi(ServerTestCase):
    SERVER_ARGS = ("--max-batch", "4", "--queue-size", "16", "--ctx-per-slot", "512",
                   "--chat-template", "zephyr")

    def request(self, **kw):
        kw.setdefault("text", PROMPT)
        return h.pb.GenerateRequest(**kw)

    def prompt_ids(self, text=PROMPT):
        return list(self.stub.Tokenize(h.pb.TokenizeRequest(text=text), timeout=10).ids)

    def test_generate_stream(self):
        n = 48
        t0 = time.monotonic()
        s = h.generate(self.stub, self.request(max_tokens=n, ignore_eos=True, seed=1234,
                                               temperature=0.8, request_id="e2e-stream-1"))
        wall = time.monotonic() - t0
        self.assertCode(s, h.grpc.StatusCode.OK)
        self.assertEqual(len(s.tokens), n, "token_ids over all messages must add up to max_tokens")
        self.assertTrue(all(0 <= t < 512 for t in s.tokens), s.tokens)
        self.assertGreater(len(s.messages), 1, "tokens should stream in several messages")
        for m in s.messages:
            self.assertEqual(m.request_id, "e2e-stream-1")
        for m in s.messages[:-1]:
            self.assertEqual(m.finish_reason, h.pb.FINISH_REASON_UNSPECIFIED)
            self.assertFalse(m.HasField("usage") or m.HasField("timings"), m)
            self.assertEqual(m.seed, 0)
        last = s.last
        self.assertEqual(last.finish_reason, h.pb.FINISH_REASON_LENGTH)
        self.assertTrue(last.HasField("usage") and last.HasField("timings"), last)
        self.assertEqual(last.usage.completion_tokens, n)
        self.assertEqual(last.usage.prompt_tokens, len(self.prompt_ids()))
        self.assertEqual(last.seed, 1234)
        t = last.timings
        self.assertGreaterEqual(t.queue_seconds, 0)
        self.assertGreater(t.time_to_first_token_seconds, 0)
        self.assertGreaterEqual(t.time_to_first_token_seconds, t.queue_seconds)
        self.assertGreater(t.decode_seconds, 0)
        self.assertLessEqual(t.time_to_first_token_seconds + t.decode_seconds, wall)
        self.assertTrue(all(len(m.logprobs) == 0 for m in s.messages), "no logprobs asked for")

    def test_seed_determinism(self):
        a = h.generate(self.stub, self.request(max_tokens=24, ignore_eos=True, seed=77))
        b = h.generate(self.stub, self.request(max_tokens=24, ignore_eos=True, seed=77))
        c = h.generate(self.stub, self.request(max_tokens=24, ignore_eos=True, seed=78))
        for s in (a, b, c):
            self.assertCode(s, h.grpc.StatusCode.OK)
        self.assertEqual(a.tokens, b.tokens, "same seed, prompt and parameters: same tokens")
        self.assertEqual(a.text, b.text)
        self.assertNotEqual(a.tokens, c.tokens, "another seed should sample other tokens")
        # No seed: a random one, reported last, reproduces the stream.
        r1 = h.generate(self.stub, self.request(max_tokens=24, ignore_eos=True))
        r2 = h.generate(self.stub, self.request(max_tokens=24, ignore_eos=True))
        self.assertNotEqual(r1.last.seed, r2.last.seed, "default seeds should differ")
        again = h.generate(self.stub, self.request(max_tokens=24, ignore_eos=True,
                                                   seed=r1.last.seed))
        self.assertEqual(again.tokens, r1.tokens)

    def test_greedy_matches_token_prompt(self):
        # A text prompt and the same prompt as token ids generate the same.
        ids = self.prompt_ids()
        a = h.generate(self.stub, self.request(max_tokens=16, ignore_eos=True, temperature=0))
        b = h.generate(self.stub, h.pb.GenerateRequest(
            tokens=h.pb.TokenIds(ids=ids), max_tokens=16, ignore_eos=True, temperature=0))
        self.assertCode(a, h.grpc.StatusCode.OK)
        self.assertCode(b, h.grpc.StatusCode.OK)
        self.assertEqual(a.tokens, b.tokens)
        self.assertEqual(b.last.usage.prompt_tokens, len(ids))
        # Without BOS the prompt is one token shorter.
        c = h.generate(self.stub, self.request(max_tokens=4, ignore_eos=True, add_special=False))
        self.assertEqual(c.last.usage.prompt_tokens, len(ids) - 1)

    def test_slow_reader_loses_nothing(self):
        # A client that stops reading for a while gets the same tokens and
        # text, in order. (Whether the server merges them into fewer messages
        # depends on gRPC flow control; loopback buffers absorb a stream this
        # size, so that is not checked.)
        req = self.request(max_tokens=300, ignore_eos=True, seed=42, logprobs=2)
        fast = h.generate(self.stub, req)
        slow = h.generate(self.stub, req,
                          on_message=lambda s, m: time.sleep(0.1) if len(s.messages) <= 3
                          else None)
        for s in (fast, slow):
            self.assertCode(s, h.grpc.StatusCode.OK)
        self.assertEqual(len(slow.tokens), 300)
        self.assertEqual(slow.tokens, fast.tokens)
        self.assertEqual(slow.text, fast.text)
        self.assertEqual([lp.token for m in slow.messages for lp in m.logprobs], slow.tokens)
        self.assertEqual(slow.last.finish_reason, h.pb.FINISH_REASON_LENGTH)

    def test_generated_request_id(self):
        s = h.generate(self.stub, self.request(max_tokens=8, ignore_eos=True))
        self.assertCode(s, h.grpc.StatusCode.OK)
        rid = s.messages[0].request_id
        self.assertRegex(rid, r"^[0-9a-f]{32}$")
        self.assertTrue(all(m.request_id == rid for m in s.messages))
        other = h.generate(self.stub, self.request(max_tokens=1))
        self.assertNotEqual(other.messages[0].request_id, rid)

    def test_logprobs(self):
        s = h.generate(self.stub, self.request(max_tokens=12, ignore_eos=True, seed=5,
                                               logprobs=3))
        self.assertCode(s, h.grpc.StatusCode.OK)
        lps = [lp for m in s.messages for lp in m.logprobs]
        self.assertEqual([lp.token for lp in lps], s.tokens)
        for lp in lps:
            self.assertEqual(len(lp.top), 3)
            self.assertLessEqual(lp.logprob, 0)
            ranked = [t.logprob for t in lp.top]
            self.assertEqual(ranked, sorted(ranked, reverse=True))
            self.assertGreaterEqual(ranked[0], lp.logprob - 1e-5)
        # Greedy picks the most likely token, before any penalty.
        g = h.generate(self.stub, self.request(max_tokens=6, ignore_eos=True, temperature=0,
                                               logprobs=1))
        for lp in (lp for m in g.messages for lp in m.logprobs):
            self.assertEqual(lp.top[0].token, lp.token)

    def test_stop_token_and_stop_string(self):
        base = h.generate(self.stub, self.request(max_tokens=20, ignore_eos=True, seed=9))
        self.assertCode(base, h.grpc.StatusCode.OK)
        # Stop at the 6th token's id (the first time it occurs).
        stop_id = base.tokens[5]
        cut = base.tokens.index(stop_id)
        s = h.generate(self.stub, self.request(max_tokens=20, ignore_eos=True, seed=9,
                                               stop_token_ids=[stop_id]))
        self.assertCode(s, h.grpc.StatusCode.OK)
        self.assertEqual(s.last.finish_reason, h.pb.FINISH_REASON_STOP)
        self.assertEqual(s.tokens, base.tokens[:cut], "the stop id itself is not sent")
        # A stop string taken from the middle of the text.
        text = base.text
        word = next((w for w in re.findall(r"[A-Za-z]{3,}", text[3:])), None)
        if word is not None:
            s = h.generate(self.stub, self.request(max_tokens=20, ignore_eos=True, seed=9,
                                                   stop=[word]))
            self.assertEqual(s.last.finish_reason, h.pb.FINISH_REASON_STOP_SEQUENCE, text)
            self.assertEqual(s.text, text[:text.index(word)])

    def test_text_continues_prompt(self):
        # docs/api.md: concatenating every message's text gives the completion,
        # i.e. what the prompt + completion decode to after the prompt's text
        # (the first completion token keeps its SentencePiece leading space).
        ids = self.prompt_ids()
        pre = self.stub.Detokenize(h.pb.DetokenizeRequest(ids=ids), timeout=10).text
        for seed in range(64):
            s = h.generate(self.stub, self.request(max_tokens=4, ignore_eos=True, seed=seed))
            full = self.stub.Detokenize(h.pb.DetokenizeRequest(ids=ids + s.tokens),
                                        timeout=10).text
            self.assertEqual(pre + s.text, full, f"seed {seed}, tokens {s.tokens}")

    def test_tokenize_detokenize(self):
        for text in ["Hello world, this is a test.", "über café 日本", " two  spaces"]:
            with_bos = list(self.stub.Tokenize(h.pb.TokenizeRequest(text=text), timeout=10).ids)
            no_bos = list(self.stub.Tokenize(h.pb.TokenizeRequest(text=text, add_special=False),
                                             timeout=10).ids)
            self.assertEqual(with_bos[0], 1, "the demo model adds BOS (id 1)")
            self.assertEqual(with_bos[1:], no_bos)
            self.assertGreater(len(no_bos), 1)
            back = self.stub.Detokenize(h.pb.DetokenizeRequest(ids=no_bos), timeout=10).text
            self.assertEqual(back, text)
        special = self.stub.Tokenize(h.pb.TokenizeRequest(text="<s>", add_special=False,
                                                          parse_special=True), timeout=10)
        self.assertEqual(list(special.ids), [1])
        plain = self.stub.Tokenize(h.pb.TokenizeRequest(text="<s>", add_special=False),
                                   timeout=10)
        self.assertGreater(len(plain.ids), 1, "without parse_special <s> is spelled out")
        empty = self.stub.Tokenize(h.pb.TokenizeRequest(text="", add_special=False), timeout=10)
        self.assertEqual(list(empty.ids), [])
        # Half of a UTF-8 character decodes to U+FFFD, never invalid text.
        ids = list(self.stub.Tokenize(h.pb.TokenizeRequest(text="日", add_special=False),
                                      timeout=10).ids)
        self.assertGreater(len(ids), 1, ids)
        half = self.stub.Detokenize(h.pb.DetokenizeRequest(ids=ids[:-1]), timeout=10).text
        self.assertIn("\ufffd", half)

    def test_model_info(self):
        info = self.stub.GetModelInfo(h.pb.GetModelInfoRequest(), timeout=10)
        self.assertEqual(info.architecture, "llama")
        self.assertEqual(info.file, "demo-llama-v1.gguf")
        self.assertEqual(info.backend, "cpu")
        self.assertEqual(info.tokenizer, "llama")
        self.assertEqual((info.n_vocab, info.n_embd, info.n_layer, info.n_head, info.n_head_kv,
                          info.head_dim, info.n_ff), (512, 256, 4, 8, 4, 32, 768))
        self.assertEqual((info.bos_token_id, info.eos_token_id, info.add_bos), (1, 2, True))
        self.assertEqual((info.ctx_per_slot, info.max_batch, info.queue_size), (512, 4, 16))
        self.assertRegex(info.weight_types, r"^F16:\d+( F32:\d+)?$")
        self.assertGreater(info.weight_bytes, 1 << 20)
        self.assertTrue(info.server_version)
        # n_vocab is the bound Detokenize enforces.
        ok = self.stub.Detokenize(h.pb.DetokenizeRequest(ids=[info.n_vocab - 1]), timeout=10)
        self.assertIsInstance(ok.text, str)
        with self.assertRaises(h.grpc.RpcError) as e:
            self.stub.Detokenize(h.pb.DetokenizeRequest(ids=[5, info.n_vocab]), timeout=10)
        self.assertCode(e.exception, h.grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("ids[1] = 512", e.exception.details())

    def chat(self, messages, **kw):
        req = h.pb.ChatRequest(messages=[h.pb.ChatMessage(role=r, content=c) for r, c in messages],
                               **kw)
        s = h.Stream()
        call = self.stub.Chat(req, timeout=60)
        try:
            for m in call:
                s.messages.append(m)
        except h.grpc.RpcError:
            pass
        s.code = call.code()
        s.details = call.details()
        return s

    def test_chat_is_generate_on_the_formatted_conversation(self):
        convo = [("system", "Be brief."), ("user", "What is a clock?")]
        opts = h.pb.GenerateRequest(max_tokens=16, temperature=0, ignore_eos=True)
        # Named in the request: ChatML, written out by hand.
        chat = self.chat(convo, chat_template="chatml", options=opts)
        self.assertCode(chat, h.grpc.StatusCode.OK)
        prompt = ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is a clock?"
                  "<|im_end|>\n<|im_start|>assistant\n")
        gen = h.generate(self.stub, self.request(text=prompt, parse_special=True, max_tokens=16,
                                                 temperature=0, ignore_eos=True))
        self.assertCode(gen, h.grpc.StatusCode.OK)
        self.assertEqual(chat.tokens, gen.tokens)
        self.assertEqual(chat.last.usage.prompt_tokens, gen.last.usage.prompt_tokens)
        # The server's --chat-template (zephyr, whose turns end with the
        # model's EOS, "</s>" here) when the request names none.
        chat = self.chat([("user", "hello")], options=opts)
        self.assertCode(chat, h.grpc.StatusCode.OK)
        gen = h.generate(self.stub, self.request(text="<|user|>\nhello</s>\n<|assistant|>\n",
                                                 parse_special=True, max_tokens=16,
                                                 temperature=0, ignore_eos=True))
        self.assertEqual(chat.tokens, gen.tokens)
        info = self.stub.GetModelInfo(h.pb.GetModelInfoRequest(), timeout=10)
        self.assertEqual(info.chat_template, "zephyr")

    def test_chat_errors(self):
        s = self.chat([("user", "hi")], chat_template="{{ mystery }}\nline two")
        self.assertCode(s, h.grpc.StatusCode.FAILED_PRECONDITION)
        self.assertIn('first line: "{{ mystery }}"', s.details)
        s = self.chat([], chat_template="chatml")
        self.assertCode(s, h.grpc.StatusCode.INVALID_ARGUMENT)
        s = self.chat([("user", "hi")], options=h.pb.GenerateRequest(text="x"))
        self.assertCode(s, h.grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("options.text", s.details)

    def test_health(self):
        serving = h.health_pb2.HealthCheckResponse.SERVING
        self.assertEqual(self.server.health_status(""), serving)
        self.assertEqual(self.server.health_status("m40llm.v1.Inference"), serving)
        with self.assertRaises(h.grpc.RpcError) as e:
            self.server.health_status("no.such.Service")
        self.assertCode(e.exception, h.grpc.StatusCode.NOT_FOUND)
        # Watch streams the current status first.
        call = self.server.health.Watch(h.health_pb2.HealthCheckRequest(), timeout=5)
        self.assertEqual(next(call).status, serving)
        call.cancel()

    def test_reflection(self):
        from google.protobuf import descriptor_pb2
        stub = h.reflection_pb2_grpc.ServerReflectionStub(self.server.channel)
        R = h.reflection_pb2.ServerReflectionRequest
        replies = list(stub.ServerReflectionInfo(
            iter([R(list_services=""), R(file_containing_symbol="m40llm.v1.Inference")]),
            timeout=10))
        self.assertEqual(len(replies), 2)
        names = {s.name for s in replies[0].list_services_response.service}
        self.assertIn("m40llm.v1.Inference", names)
        self.assertIn("grpc.health.v1.Health", names)
        files = [descriptor_pb2.FileDescriptorProto.FromString(b)
                 for b in replies[1].file_descriptor_response.file_descriptor_proto]
        mine = [f for f in files if f.package == "m40llm.v1"]
        self.assertEqual(len(mine), 1, [f.name for f in files])
        service = {s.name: s for s in mine[0].service}["Inference"]
        methods = {m.name: m for m in service.method}
        self.assertEqual(set(methods),
                         {"Generate", "Chat", "Tokenize", "Detokenize", "GetModelInfo"})
        self.assertTrue(methods["Generate"].server_streaming)
        self.assertTrue(methods["Chat"].server_streaming)
        self.assertFalse(methods["Tokenize"].server_streaming)

    def test_metrics_count_the_request(self):
        before = self.server.metrics()
        s = h.generate(self.stub, self.request(max_tokens=10, ignore_eos=True))
        self.assertCode(s, h.grpc.StatusCode.OK)
        after = self.server.wait_metric(
            "m40llm_requests_total",
            lambda v: v == before.get_value("m40llm_requests_total", status="ok") + 1,
            status="ok")
        m = self.server.metrics()
        self.assertEqual(m.get_value("m40llm_generated_tokens_total"),
                         before.get_value("m40llm_generated_tokens_total") + 10)
        self.assertEqual(m.get_value("m40llm_prompt_tokens_total"),
                         before.get_value("m40llm_prompt_tokens_total")
                         + s.last.usage.prompt_tokens)
        for name, n in (("m40llm_time_to_first_token_seconds_count", 1),
                        ("m40llm_inter_token_latency_seconds_count", 9),
                        ("m40llm_request_duration_seconds_count", 1),
                        ("m40llm_queue_time_seconds_count", 1)):
            self.assertEqual(m.get_value(name) - before.get_value(name), n, name)
        # The slot frees when the decoder confirms the finish, just after the
        # client's last message.
        self.server.wait_metric("m40llm_active_sequences", lambda v: v == 0, timeout=5)
        self.assertGreater(after, 0)


if __name__ == "__main__":
    h.main()
