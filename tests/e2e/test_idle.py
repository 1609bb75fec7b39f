#!/usr/bin/python3
"""End-to-end: an idle `m40llm serve` (model loaded, no requests) uses under
1% of one core: its threads block instead of polling. Measured from the
process's own CPU time in /proc over 10 s, after one request has warmed
everything up; the figure is printed."""
import os
import time
import unittest

import harness as h
from harness import ServerTestCase

IDLE_SECONDS = 10


def cpu_seconds(pid):
    """User + system CPU time of process `pid` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After the command name: state is field 3, utime 14, stime 15 (1-based).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Idle(ServerTestCase):
    def test_idle_server_uses_under_one_percent_of_a_core(self):
        s = h.generate(self.stub, h.pb.GenerateRequest(text="warm up", max_tokens=8))
        self.assertCode(s, h.grpc.StatusCode.OK)
        time.sleep(1)  # let the stream's last work settle
        pid = self.server.proc.pid
        t0, c0 = time.monotonic(), cpu_seconds(pid)
        time.sleep(IDLE_SECONDS)
        t1, c1 = time.monotonic(), cpu_seconds(pid)
        share = (c1 - c0) / (t1 - t0)
        print(f"idle CPU: {100 * share:.2f}% of one core over {t1 - t0:.1f} s "
              f"({c1 - c0:.2f} s of CPU time)", flush=True)
        self.assertLess(share, 0.01)


if __name__ == "__main__":
    h.main()
