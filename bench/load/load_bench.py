#!/usr/bin/python3
"""Load benchmark for `m40llm serve`: Generate streams at several
concurrency levels, measured on the client side. Not a test: it prints a
table and writes JSON.

    /usr/bin/python3 bench/load/load_bench.py                 # starts build/tools/m40llm serve
    /usr/bin/python3 bench/load/load_bench.py --addr HOST:PORT  # an already running server

At each concurrency C it keeps C streams open (grpc.aio, one event loop)
until --requests requests have completed, each asking for --max-tokens
tokens with ignore_eos and its own seed. Per level it reports

- tokens/s and requests/s: generated tokens and completed requests over the
  level's wall time;
- TTFT p50/p95/p99: request sent -> first message carrying a token;
- ITL p50/p99 (inter-token latency): gaps between consecutive messages of a
  stream, each gap split evenly over the tokens of the later message (the
  server merges tokens decoded while the client is still reading the
  previous message, so a message can carry several).

Needs Debian's python3-grpcio and python3-protobuf, protoc and
grpc_python_plugin (the stubs are generated as for the e2e tests).
"""
import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "..", "tests", "e2e"))
import harness as h  # noqa: E402


def percentile(values, q):
    """Linear-interpolated percentile (q in [0, 100]); None when empty."""
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


async def one_request(stub, i, args):
    req = h.pb.GenerateRequest(text=f"{args.prompt} ({i})", max_tokens=args.max_tokens,
                               ignore_eos=True, seed=1 + i, temperature=args.temperature,
                               request_id=f"bench-{i}")
    sent = time.perf_counter()
    first = None
    last = None
    itl = []
    tokens = 0
    try:
        async for m in stub.Generate(req, timeout=args.timeout):
            now = time.perf_counter()
            n = len(m.token_ids)
            if n == 0:
                continue
            if first is None:
                first = now
            elif last is not None:
                itl.extend([(now - last) / n] * n)
            last = now
            tokens += n
        code = "OK"
    except h.grpc.RpcError as e:
        code = e.code().name
    return {"code": code, "tokens": tokens, "ttft": None if first is None else first - sent,
            "itl": itl, "latency": time.perf_counter() - sent}


async def run_level(addr, concurrency, n_requests, args):
    async with h.grpc.aio.insecure_channel(addr) as channel:
        stub = h.pb_grpc.InferenceStub(channel)
        # Warm the connection (and the server) outside the measurement.
        await stub.GetModelInfo(h.pb.GetModelInfoRequest(), timeout=10)
        next_id = iter(range(n_requests))
        results = []

        async def worker():
            for i in next_id:
                results.append(await one_request(stub, concurrency * 100000 + i, args))
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    ok = [r for r in results if r["code"] == "OK"]
    ttft = [r["ttft"] for r in ok if r["ttft"] is not None]
    itl = [x for r in ok for x in r["itl"]]
    tokens = sum(r["tokens"] for r in results)
    return {
        "concurrency": concurrency,
        "requests": len(results),
        "errors": len(results) - len(ok),
        "error_codes": sorted({r["code"] for r in results if r["code"] != "OK"}),
        "wall_seconds": wall,
        "generated_tokens": tokens,
        "tokens_per_second": tokens / wall,
        "requests_per_second": len(ok) / wall,
        "ttft_seconds": {"p50": percentile(ttft, 50), "p95": percentile(ttft, 95),
                         "p99": percentile(ttft, 99),
                         "mean": statistics.fmean(ttft) if ttft else None},
        "itl_seconds": {"p50": percentile(itl, 50), "p99": percentile(itl, 99),
                        "mean": statistics.fmean(itl) if itl else None},
        "latency_seconds": {"p50": percentile([r["latency"] for r in ok], 50),
                            "p99": percentile([r["latency"] for r in ok], 99)},
    }


def ms(x):
    return "-" if x is None else f"{x * 1000:.1f}"


