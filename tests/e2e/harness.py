"""Harness for the end-to-end tests: runs the real `m40llm serve` binary on
loopback ports and talks to it with Debian's python3-grpcio.

Every test module is a script:

    /usr/bin/python3 tests/e2e/test_api.py --binary build/tools/m40llm [--work-dir DIR]

`main()` checks the tools the module needs (missing ones skip with exit code
77 and a reason, or fail where CI=true or M40LLM_REQUIRE_FIXTURES=1),
generates the Python stubs for proto/ with protoc and grpc_python_plugin into
the work directory, runs the module's unittest cases and stops every server
and helper process it started. Servers also die with the test process
(PR_SET_PDEATHSIG), so a test killed by ctest's timeout leaves nothing behind.
"""
import argparse
import contextlib
import ctypes
import fcntl
import importlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.request

SKIP = 77  # ctest SKIP_RETURN_CODE
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
E2E_DIR = os.path.join(REPO, "tests", "e2e")

# Set by init() (through setup() or main()) before the tests run.
BINARY = None
WORK_DIR = None
WATCHDOG = 240
pb = pb_grpc = health_pb2 = health_pb2_grpc = reflection_pb2 = reflection_pb2_grpc = None
grpc = None

_started = []  # every process started through spawn(), for the final cleanup


def tools_required():
    """True where a missing tool must fail the test instead of skipping it."""
    return os.environ.get("M40LLM_REQUIRE_FIXTURES") == "1" or os.environ.get("CI") == "true"


class MissingTool(Exception):
    """A tool or package the test needs is not installed."""


def need_program(name):
    """The path of program `name` on PATH; MissingTool when there is none."""
    found = shutil.which(name)
    if not found:
        raise MissingTool(f"{name} not found on PATH (scripts/install-deps.sh installs it)")
    return found


def need_python_grpc():
    """Imports grpcio and protobuf (MissingTool when absent)."""
    global grpc
    try:
        import grpc as grpc_module  # python3-grpcio
        importlib.import_module("google.protobuf")  # python3-protobuf
    except ImportError as e:
        raise MissingTool(f"{e} in {sys.executable}: install python3-grpcio and "
                          "python3-protobuf (scripts/install-deps.sh)") from None
    grpc = grpc_module


# --- Python stubs ------------------------------------------------------------

# (proto_path, file) pairs. health.proto and the reflection subset are
# compiled from their own folders so that the generated modules are top-level
# (health_pb2, reflection_pb2): a generated package named `grpc` would shadow
# grpcio itself. Service names on the wire come from the proto packages.
_PROTOS = [
    (os.path.join(REPO, "proto"), "m40llm/v1/m40llm.proto"),
    (os.path.join(REPO, "proto", "grpc", "health", "v1"), "health.proto"),
    (os.path.join(E2E_DIR, "proto"), "reflection.proto"),
]


def generate_stubs(out_dir):
    """Runs protoc + grpc_python_plugin into out_dir/py when a .proto is newer
    than the last run; safe when several tests do it at once."""
    protoc = need_program("protoc")
    plugin = need_program("grpc_python_plugin")
    py = os.path.join(out_dir, "py")
    os.makedirs(out_dir, exist_ok=True)
    stamp = os.path.join(py, ".stamp")
    newest = max(os.path.getmtime(os.path.join(d, f)) for d, f in _PROTOS)
    with open(os.path.join(out_dir, ".stubs.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(stamp) or os.path.getmtime(stamp) < newest:
            tmp = tempfile.mkdtemp(dir=out_dir, prefix="py.")
            for proto_path, f in _PROTOS:
                subprocess.run([protoc, f"--proto_path={proto_path}", f"--python_out={tmp}",
                                f"--grpc_python_out={tmp}",
                                f"--plugin=protoc-gen-grpc_python={plugin}", f],
                               check=True, timeout=60, cwd=proto_path)
            open(os.path.join(tmp, ".stamp"), "w").close()
            shutil.rmtree(py, ignore_errors=True)
            os.rename(tmp, py)
    return py


def load_stubs(work_dir):
    """Generates (when needed) and imports the stubs into this module's globals."""
    global pb, pb_grpc, health_pb2, health_pb2_grpc, reflection_pb2, reflection_pb2_grpc
    py = generate_stubs(work_dir)
    if py not in sys.path:
        sys.path.insert(0, py)
    from m40llm.v1 import m40llm_pb2, m40llm_pb2_grpc
    import health_pb2 as h, health_pb2_grpc as hg, reflection_pb2 as r, reflection_pb2_grpc as rg
    pb, pb_grpc = m40llm_pb2, m40llm_pb2_grpc
    health_pb2, health_pb2_grpc, reflection_pb2, reflection_pb2_grpc = h, hg, r, rg


# --- processes ---------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent():
    # PR_SET_PDEATHSIG = 1: SIGKILL this child when the test process dies.
    _libc.prctl(1, signal.SIGKILL, 0, 0, 0)


def spawn(args, log_path, env=None, cwd=None):
    """Starts a helper process whose stdout and stderr go to log_path."""
    log = open(log_path, "wb")
    p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         env=env, cwd=cwd, preexec_fn=_die_with_parent)
    log.close()
    p.log_path = log_path
    _started.append(p)
    return p


def stop_process(p, sig=signal.SIGTERM, timeout=15):
    """Signals p, waits up to timeout seconds, then SIGKILLs it. Returns its
    exit code (negative: killed by that signal)."""
    if p.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(sig)
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)
    return p.returncode


