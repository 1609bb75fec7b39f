#!/usr/bin/python3
"""End-to-end: 64 concurrent Generate streams on the real `m40llm serve`
give exactly the tokens each request gives alone (continuous batching must
not change results), and the server really batched them."""
import harness as h
from harness import ServerTestCase

N = 64
MAX_BATCH = 8


def make_request(i):
    """Request i: its own prompt, seed, length and sampling settings."""
    kw = dict(text=f"Request {i}: once upon a time in a land far away",
              seed=1000 + 17 * i, max_tokens=8 + (i * 13) % 41, ignore_eos=True,
              request_id=f"conc-{i}")
    if i % 4 == 1:
        kw.update(temperature=0.7, top_k=40)
    elif i % 4 == 2:
        kw.update(temperature=1.2, top_p=0.9, min_p=0.02, repetition_penalty=1.1)
    elif i % 4 == 3:
        kw.update(temperature=0)  # greedy
    return h.pb.GenerateRequest(**kw)


class Concurrency(ServerTestCase):
    SERVER_ARGS = ("--max-batch", str(MAX_BATCH), "--queue-size", "64", "--ctx-per-slot", "256")

    def check_complete(self, i, s):
        req = make_request(i)
        self.assertEqual(s.code, h.grpc.StatusCode.OK, f"request {i}: {s.details}")
        self.assertEqual(len(s.tokens), req.max_tokens, f"request {i}")
        self.assertEqual(s.last.finish_reason, h.pb.FINISH_REASON_LENGTH, f"request {i}")
        self.assertEqual(s.last.usage.completion_tokens, req.max_tokens, f"request {i}")
        self.assertEqual(s.last.seed, req.seed)
        self.assertTrue(all(m.request_id == req.request_id for m in s.messages), f"request {i}")

    def test_concurrent_streams_match_sequential(self):
        alone = []
        for i in range(N):
            s = h.generate(self.stub, make_request(i), timeout=30)
            self.check_complete(i, s)
            alone.append(s)
        self.assertGreater(len({tuple(s.tokens) for s in alone}), N // 2,
                           "requests with different seeds should differ")

        before = self.server.metrics()
        together = h.run_threads(
            [lambda i=i: h.generate(self.stub, make_request(i), timeout=60) for i in range(N)],
            timeout=90)
        for i, s in enumerate(together):
            self.check_complete(i, s)
            self.assertEqual(s.tokens, alone[i].tokens,
                             f"request {i}: tokens differ when run with {N - 1} others")
            self.assertEqual(s.text, alone[i].text, f"request {i}")

        # The concurrent run batched: some decode steps carried more than
        # 4 sequences, none more than --max-batch.
        after = self.server.metrics()

        def delta(le=None):
            name = "m40llm_decode_batch_size_" + ("count" if le is None else "bucket")
            labels = {} if le is None else {"le": le}
            return after.get_value(name, **labels) - before.get_value(name, **labels)
        steps = delta()
        self.assertGreater(steps, 0)
        self.assertLess(delta("4"), steps, "no decode step had more than 4 sequences")
        self.assertEqual(delta("8"), steps, f"a decode step exceeded --max-batch {MAX_BATCH}")
        generated = (after.get_value("m40llm_generated_tokens_total")
                     - before.get_value("m40llm_generated_tokens_total"))
        self.assertEqual(generated, sum(make_request(i).max_tokens for i in range(N)))
        self.assertEqual(after.get_value("m40llm_requests_total", status="ok")
                         - before.get_value("m40llm_requests_total", status="ok"), N)
        self.server.wait_metric("m40llm_active_sequences", lambda v: v == 0, timeout=5)
        self.server.wait_metric("m40llm_queue_depth", lambda v: v == 0, timeout=5)


if __name__ == "__main__":
    h.main()
