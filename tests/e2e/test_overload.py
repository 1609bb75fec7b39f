#!/usr/bin/python3
"""End-to-end: more simultaneous requests than slots + queue places on the
real `m40llm serve`: the excess gets RESOURCE_EXHAUSTED at once, the rest
complete, and the server serves normally afterwards."""
import threading
import time

import harness as h
from harness import ServerTestCase

MAX_BATCH, QUEUE = 2, 2
N = 12
TOKENS = 1000  # long enough that no request ends before all N have arrived


class Overload(ServerTestCase):
    SERVER_ARGS = ("--max-batch", str(MAX_BATCH), "--queue-size", str(QUEUE),
                   "--ctx-per-slot", "2048")

    def setUp(self):
        self.server.wait_metric("m40llm_active_sequences", lambda v: v == 0, timeout=30)
        self.server.wait_metric("m40llm_queue_depth", lambda v: v == 0, timeout=30)
        self.before = self.server.metrics()

    def one(self, i, ends):
        s = h.generate(self.stub, h.pb.GenerateRequest(
            text=f"overload {i}", max_tokens=TOKENS, ignore_eos=True, seed=i), timeout=60)
        ends[i] = time.monotonic()
        return s

    def burst(self, first=0):
        """Requests first..N-1 at once; returns (results, end times, start)."""
        ends = [None] * N
        t0 = time.monotonic()
        results = h.run_threads([lambda i=i: self.one(i, ends) for i in range(first, N)],
                                timeout=90)
        return results, ends[first:], t0

    def check_outcome(self, results, ends, t0, expect_ok):
        codes = [s.code for s in results]
        ok = [i for i, s in enumerate(results) if s.code == h.grpc.StatusCode.OK]
        refused = [i for i, s in enumerate(results)
                   if s.code == h.grpc.StatusCode.RESOURCE_EXHAUSTED]
        self.assertEqual(len(ok) + len(refused), len(results), f"unexpected codes: {codes}")
        if expect_ok is not None:
            self.assertEqual(len(ok), expect_ok, f"codes: {codes}")
        for i in ok:
            self.assertEqual(len(results[i].tokens), TOKENS, f"request {i}")
            self.assertEqual(results[i].last.finish_reason, h.pb.FINISH_REASON_LENGTH)
        first_ok_end = min(ends[i] for i in ok)
        for i in refused:
            s = results[i]
            self.assertEqual(s.tokens, [])
            self.assertIn("queue is full", s.details)
            # Refused on arrival, not after waiting for a slot.
            self.assertLess(ends[i], first_ok_end, f"request {i} was refused late")
            self.assertLess(ends[i] - t0, 5)
        return ok, refused

    def check_counted_and_recovered(self, n_ok, n_refused):
        after = self.server.metrics()
        for status, n in (("resource_exhausted", n_refused), ("ok", n_ok)):
            self.assertEqual(after.get_value("m40llm_requests_total", status=status)
                             - self.before.get_value("m40llm_requests_total", status=status), n,
                             status)
        # The slot is freed when the decoder confirms the finish, a moment
        # after the client has its last message.
        self.server.wait_metric("m40llm_active_sequences", lambda v: v == 0, timeout=5)
        self.server.wait_metric("m40llm_queue_depth", lambda v: v == 0, timeout=5)
        s = h.generate(self.stub, h.pb.GenerateRequest(text="after", max_tokens=4,
                                                       ignore_eos=True), timeout=30)
        self.assertCode(s, h.grpc.StatusCode.OK)
        self.assertEqual(len(s.tokens), 4)

    def test_excess_requests_are_refused(self):
        # Fill the slots first, then N - MAX_BATCH more at once: exactly
        # QUEUE of them wait, the rest are refused.
        ends = [None] * N
        first = [None] * MAX_BATCH
        threads = [threading.Thread(target=lambda i=i: first.__setitem__(i, self.one(i, ends)),
                                    daemon=True) for i in range(MAX_BATCH)]
        for t in threads:
            t.start()
        self.server.wait_metric("m40llm_active_sequences", lambda v: v == MAX_BATCH, timeout=10)
        rest, rest_ends, t0 = self.burst(first=MAX_BATCH)
        for t in threads:
            t.join(60)
        self.assertTrue(all(r is not None for r in first), "the first requests did not finish")
        results, ends = first + rest, ends[:MAX_BATCH] + rest_ends
        ok, refused = self.check_outcome(results, ends, t0, MAX_BATCH + QUEUE)
        self.assertEqual(ok[:MAX_BATCH], list(range(MAX_BATCH)), "the requests in the slots")
        # The queued ones (whichever of the burst came first) waited for a slot.
        waited = [results[i].last.timings.queue_seconds for i in ok[MAX_BATCH:]]
        self.assertTrue(all(w > 0.1 for w in waited), waited)
        self.check_counted_and_recovered(len(ok), len(refused))

    def test_simultaneous_burst(self):
        # All N at once. How many are admitted depends on how fast the
        # prefill worker moves queued requests into free slots (see
        # test_burst_admits_slots_plus_queue), between QUEUE and MAX_BATCH + QUEUE.
        results, ends, t0 = self.burst()
        ok, refused = self.check_outcome(results, ends, t0, None)
        self.assertGreaterEqual(len(ok), QUEUE)
        self.assertLessEqual(len(ok), MAX_BATCH + QUEUE)
        self.check_counted_and_recovered(len(ok), len(refused))

    def test_burst_admits_slots_plus_queue(self):
        for _ in range(3):
            results, ends, t0 = self.burst()
            self.check_outcome(results, ends, t0, MAX_BATCH + QUEUE)
            self.server.wait_metric("m40llm_active_sequences", lambda v: v == 0, timeout=30)


if __name__ == "__main__":
    h.main()
