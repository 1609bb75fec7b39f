#!/usr/bin/python3
"""End-to-end: cancellation and deadlines free the slot (or the queue entry)
of the real `m40llm serve`, as /metrics shows."""
import time

import harness as h
from harness import ServerTestCase

LONG = 8000  # tokens; ~15 s of decoding on the demo model, far more than any test waits


class Cancellation(ServerTestCase):
    # One slot, so a second request has to queue.
    SERVER_ARGS = ("--max-batch", "1", "--queue-size", "4", "--ctx-per-slot", "8192")

    def setUp(self):
        # Every test starts from an idle server.
        self.server.wait_metric("m40llm_active_sequences", lambda v: v == 0, timeout=10)
        self.server.wait_metric("m40llm_queue_depth", lambda v: v == 0, timeout=10)

    def long_request(self, **kw):
        return h.pb.GenerateRequest(text="Once upon a time", max_tokens=LONG, ignore_eos=True,
                                    **kw)

    def start_running(self, min_tokens=1, timeout=60):
        """Starts a long stream and reads until min_tokens have arrived.
        Returns (call, tokens received so far)."""
        call = self.stub.Generate(self.long_request(), timeout=timeout)
        self.addCleanup(call.cancel)  # a failing test leaves the slot free
        got = 0
        for m in call:
            got += len(m.token_ids)
            if got >= min_tokens:
                break
        self.assertGreaterEqual(got, min_tokens)
        return call, got

    def counters(self):
        m = self.server.metrics()
        return {s: m.get_value("m40llm_requests_total", status=s)
                for s in ("ok", "cancelled", "deadline_exceeded")}, m

    def assert_generation_stopped(self, before_tokens):
        """Generated tokens stop growing, well short of LONG."""
        g1 = self.server.metric("m40llm_generated_tokens_total")
        time.sleep(0.3)
        g2 = self.server.metric("m40llm_generated_tokens_total")
        self.assertEqual(g1, g2, "tokens are still being generated after the call ended")
        self.assertLess(g2 - before_tokens, LONG)

    def test_cancel_running_stream(self):
        counts, m = self.counters()
        tokens0 = m.get_value("m40llm_generated_tokens_total")
        call, got = self.start_running(min_tokens=20)
        self.assertEqual(self.server.metric("m40llm_active_sequences"), 1)
        call.cancel()
        with self.assertRaises(h.grpc.RpcError) as e:
            for _ in call:
                pass
        self.assertCode(e.exception, h.grpc.StatusCode.CANCELLED)
        t0 = time.monotonic()
        self.server.wait_metric("m40llm_active_sequences", lambda v: v == 0, timeout=5)
        self.assertLess(time.monotonic() - t0, 5)
        self.server.wait_metric("m40llm_requests_total",
                                lambda v: v == counts["cancelled"] + 1, status="cancelled")
        self.assertEqual(self.server.metric("m40llm_kv_cache_usage_ratio"), 0)
        self.assert_generation_stopped(tokens0)
        # The freed slot serves the next request.
        s = h.generate(self.stub, h.pb.GenerateRequest(text="hi", max_tokens=5, ignore_eos=True),
                       timeout=30)
        self.assertCode(s, h.grpc.StatusCode.OK)
        self.assertEqual(len(s.tokens), 5)

    def test_cancel_queued_request(self):
        counts, _ = self.counters()
        running, _ = self.start_running()
        queued = self.stub.Generate(self.long_request(), timeout=60)
        self.addCleanup(queued.cancel)
        self.server.wait_metric("m40llm_queue_depth", lambda v: v == 1, timeout=5)
        queued.cancel()
        self.server.wait_metric("m40llm_queue_depth", lambda v: v == 0, timeout=5)
        self.server.wait_metric("m40llm_requests_total",
                                lambda v: v == counts["cancelled"] + 1, status="cancelled")
        # The running request is untouched.
        self.assertEqual(self.server.metric("m40llm_active_sequences"), 1)
        more = next(running)
        self.assertIsNotNone(more)
        running.cancel()
        self.server.wait_metric("m40llm_active_sequences", lambda v: v == 0, timeout=5)
        self.server.wait_metric("m40llm_requests_total",
                                lambda v: v == counts["cancelled"] + 2, status="cancelled")

    def counted_once(self, before, what):
        """The request ended as deadline_exceeded or cancelled, once (which
        of the two is racy: see test_deadline_label)."""
        total = lambda c: c["deadline_exceeded"] + c["cancelled"]  # noqa: E731
        h.wait_until(lambda: total(self.counters()[0]) >= total(before) + 1, 5, what=what)
        time.sleep(0.1)
        self.assertEqual(total(self.counters()[0]), total(before) + 1)

    def test_deadline_while_decoding(self):
        counts, m = self.counters()
        tokens0 = m.get_value("m40llm_generated_tokens_total")
        t0 = time.monotonic()
        s = h.generate(self.stub, self.long_request(), timeout=0.5)
        elapsed = time.monotonic() - t0
        self.assertCode(s, h.grpc.StatusCode.DEADLINE_EXCEEDED)
        self.assertLess(elapsed, 3, "the deadline should end the call promptly")
        self.assertGreater(len(s.tokens), 0, "tokens decoded before the deadline are delivered")
        self.assertTrue(all(msg.finish_reason == h.pb.FINISH_REASON_UNSPECIFIED
                            for msg in s.messages))
        self.server.wait_metric("m40llm_active_sequences", lambda v: v == 0, timeout=5)
        self.assert_generation_stopped(tokens0)
        self.counted_once(counts, "the expired request to be counted")

    def test_deadline_while_queued(self):
        running, _ = self.start_running()
        counts, _ = self.counters()
        t0 = time.monotonic()
        s = h.generate(self.stub, self.long_request(), timeout=0.5)
        self.assertCode(s, h.grpc.StatusCode.DEADLINE_EXCEEDED)
        self.assertLess(time.monotonic() - t0, 3)
        self.assertEqual(s.tokens, [])
        self.server.wait_metric("m40llm_queue_depth", lambda v: v == 0, timeout=5)
        self.counted_once(counts, "the expired request to be counted")
        self.assertEqual(self.server.metric("m40llm_active_sequences"), 1,
                         "the running request is untouched")
        running.cancel()
        self.server.wait_metric("m40llm_active_sequences", lambda v: v == 0, timeout=5)

    def test_tiny_deadline(self):
        tokens0 = self.server.metric("m40llm_generated_tokens_total")
        t0 = time.monotonic()
        s = h.generate(self.stub, self.long_request(), timeout=0.05)
        self.assertCode(s, h.grpc.StatusCode.DEADLINE_EXCEEDED)
        self.assertLess(time.monotonic() - t0, 2)
        self.server.wait_metric("m40llm_active_sequences", lambda v: v == 0, timeout=5)
        self.assert_generation_stopped(tokens0)

    def test_deadline_label(self):
        # docs/metrics.md: requests_total counts by final status, and the
        # client (and the access log) see DEADLINE_EXCEEDED.
        for queued in (True, False, True, False, True):
            running = self.start_running()[0] if queued else None
            counts, _ = self.counters()
            s = h.generate(self.stub, self.long_request(), timeout=0.3)
            self.assertCode(s, h.grpc.StatusCode.DEADLINE_EXCEEDED)
            self.counted_once(counts, "the expired request to be counted")
            after, _ = self.counters()
            self.assertEqual(after["deadline_exceeded"], counts["deadline_exceeded"] + 1,
                             f"queued={queued}: requests_total before {counts}, after {after}")
            if running is not None:
                running.cancel()
            self.server.wait_metric("m40llm_active_sequences", lambda v: v == 0, timeout=5)


if __name__ == "__main__":
    h.main()