def print_table(rows):
    head = ["concurrency", "requests", "errors", "tokens/s", "req/s", "TTFT p50 ms",
            "TTFT p95 ms", "TTFT p99 ms", "ITL p50 ms", "ITL p99 ms"]
    lines = [head]
    for r in rows:
        lines.append([str(r["concurrency"]), str(r["requests"]), str(r["errors"]),
                      f"{r['tokens_per_second']:.0f}", f"{r['requests_per_second']:.2f}",
                      ms(r["ttft_seconds"]["p50"]), ms(r["ttft_seconds"]["p95"]),
                      ms(r["ttft_seconds"]["p99"]), ms(r["itl_seconds"]["p50"]),
                      ms(r["itl_seconds"]["p99"])])
    widths = [max(len(row[c]) for row in lines) for c in range(len(head))]
    fmt = lambda row: "| " + " | ".join(x.rjust(w) for x, w in zip(row, widths)) + " |"  # noqa
    print(fmt(lines[0]))
    print("|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|")
    for row in lines[1:]:
        print(fmt(row))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--addr", help="host:port of a running server (default: start one)")
    ap.add_argument("--binary", default=os.path.join(h.REPO, "build", "tools", "m40llm"),
                    help="m40llm binary to start when --addr is not given")
    ap.add_argument("--model", help="GGUF model for the started server (default: demo model)")
    ap.add_argument("--server-arg", action="append", default=[],
                    help="extra flag for the started server (repeatable), e.g. --server-arg=-t2")
    ap.add_argument("--concurrency", type=int, action="append",
                    help="concurrency levels (repeatable; default 1, 8, 32)")
    ap.add_argument("--requests", type=int, default=None,
                    help="requests per level (default: max(32, 4 x concurrency))")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--prompt", default="Once upon a time, in a land far away")
    ap.add_argument("--timeout", type=float, default=120, help="per-request deadline, seconds")
    ap.add_argument("--json", default="load_bench.json", help="where to write the results")
    args = ap.parse_args()
    levels = args.concurrency or [1, 8, 32]

    h.init(args.binary, need_binary=args.addr is None)
    server = None
    addr = args.addr
    try:
        if addr is None:
            extra = ["--max-batch", str(max(levels)), "--queue-size", str(4 * max(levels)),
                     "--ctx-per-slot", "1024"] + args.server_arg
            if args.model:
                extra += ["--model", args.model]
            server = h.Server(*extra, name="load_bench").start()
            addr = server.addr
        with h.channel(addr) as ch:
            info = h.pb_grpc.InferenceStub(ch).GetModelInfo(h.pb.GetModelInfoRequest(), timeout=10)
        print(f"server {addr}: {info.name or info.file} ({info.backend}, {info.device}), "
              f"max_batch {info.max_batch}, queue {info.queue_size}, ctx/slot {info.ctx_per_slot}; "
              f"client {platform.node()}, {os.cpu_count()} CPUs; "
              f"{args.max_tokens} tokens per request", flush=True)
        rows = []
        for c in levels:
            n = args.requests or max(32, 4 * c)
            rows.append(asyncio.run(run_level(addr, c, n, args)))
            r = rows[-1]
            print(f"  concurrency {c}: {r['requests']} requests in {r['wall_seconds']:.2f} s",
                  flush=True)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(h.WORK_DIR, ignore_errors=True)
    print_table(rows)
    out = {
        "server": {"addr": addr, "started_by_bench": server is not None,
                   "model": info.name, "file": info.file, "backend": info.backend,
                   "device": info.device, "max_batch": info.max_batch,
                   "queue_size": info.queue_size, "ctx_per_slot": info.ctx_per_slot,
                   "version": info.server_version},
        "client": {"host": platform.node(), "cpus": os.cpu_count(),
                   "python": platform.python_version(), "grpcio": h.grpc.__version__},
        "config": {"max_tokens": args.max_tokens, "temperature": args.temperature,
                   "prompt": args.prompt, "levels": levels},
        "results": rows,
    }
    with open(args.json, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    try:
        main()
    except h.MissingTool as e:
        sys.exit(f"error: {e}")