def log_tail(path, lines=40):
    """The last `lines` lines of a log file ("" when unreadable)."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout, interval=0.05, what="condition"):
    """Polls predicate() until it returns a true value (returned) or timeout
    seconds pass (AssertionError naming `what`, a string or a callable
    returning one, evaluated then)."""
    end = time.monotonic() + timeout
    last = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= end:
            what = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")
        time.sleep(interval)


# --- Prometheus text format --------------------------------------------------

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    """{(name, frozenset(label items)): value} for every sample line."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            raise AssertionError(f"unparsable metrics line: {line!r}")
        labels = frozenset(_LABEL.findall(m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


class Metrics(dict):
    """A parsed scrape with a convenient lookup."""

    def get_value(self, name, **labels):
        key = (name, frozenset((k, str(v)) for k, v in labels.items()))
        if key not in self:
            raise AssertionError(f"metric {name}{labels or ''} is not exported")
        return self[key]


def channel(addr, fresh=False):
    """An insecure channel to addr. fresh: with its own subchannel, so that
    it does not inherit the reconnect backoff (which grows to seconds) of
    earlier channels that found the server not listening yet."""
    options = [("grpc.use_local_subchannel_pool", 1)] if fresh else []
    return grpc.insecure_channel(addr, options=options)


# --- the server --------------------------------------------------------------

class Server:
    """One `m40llm serve` process on free 127.0.0.1 ports, with a private
    cache folder (the demo model is written there) and its log in a file."""

    def __init__(self, *extra_args, name="server", ready_timeout=60):
        self.extra_args = list(extra_args)
        self.name = name
        self.ready_timeout = ready_timeout
        self.dir = tempfile.mkdtemp(prefix=f"{name}.", dir=WORK_DIR)
        self.proc = None
        self.channel = None

    def start(self):
        """Starts the server and returns self once health says SERVING."""
        env = dict(os.environ)
        env["M40LLM_CACHE_DIR"] = os.path.join(self.dir, "cache")
        for k in list(env):
            if k.startswith("M40LLM_") and k not in ("M40LLM_CACHE_DIR",):
                del env[k]  # flags only: no surprises from the caller's environment
        for attempt in range(3):
            self.port, self.metrics_port = free_port(), free_port()
            self.addr = f"127.0.0.1:{self.port}"
            args = [BINARY, "serve", "--listen", self.addr,
                    "--metrics-listen", f"127.0.0.1:{self.metrics_port}"] + self.extra_args
            self.log_path = os.path.join(self.dir, f"serve.{attempt}.log")
            self.proc = spawn(args, self.log_path, env=env)
            try:
                self._wait_ready()
                break
            except AssertionError:
                code = stop_process(self.proc, signal.SIGKILL)
                # A port taken between free_port() and bind: try others.
                tail = log_tail(self.log_path, 5)
                if attempt < 2 and ("cannot listen" in tail or "cannot serve metrics" in tail):
                    continue
                raise AssertionError(f"server did not become ready (exit {code}):\n"
                                     f"{log_tail(self.log_path)}") from None
        self.channel = channel(self.addr)
        self.inference = pb_grpc.InferenceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        return self

    def _wait_ready(self):
        end = time.monotonic() + self.ready_timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError("server exited")
            with channel(self.addr, fresh=True) as ch:
                try:
                    r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(),
                                                             timeout=1)
                    if r.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
            time.sleep(0.05)
        raise AssertionError("timed out")

    def health_status(self, service="", timeout=2):
        return self.health.Check(health_pb2.HealthCheckRequest(service=service),
                                 timeout=timeout).status

    def metrics_text(self, timeout=5):
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.read().decode("utf-8")

    def metrics(self):
        return Metrics(parse_metrics(self.metrics_text()))

    def metric(self, name, **labels):
        return self.metrics().get_value(name, **labels)

    def wait_metric(self, name, predicate, timeout=10, **labels):
        """Polls /metrics until predicate(value) holds; returns the value."""
        end = time.monotonic() + timeout
        seen = []
        while True:
            v = self.metric(name, **labels)
            if not seen or seen[-1] != v:
                seen.append(v)
            if predicate(v):
                return v
            if time.monotonic() >= end:
                raise AssertionError(f"timed out after {timeout} s waiting on {name}"
                                     f"{labels or ''}; values seen: {seen[-8:]}")
            time.sleep(0.05)

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self, sig=signal.SIGTERM, timeout=30):
        """Stops the server (SIGTERM, then SIGKILL after timeout) and returns
        its exit code."""
        if self.channel is not None:
            self.channel.close()  # else gRPC's shutdown waits for the idle connection
        return stop_process(self.proc, sig, timeout)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


