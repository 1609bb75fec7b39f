#!/usr/bin/python3
"""End-to-end: SIGTERM drains the real `m40llm serve`: health turns
NOT_SERVING, new requests get UNAVAILABLE, running and queued streams finish
normally (or get UNAVAILABLE when the drain timeout runs out) and the
process exits 0."""
import signal
import threading
import time
import unittest

import harness as h

class BackgroundStream:
    """A Generate stream read on its own thread; `started` is set at the
    first message."""

    def __init__(self, stub, request, timeout=60):
        self.started = threading.Event()
        self.result = None
        self.thread = threading.Thread(target=self._run, args=(stub, request, timeout),
                                       daemon=True)
        self.thread.start()

    def _run(self, stub, request, timeout):
        self.result = h.generate(stub, request, timeout=timeout,
                                 on_message=lambda s, m: self.started.set())
        self.started.set()

    def done(self):
        return not self.thread.is_alive()

    def join(self, timeout):
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise AssertionError(f"stream still running after {timeout} s")
        return self.result


class Drain(unittest.TestCase):
    def start(self, *args):
        server = h.Server(*args, name=self.id().split(".")[-1]).start()
        self.addCleanup(server.stop, signal.SIGKILL, 5)
        return server

    def long(self, n, **kw):
        return h.pb.GenerateRequest(text="Once upon a time", max_tokens=n, ignore_eos=True, **kw)

    def wait_started(self, stream):
        self.assertTrue(stream.started.wait(10), "the stream produced no message in 10 s")
        if stream.done():
            self.fail(f"the stream ended early: {stream.result.code} {stream.result.details}")

    def wait_not_serving(self, server):
        def status():
            try:
                return (server.health_status(""), server.health_status("m40llm.v1.Inference"))
            except h.grpc.RpcError as e:
                return e.code()
        want = (h.health_pb2.HealthCheckResponse.NOT_SERVING,) * 2
        seen = []
        h.wait_until(lambda: seen.append(status()) or seen[-1] == want, 5,
                     what=lambda: f"NOT_SERVING for '' and m40llm.v1.Inference ({seen[-3:]})")

    def assert_exits_zero(self, server, within):
        # An idle client connection holds gRPC's Server::Shutdown for its
        # whole 5 s grace period; close ours, as a finished client would.
        server.channel.close()
        try:
            code = server.proc.wait(timeout=within)
        except Exception:
            raise AssertionError(f"server still running {within} s after the drain:\n"
                                 f"{h.log_tail(server.log_path)}") from None
        self.assertEqual(code, 0, h.log_tail(server.log_path))

    def test_sighup_is_logged_and_ignored(self):
        server = self.start()
        server.proc.send_signal(signal.SIGHUP)
        h.wait_until(lambda: "received SIGHUP" in server.log(), 5, what="the SIGHUP log line")
        self.assertIsNone(server.proc.poll(), "SIGHUP must not end the server")
        self.assertEqual(server.health_status(""), h.health_pb2.HealthCheckResponse.SERVING)
        s = h.generate(server.inference, self.long(4))
        self.assertEqual(s.code, h.grpc.StatusCode.OK, s.details)
        self.assertEqual(len(s.tokens), 4)

    def test_busy_port_is_one_line_before_the_model_loads(self):
        server = self.start()
        p = h.subprocess.run([h.BINARY, "serve", "--listen", server.addr, "--metrics-listen", ""],
                             capture_output=True, text=True, timeout=60,
                             env={**h.os.environ, "M40LLM_CACHE_DIR": server.dir})
        self.assertEqual(p.returncode, 1, p.stderr)
        lines = [l for l in p.stderr.splitlines() if l.strip()]
        self.assertEqual(len(lines), 1, p.stderr)
        self.assertIn(f"cannot listen on {server.addr} (--listen)", lines[0])
        self.assertIn("in use", lines[0])

    def test_sigterm_drains_running_and_queued(self):
        server = self.start("--max-batch", "1", "--queue-size", "4", "--ctx-per-slot", "4096",
                            "--drain-timeout", "30")
        running = BackgroundStream(server.inference, self.long(2500, seed=1))
        self.wait_started(running)
        queued = BackgroundStream(server.inference, self.long(200, seed=2))
        server.wait_metric("m40llm_queue_depth", lambda v: v == 1, timeout=5)

        watch = server.health.Watch(h.health_pb2.HealthCheckRequest(), timeout=20)
        self.addCleanup(watch.cancel)
        self.assertEqual(next(watch).status, h.health_pb2.HealthCheckResponse.SERVING)

        server.proc.send_signal(signal.SIGTERM)
        t_term = time.monotonic()
        self.wait_not_serving(server)
        # A Watch in progress hears about it.
        self.assertEqual(next(watch).status, h.health_pb2.HealthCheckResponse.NOT_SERVING)
        watch.cancel()  # else it holds gRPC's shutdown for its 5 s grace period
        s = h.generate(server.inference, self.long(4), timeout=10)
        self.assertEqual(s.code, h.grpc.StatusCode.UNAVAILABLE, s.details)
        self.assertIn("draining", s.details)
        s = h.generate(server.inference, self.long(4), timeout=10)
        self.assertEqual(s.code, h.grpc.StatusCode.UNAVAILABLE, s.details)
        # /metrics still answers while draining: the refusals are counted.
        m = server.metrics()
        self.assertEqual(m.get_value("m40llm_requests_total", status="unavailable"), 2)
        self.assertEqual(m.get_value("m40llm_active_sequences"), 1)
        # These checks ran while the first stream was still decoding.
        self.assertFalse(running.done(), "the running stream ended before the checks; "
                         "make it longer")
        # Unary calls still work while draining.
        self.assertGreater(len(server.inference.Tokenize(h.pb.TokenizeRequest(text="hi"),
                                                         timeout=5).ids), 0)

        for stream, n in ((running, 2500), (queued, 200)):
            r = stream.join(30)
            self.assertEqual(r.code, h.grpc.StatusCode.OK, r.details)
            self.assertEqual(len(r.tokens), n)
            self.assertEqual(r.last.finish_reason, h.pb.FINISH_REASON_LENGTH)
        self.assert_exits_zero(server, 15)
        self.assertLess(time.monotonic() - t_term, 30)
        log = server.log()
        self.assertIn("draining: 1 running, 1 queued", log)
        self.assertEqual(log.count("status=UNAVAILABLE"), 2, "the two refused requests")

    def test_drain_timeout_ends_streams_unavailable(self):
        server = self.start("--max-batch", "1", "--ctx-per-slot", "8192", "--drain-timeout", "1")
        running = BackgroundStream(server.inference, self.long(8000))
        self.wait_started(running)
        server.proc.send_signal(signal.SIGTERM)
        t_term = time.monotonic()
        r = running.join(15)
        waited = time.monotonic() - t_term
        self.assertEqual(r.code, h.grpc.StatusCode.UNAVAILABLE, r.details)
        self.assertGreater(len(r.tokens), 0)
        self.assertLess(len(r.tokens), 8000)
        self.assertGreater(waited, 0.8, "ended before the 1 s drain timeout")
        self.assertLess(waited, 8)
        self.assert_exits_zero(server, 15)

    def test_second_signal_stops_waiting(self):
        server = self.start("--max-batch", "1", "--ctx-per-slot", "8192", "--drain-timeout", "60")
        running = BackgroundStream(server.inference, self.long(8000))
        self.wait_started(running)
        server.proc.send_signal(signal.SIGTERM)
        self.wait_not_serving(server)
        server.proc.send_signal(signal.SIGINT)
        t = time.monotonic()
        r = running.join(15)
        self.assertEqual(r.code, h.grpc.StatusCode.UNAVAILABLE, r.details)
        self.assertLess(time.monotonic() - t, 5)
        self.assert_exits_zero(server, 15)
        self.assertIn("second signal", server.log())


if __name__ == "__main__":
    h.main()
