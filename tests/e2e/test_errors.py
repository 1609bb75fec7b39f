#!/usr/bin/python3
"""End-to-end: the real `m40llm serve` refuses bad requests with the status
codes and messages docs/api.md documents, and counts them in /metrics."""
import os
import socket
import subprocess
import unittest

import harness as h
from harness import ServerTestCase

CTX = 64  # --ctx-per-slot: small, so that context limits are cheap to reach
N_VOCAB = 512


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def with_bytes_field(message, field_number, raw):
    """message serialized, plus a length-delimited field holding raw bytes
    (what a C++ client can send in a `string` field; Python cannot)."""
    return (message.SerializeToString() + varint(field_number << 3 | 2) + varint(len(raw))
            + raw)


INVALID_UTF8 = b"caf\xc3 \xff\xfe and \xed\xa0\x80"  # truncated, invalid bytes, surrogate


def bad_generate_requests():
    """(name, GenerateRequest kwargs, a substring the message must contain)."""
    ok = dict(text="hello", max_tokens=4)
    return [
        ("no prompt", dict(max_tokens=4), "no prompt"),
        ("empty text", dict(ok, text=""), "text is empty"),
        ("empty token prompt", dict(max_tokens=4, tokens=h.pb.TokenIds()), "tokens.ids is empty"),
        ("unknown token id", dict(max_tokens=4, tokens=h.pb.TokenIds(ids=[1, N_VOCAB])),
         f"tokens.ids[1] = {N_VOCAB}"),
        ("negative token id", dict(max_tokens=4, tokens=h.pb.TokenIds(ids=[-1])),
         "tokens.ids[0] = -1"),
        ("temperature -1", dict(ok, temperature=-1), "temperature"),
        ("temperature inf", dict(ok, temperature=float("inf")), "temperature"),
        ("temperature nan", dict(ok, temperature=float("nan")), "temperature"),
        ("top_p 0", dict(ok, top_p=0), "top_p"),
        ("top_p 1.5", dict(ok, top_p=1.5), "top_p"),
        ("min_p 2", dict(ok, min_p=2), "min_p"),
        ("min_p -0.5", dict(ok, min_p=-0.5), "min_p"),
        ("top_k -1", dict(ok, top_k=-1), "top_k"),
        ("repetition_penalty 0", dict(ok, repetition_penalty=0), "repetition_penalty"),
        ("repetition_penalty 101", dict(ok, repetition_penalty=101), "repetition_penalty"),
        ("presence_penalty 3", dict(ok, presence_penalty=3), "presence_penalty"),
        ("frequency_penalty -3", dict(ok, frequency_penalty=-3), "frequency_penalty"),
        ("penalty_last_n -2", dict(ok, penalty_last_n=-2), "penalty_last_n"),
        ("logprobs 21", dict(ok, logprobs=21), "logprobs"),
        ("logprobs -1", dict(ok, logprobs=-1), "logprobs"),
        ("max_tokens 0", dict(ok, max_tokens=0), "max_tokens"),
        ("max_tokens -5", dict(ok, max_tokens=-5), "max_tokens"),
        ("max_tokens 131073", dict(ok, max_tokens=131073), "max_tokens"),
        ("9 stop ids", dict(ok, stop_token_ids=list(range(3, 12))), "stop_token_ids"),
        ("unknown stop id", dict(ok, stop_token_ids=[5, 600]), "stop_token_ids[1] = 600"),
        ("17 stop strings", dict(ok, stop=[f"s{i}" for i in range(17)]), "stop"),
        ("empty stop string", dict(ok, stop=["x", ""]), "stop[1]"),
        ("257-byte stop string", dict(ok, stop=["a" * 257]), "stop[0]"),
        ("request_id with a space", dict(ok, request_id="a b"), "request_id"),
        ("request_id of 129 characters", dict(ok, request_id="r" * 129), "request_id"),
        ("request_id not ASCII", dict(ok, request_id="idé"), "request_id"),
    ]