# --- RPC helpers -------------------------------------------------------------

class Stream:
    """The outcome of one Generate stream, read to the end."""

    def __init__(self):
        self.messages = []
        self.arrivals = []  # time.monotonic() of each message
        self.code = None    # grpc.StatusCode at the end
        self.details = ""

    @property
    def tokens(self):
        return [t for m in self.messages for t in m.token_ids]

    @property
    def text(self):
        return "".join(m.text for m in self.messages)

    @property
    def last(self):
        return self.messages[-1] if self.messages else None


def generate(stub, request, timeout=60, on_message=None):
    """Runs one Generate to the end (never raising for an RPC error) and
    returns a Stream. on_message(stream, message) runs after each message."""
    s = Stream()
    call = stub.Generate(request, timeout=timeout)
    try:
        for m in call:
            s.messages.append(m)
            s.arrivals.append(time.monotonic())
            if on_message is not None:
                on_message(s, m)
        s.code = grpc.StatusCode.OK
    except grpc.RpcError as e:
        s.code, s.details = e.code(), e.details() or ""
    return s


def run_threads(fns, timeout):
    """Runs every fn() on its own thread, all released at once; returns
    their results in order. Fails if any thread is still running after
    timeout seconds or raised."""
    results = [None] * len(fns)
    errors = []
    barrier = threading.Barrier(len(fns))

    def body(i, fn):
        try:
            barrier.wait(timeout=30)
            results[i] = fn()
        except BaseException as e:  # reported below, on the main thread
            errors.append(e)
    threads = [threading.Thread(target=body, args=(i, fn), daemon=True)
               for i, fn in enumerate(fns)]
    for t in threads:
        t.start()
    end = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, end - time.monotonic()))
    alive = sum(t.is_alive() for t in threads)
    if alive:
        raise AssertionError(f"{alive} of {len(fns)} threads still running after {timeout} s")
    if errors:
        raise errors[0]
    return results


# --- entry point -------------------------------------------------------------

def _cleanup():
    for p in _started:
        if p.poll() is None:
            stop_process(p, signal.SIGKILL, 5)


