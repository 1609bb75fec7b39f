#!/usr/bin/python3
"""End-to-end: a real Prometheus server (Debian's `prometheus`) scrapes the
metrics port of the real `m40llm serve` and reports the tokens it generated;
`promtool check metrics` finds nothing to complain about in /metrics."""
import json
import os
import subprocess
import urllib.parse
import urllib.request

import harness as h
from harness import ServerTestCase


def need_prometheus():
    h.need_program("prometheus")
    h.need_program("promtool")


class Prometheus(ServerTestCase):
    SERVER_ARGS = ("--max-batch", "2", "--ctx-per-slot", "256")

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        d = os.path.join(cls.server.dir, "prometheus")
        os.makedirs(d)
        config = os.path.join(d, "prometheus.yml")
        with open(config, "w") as f:
            f.write(f"""global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: m40llm
    static_configs:
      - targets: ["127.0.0.1:{cls.server.metrics_port}"]
""")
        cls.prom_port = h.free_port()
        cls.prom = h.spawn([
            h.need_program("prometheus"), f"--config.file={config}",
            f"--storage.tsdb.path={os.path.join(d, 'data')}",
            f"--web.listen-address=127.0.0.1:{cls.prom_port}",
            f"--web.console.templates={d}", f"--web.console.libraries={d}",
            "--log.level=warn"], os.path.join(d, "prometheus.log"))

        def ready():
            if cls.prom.poll() is not None:
                raise AssertionError(f"prometheus exited {cls.prom.returncode}:\n"
                                     f"{h.log_tail(cls.prom.log_path)}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{cls.prom_port}/-/ready",
                                            timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False
        h.wait_until(ready, 30, interval=0.2, what="prometheus /-/ready")

    @classmethod
    def tearDownClass(cls):
        h.stop_process(cls.prom, timeout=10)
        super().tearDownClass()

    def query(self, promql):
        """The instant query's samples as {frozenset(labels): float}."""
        url = (f"http://127.0.0.1:{self.prom_port}/api/v1/query?"
               + urllib.parse.urlencode({"query": promql}))
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.load(r)
        self.assertEqual(body["status"], "success", body)
        return {frozenset(s["metric"].items()): float(s["value"][1])
                for s in body["data"]["result"]}

    def wait_query(self, promql, want, timeout=30):
        seen = []

        def check():
            got = self.query(promql)
            values = sorted(got.values())
            if not seen or seen[-1] != values:
                seen.append(values)
            return values == [want]
        h.wait_until(check, timeout, interval=0.25,
                     what=lambda: f"{promql} == {want} in prometheus (seen {seen[-5:]})")

    def test_scraped_counters(self):
        before = self.server.metrics()
        counter = lambda name, **labels: before.get_value(name, **labels)  # noqa: E731
        lengths = [17, 30, 45]
        for i, n in enumerate(lengths):
            s = h.generate(self.stub, h.pb.GenerateRequest(text=f"prom {i}", max_tokens=n,
                                                           ignore_eos=True), timeout=30)
            self.assertCode(s, h.grpc.StatusCode.OK)
            self.assertEqual(len(s.tokens), n)
        bad = h.generate(self.stub, h.pb.GenerateRequest(text="x", top_p=2), timeout=10)
        self.assertCode(bad, h.grpc.StatusCode.INVALID_ARGUMENT)

        self.wait_query('up{job="m40llm"}', 1)
        self.wait_query("m40llm_generated_tokens_total",
                        counter("m40llm_generated_tokens_total") + sum(lengths))
        self.wait_query('m40llm_requests_total{status="ok"}',
                        counter("m40llm_requests_total", status="ok") + len(lengths))
        self.wait_query('m40llm_requests_total{status="invalid_argument"}',
                        counter("m40llm_requests_total", status="invalid_argument") + 1)
        self.wait_query("m40llm_time_to_first_token_seconds_count",
                        counter("m40llm_time_to_first_token_seconds_count") + len(lengths))
        self.wait_query("m40llm_inter_token_latency_seconds_count",
                        counter("m40llm_inter_token_latency_seconds_count")
                        + sum(n - 1 for n in lengths))
        self.wait_query("m40llm_active_sequences", 0)
        build = self.query("m40llm_build_info")
        self.assertEqual(len(build), 1, build)
        labels = dict(next(iter(build)))
        self.assertEqual(labels["backend"], "cpu")
        self.assertTrue(labels["version"])

    def test_promtool_check_metrics(self):
        # After some traffic, so that histograms have observations.
        s = h.generate(self.stub, h.pb.GenerateRequest(text="lint", max_tokens=5,
                                                       ignore_eos=True), timeout=30)
        self.assertCode(s, h.grpc.StatusCode.OK)
        text = self.server.metrics_text()
        self.assertIn("# TYPE m40llm_generated_tokens_total counter", text)
        p = subprocess.run([h.need_program("promtool"), "check", "metrics"], input=text,
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertEqual((p.stdout + p.stderr).strip(), "", "promtool reported problems")
        # promtool is not a rubber stamp: a counter without _total fails.
        p = subprocess.run([h.need_program("promtool"), "check", "metrics"],
                           input="# HELP x_bytes x\n# TYPE x_bytes counter\nx_bytes 1\n",
                           capture_output=True, text=True, timeout=30)
        self.assertNotEqual(p.returncode, 0)


if __name__ == "__main__":
    h.main(needs=[need_prometheus])