class BadRequests(ServerTestCase):
    SERVER_ARGS = ("--max-batch", "2", "--queue-size", "4", "--ctx-per-slot", str(CTX))

    def generate_raw(self, payload, timeout=10):
        call = self.server.channel.unary_stream(
            "/m40llm.v1.Inference/Generate", request_serializer=None,
            response_deserializer=h.pb.GenerateResponse.FromString)
        s = h.Stream()
        try:
            s.messages = list(call(payload, timeout=timeout))
            s.code = h.grpc.StatusCode.OK
        except h.grpc.RpcError as e:
            s.code, s.details = e.code(), e.details() or ""
        return s

    def counted(self, status):
        return self.server.metric("m40llm_requests_total", status=status)

    def test_invalid_arguments(self):
        before = self.counted("invalid_argument")
        cases = bad_generate_requests()
        for name, kw, needle in cases:
            with self.subTest(name):
                s = h.generate(self.stub, h.pb.GenerateRequest(**kw), timeout=10)
                self.assertEqual(s.code, h.grpc.StatusCode.INVALID_ARGUMENT,
                                 f"{name}: {s.code} {s.details!r}")
                self.assertIn(needle, s.details, name)
                self.assertEqual(s.messages, [], name)
        # The same request id echo rules apply to refusals as to successes;
        # every refusal is counted.
        self.server.wait_metric("m40llm_requests_total", lambda v: v == before + len(cases),
                                status="invalid_argument")
        self.assertEqual(self.server.metric("m40llm_active_sequences"), 0)

    def test_invalid_utf8(self):
        base = h.pb.GenerateRequest(max_tokens=4)
        for name, payload, needle in [
            ("text", with_bytes_field(base, 1, INVALID_UTF8), "text is not valid UTF-8"),
            ("stop", with_bytes_field(h.pb.GenerateRequest(text="hi", max_tokens=4), 15,
                                      INVALID_UTF8), "stop[0] is not valid UTF-8"),
            ("overlong", with_bytes_field(base, 1, b"\xc0\xaf"), "text is not valid UTF-8"),
            ("not a GenerateRequest", b"\xff\xff\xff\xff", ""),
        ]:
            with self.subTest(name):
                s = self.generate_raw(payload)
                self.assertEqual(s.code, h.grpc.StatusCode.INVALID_ARGUMENT,
                                 f"{name}: {s.code} {s.details!r}")
                self.assertIn(needle, s.details)
        # The check is not a false alarm: the same bytes as valid UTF-8 work.
        s = self.generate_raw(with_bytes_field(base, 1, "café".encode()))
        self.assertCode(s, h.grpc.StatusCode.OK)
        self.assertEqual(sum(len(m.token_ids) for m in s.messages), 4)

        tokenize = self.server.channel.unary_unary(
            "/m40llm.v1.Inference/Tokenize", request_serializer=None,
            response_deserializer=h.pb.TokenizeResponse.FromString)
        with self.assertRaises(h.grpc.RpcError) as e:
            tokenize(with_bytes_field(h.pb.TokenizeRequest(), 1, INVALID_UTF8), timeout=10)
        self.assertCode(e.exception, h.grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("text is not valid UTF-8", e.exception.details())
        ok = tokenize(with_bytes_field(h.pb.TokenizeRequest(add_special=False), 1, b"abc"),
                      timeout=10)
        self.assertGreater(len(ok.ids), 0)

    def test_detokenize_unknown_ids(self):
        for ids, needle in (([1, 2, -3], "ids[2] = -3"), ([N_VOCAB], f"ids[0] = {N_VOCAB}")):
            with self.assertRaises(h.grpc.RpcError) as e:
                self.stub.Detokenize(h.pb.DetokenizeRequest(ids=ids), timeout=10)
            self.assertCode(e.exception, h.grpc.StatusCode.INVALID_ARGUMENT)
            self.assertIn(needle, e.exception.details())

    def test_context_limit(self):
        info = self.stub.GetModelInfo(h.pb.GetModelInfoRequest(), timeout=10)
        self.assertEqual(info.ctx_per_slot, CTX)
        prompt = list(self.stub.Tokenize(h.pb.TokenizeRequest(text="Once upon a time"),
                                         timeout=10).ids)
        room = CTX - len(prompt)
        self.assertGreater(room, 1)
        before = self.counted("out_of_range")

        # One token too many: OUT_OF_RANGE, naming the context.
        s = h.generate(self.stub, h.pb.GenerateRequest(text="Once upon a time",
                                                       max_tokens=room + 1), timeout=10)
        self.assertCode(s, h.grpc.StatusCode.OUT_OF_RANGE)
        self.assertIn(str(CTX), s.details)
        # A prompt filling the whole context, max_tokens unset: OUT_OF_RANGE.
        s = h.generate(self.stub, h.pb.GenerateRequest(tokens=h.pb.TokenIds(ids=[5] * CTX)),
                       timeout=10)
        self.assertCode(s, h.grpc.StatusCode.OUT_OF_RANGE)
        self.server.wait_metric("m40llm_requests_total", lambda v: v == before + 2,
                                status="out_of_range")

        # Exactly full: fine, every position used.
        s = h.generate(self.stub, h.pb.GenerateRequest(text="Once upon a time", max_tokens=room,
                                                       ignore_eos=True), timeout=30)
        self.assertCode(s, h.grpc.StatusCode.OK)
        self.assertEqual(len(s.tokens), room)
        self.assertEqual(s.last.finish_reason, h.pb.FINISH_REASON_LENGTH)
        # max_tokens unset: min(256, what fits).
        s = h.generate(self.stub, h.pb.GenerateRequest(text="Once upon a time", ignore_eos=True),
                       timeout=30)
        self.assertCode(s, h.grpc.StatusCode.OK)
        self.assertEqual(len(s.tokens), room)


class StartupErrors(unittest.TestCase):
    """`m40llm serve` refuses to start, with exit code 1 and a message, on a
    taken port, a bad flag or a missing model."""

    def serve(self, *args):
        env = dict(os.environ, M40LLM_CACHE_DIR=os.path.join(h.WORK_DIR, "startup-cache"))
        return subprocess.run([h.BINARY, "serve", *args], capture_output=True, text=True,
                              timeout=30, env=env)

    def test_refuses_to_start(self):
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            for args, needle in [
                # Taken ports: one line, before the model loads.
                (["--listen", f"127.0.0.1:{port}", "--metrics-listen", "127.0.0.1:0"],
                 f"cannot listen on 127.0.0.1:{port} (--listen): Address already in use"),
                (["--listen", "127.0.0.1:0", "--metrics-listen", f"127.0.0.1:{port}"],
                 f"cannot listen on 127.0.0.1:{port} (--metrics-listen): Address already in use"),
                (["--listen", "127.0.0.1:0", "--max-batch", "0"], "--max-batch"),
                (["--listen", "127.0.0.1:0", "--model", "/nonexistent/m.gguf"],
                 "/nonexistent/m.gguf"),
            ]:
                with self.subTest(args=args):
                    p = self.serve(*args)
                    self.assertEqual(p.returncode, 1, p.stderr)
                    self.assertIn(needle, p.stderr)
                    if "Address already in use" in needle:
                        self.assertEqual(len(p.stderr.strip().splitlines()), 1, p.stderr)


if __name__ == "__main__":
    h.main()
