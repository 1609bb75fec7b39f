#!/usr/bin/python3
"""End-to-end: a Node.js client (@grpc/grpc-js, the .proto loaded by
@grpc/proto-loader; tests/e2e/node/stream.js) streams Generate from the real
`m40llm serve` and gets the same tokens as the Python client.

The npm packages are installed into tests/e2e/node/node_modules from the
committed package-lock.json (`npm ci`) when missing or not matching it."""
import fcntl
import json
import os
import subprocess

import harness as h
from harness import ServerTestCase

NODE_DIR = os.path.join(h.E2E_DIR, "node")


def installed_matches_lock():
    """True when node_modules holds exactly the versions package-lock.json names."""
    with open(os.path.join(NODE_DIR, "package-lock.json")) as f:
        lock = json.load(f)
    for path, meta in lock["packages"].items():
        if not path:
            continue  # the root project
        try:
            with open(os.path.join(NODE_DIR, path, "package.json")) as f:
                if json.load(f).get("version") != meta.get("version"):
                    return False
        except (OSError, ValueError):
            return False
    return True


def need_node_packages():
    h.need_program("node")
    npm = h.need_program("npm")
    with open(os.path.join(NODE_DIR, "node_modules.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if installed_matches_lock():
            return
        # --ignore-scripts: the packages need no install scripts.
        p = subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
                           cwd=NODE_DIR, capture_output=True, text=True, timeout=300)
        if p.returncode != 0 or not installed_matches_lock():
            raise h.MissingTool(f"npm ci in {NODE_DIR} failed (exit {p.returncode}; is the "
                                f"npm registry reachable?):\n{p.stdout[-2000:]}{p.stderr[-2000:]}")


class NodeClient(ServerTestCase):
    SERVER_ARGS = ("--max-batch", "2", "--ctx-per-slot", "512")

    def node(self, *args, timeout=60):
        p = subprocess.run([h.need_program("node"), os.path.join(NODE_DIR, "stream.js"),
                            "--addr", self.server.addr,
                            "--proto-root", os.path.join(h.REPO, "proto"), *args],
                           capture_output=True, text=True, timeout=timeout)
        lines = p.stdout.strip().splitlines()
        self.assertTrue(lines, f"stream.js printed nothing; stderr:\n{p.stderr}")
        return p.returncode, json.loads(lines[-1]), p.stderr

    def test_node_stream(self):
        code, out, err = self.node("--max-tokens", "40", "--seed", "7")
        self.assertEqual(code, 0, f"{out}\n{err}")
        self.assertTrue(out["ok"], out)
        self.assertEqual(len(out["tokens"]), 40)
        self.assertEqual(out["finish_reason"], "FINISH_REASON_LENGTH")
        self.assertEqual(out["usage"]["completion_tokens"], 40)
        # The Python client, same request: same tokens and text.
        s = h.generate(self.stub, h.pb.GenerateRequest(
            text="Once upon a time", max_tokens=40, ignore_eos=True, seed=7, temperature=0.8),
            timeout=30)
        self.assertCode(s, h.grpc.StatusCode.OK)
        self.assertEqual(out["tokens"], s.tokens)
        self.assertEqual(out["text"], s.text)

    def test_node_reports_errors(self):
        # The script itself fails on an error status (here max_tokens 0).
        code, out, _ = self.node("--max-tokens", "0")
        self.assertEqual(code, 1)
        self.assertFalse(out["ok"])
        self.assertEqual(out["code"], 3)  # INVALID_ARGUMENT
        self.assertIn("max_tokens", out["details"])


if __name__ == "__main__":
    h.main(needs=[need_node_packages])