def init(binary, work_dir=None, need_binary=True):
    """Points the harness at a server binary and a work folder (a new temp
    folder when None), checks python3-grpcio and loads the stubs. Raises
    MissingTool. Used by setup() and by bench/load/load_bench.py."""
    global BINARY, WORK_DIR
    BINARY = os.path.abspath(binary)
    if work_dir:
        os.makedirs(work_dir, exist_ok=True)
        WORK_DIR = tempfile.mkdtemp(prefix="run.", dir=os.path.abspath(work_dir))
        stub_dir = os.path.abspath(work_dir)
    else:
        WORK_DIR = stub_dir = tempfile.mkdtemp(prefix="m40llm-e2e.")
    if need_binary and not os.access(BINARY, os.X_OK):
        raise MissingTool(f"server binary {BINARY} not found (build it first)")
    need_python_grpc()
    load_stubs(stub_dir)


def setup(argv=None, needs=()):
    """Parses the common flags, checks tools and loads the stubs. Returns the
    remaining argv (for unittest). Exits 77 (skip) or 1 (CI) on a missing
    tool. `needs`: callables raising MissingTool."""
    global WATCHDOG
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--binary", default=os.path.join(REPO, "build", "tools", "m40llm"))
    ap.add_argument("--work-dir", default=None,
                    help="folder for generated stubs and server folders (default: a temp dir)")
    ap.add_argument("--watchdog", type=float, default=240,
                    help="seconds after which everything is killed and the test fails")
    args, rest = ap.parse_known_args(argv)
    WATCHDOG = args.watchdog
    try:
        for need in needs:
            need()
        init(args.binary, args.work_dir)
    except MissingTool as e:
        if WORK_DIR:
            shutil.rmtree(WORK_DIR, ignore_errors=True)
        if tools_required():
            print(f"FAIL: {e} (required: CI=true or M40LLM_REQUIRE_FIXTURES=1)", flush=True)
            sys.exit(1)
        print(f"SKIP: {e}", flush=True)
        sys.exit(SKIP)
    return rest


def main(needs=()):
    """Entry point of a test module: setup(), then unittest with verbosity 2.
    A watchdog kills everything after --watchdog seconds so that nothing can
    hang (ctest's TIMEOUT, a little longer, is the outer bound)."""
    rest = setup(sys.argv[1:], needs)
    watchdog = WATCHDOG

    def expire():
        print(f"FAIL: watchdog: still running after {watchdog} s", flush=True)
        _cleanup()
        os._exit(1)
    dog = threading.Timer(watchdog, expire)
    dog.daemon = True
    dog.start()
    ok = False
    try:
        prog = unittest.main(module="__main__", argv=[sys.argv[0]] + rest, exit=False,
                             verbosity=2)
        ok = prog.result.wasSuccessful() and prog.result.testsRun > 0
    finally:
        dog.cancel()
        _cleanup()
        if ok:
            shutil.rmtree(WORK_DIR, ignore_errors=True)
        else:
            print(f"server logs and work files kept in {WORK_DIR}", flush=True)
    sys.exit(0 if ok else 1)


class ServerTestCase(unittest.TestCase):
    """A test class sharing one server, started in setUpClass with
    SERVER_ARGS. tearDownClass stops it with SIGTERM and checks that it exits
    0; on a failed test the server's log tail is printed."""

    SERVER_ARGS = ()
    server = None

    @classmethod
    def setUpClass(cls):
        cls.server = Server(*cls.SERVER_ARGS, name=cls.__name__).start()
        cls.stub = cls.server.inference

    @classmethod
    def tearDownClass(cls):
        if cls.server is not None:
            code = cls.server.stop()
            if code != 0:
                raise AssertionError(f"server exited {code} after SIGTERM:\n"
                                     f"{log_tail(cls.server.log_path)}")

    def run(self, result=None):
        failures = len(result.failures) + len(result.errors) if result else 0
        out = super().run(result)
        if result and len(result.failures) + len(result.errors) > failures and self.server:
            print(f"\n--- server log ({self.server.log_path}), last lines:\n"
                  f"{log_tail(self.server.log_path)}\n---", flush=True)
        return out

    def assertCode(self, stream_or_err, code, msg=None):
        got = stream_or_err.code if isinstance(stream_or_err, Stream) else stream_or_err.code()
        details = (stream_or_err.details if isinstance(stream_or_err, Stream)
                   else stream_or_err.details())
        self.assertEqual(got, code, msg or f"details: {details!r}")
