"""Single-node benchmark: wire baseline, signed store/get round trips, pauses under index seals,
search quality and speed, embedder speed -> a table and bench/results/single_node.json.

Measurement only. The node runs as a separate process (as in production); the load generator runs
here. Ratios are against a raw trio-websocket echo server measured in the same run, because these
machines are noisy. Run: python bench/single_node.py [--quick] [--profile]
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import trio
from trio_websocket import open_websocket_url, serve_websocket

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from crypto.identity import Identity  # noqa: E402
from node.client import MemoryClient  # noqa: E402

REQUEST_BYTES = 300  # a typical small request, for the echo baseline


# ---------------------------------------------------------------- processes

def start(argv: list[str], tmp: Path, name: str) -> tuple[subprocess.Popen[str], str]:
    log = open(tmp / f"{name}.log", "w")  # noqa: SIM115 - lives as long as the process
    p = subprocess.Popen(argv, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE,
                         stderr=log, text=True)
    assert p.stdout is not None
    line = p.stdout.readline().strip()
    if not line.startswith("LISTENING"):
        p.kill()
        raise RuntimeError(f"{name} did not start: {line!r}; see {tmp / (name + '.log')}")
    return p, line.split()[1]


def stop(p: subprocess.Popen[str]) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


async def echo_server_main(port: int) -> None:
    async def handler(request: Any) -> None:
        ws = await request.accept()
        try:
            while True:
                await ws.send_message(await ws.get_message())
        except Exception:
            return

    async with trio.open_nursery() as n:
        server = await n.start(lambda task_status: serve_websocket(handler, "127.0.0.1", port, ssl_context=None,
                                                                   task_status=task_status))
        print(f"LISTENING ws://127.0.0.1:{server.port}", flush=True)


# ---------------------------------------------------------------- load

def pct(lat: list[float]) -> dict[str, float]:
    a = np.asarray(lat) * 1000
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p99_ms": round(float(np.percentile(a, 99)), 3),
            "max_ms": round(float(a.max()), 3)}


async def drive(op: Callable[[int], Awaitable[Any]], n: int, inflight: int) -> dict[str, Any]:
    """Run op(0..n-1) with `inflight` concurrent workers; ops/s and latency percentiles."""
    lat: list[float] = []
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            t = time.perf_counter()
            await op(i)
            lat.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(inflight):
            nursery.start_soon(worker)
    dt = time.perf_counter() - t0
    return {"ops": n, "inflight": inflight, "ops_per_s": round(n / dt, 1), **pct(lat)}


async def echo_bench(url: str, n: int) -> dict[str, Any]:
    msg = os.urandom(REQUEST_BYTES)
    out = {}
    async with open_websocket_url(url) as ws:
        async def seq(_: int) -> None:
            await ws.send_message(msg)
            await ws.get_message()
        out["sequential"] = await drive(seq, n, 1)
        # 16 in flight on one connection: a pipelined writer and reader.
        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            sem = trio.Semaphore(16)

            async def reader() -> None:
                for _ in range(n):
                    await ws.get_message()
                    sem.release()
            nursery.start_soon(reader)
            for _ in range(n):
                await sem.acquire()
                await ws.send_message(msg)
        out["inflight16"] = {"ops": n, "inflight": 16, "ops_per_s": round(n / (time.perf_counter() - t0), 1)}
    return out


async def node_bench(url: str, n: int, tmp: Path) -> dict[str, Any]:
    me = Identity.generate()
    ns = me.agent_id
    out: dict[str, Any] = {}
    async with MemoryClient(url, me, timeout_s=120, session=False, sign_records=False) as c:
        # Ed25519 on every request: the ceiling sessions remove.
        out["health_signed_inflight16"] = await drive(lambda i: c.health(), n, 16)
        out["store_signed_inflight16"] = await drive(
            lambda i: c.store(ns, f"signed-request memory {i}: agents share facts", id=f"x{i}"), n, 16)
    async with MemoryClient(url, me, timeout_s=120, sign_records=False) as c:
        await c.health()
        out["store_sequential"] = await drive(
            lambda i: c.store(ns, f"sequential memory {i}: agents share facts about deployments", id=f"s{i}"), n, 1)
        out["store_inflight16"] = await drive(
            lambda i: c.store(ns, f"concurrent memory {i}: quorum replicas acknowledge writes", id=f"c{i}"), 2 * n, 16)
        out["store_inflight64"] = await drive(
            lambda i: c.store(ns, f"deep-queue memory {i}: gossip spreads membership", id=f"d{i}"), 2 * n, 64)
        out["get_sequential"] = await drive(lambda i: c.get(ns, f"s{i % n}"), n, 1)
        out["get_inflight16"] = await drive(lambda i: c.get(ns, f"c{i % n}"), 2 * n, 16)
        out["search_small_inflight4"] = await drive(lambda i: c.search(f"memory {i} about replicas", ns=ns), n // 4, 4)
        out["health_inflight16"] = await drive(lambda i: c.health(), 2 * n, 16)
    async with MemoryClient(url, me, timeout_s=120, sign_records=True) as c:
        out["store_record_signed_inflight16"] = await drive(
            lambda i: c.store(ns, f"record-signed memory {i}: provenance kept", id=f"r{i}"), 2 * n, 16)
    return out


async def seal_pause_bench(url: str, n: int) -> dict[str, Any]:
    """Does an index rebuild delay requests? Load memories (16 in flight) while a probe sends
    sequential health requests; compare the event-loop lag and probe latency in a phase with no
    seals (fewer rows than the buffer holds) against a phase with several seals."""
    me = Identity.generate()
    ns = me.agent_id
    out: dict[str, Any] = {}
    async with MemoryClient(url, me, timeout_s=120, sign_records=False) as c, \
            MemoryClient(url, Identity.generate(), timeout_s=120) as probe:
        start = 0
        for phase, count in (("no_seal", 3000), ("with_seals", n)):
            before = await c.stats()
            lat: list[float] = []
            done = trio.Event()

            async def prober(done: trio.Event = done, lat: list[float] = lat) -> None:
                while not done.is_set():
                    t = time.perf_counter()
                    await probe.health()
                    lat.append(time.perf_counter() - t)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(prober)
                writes = await drive(
                    lambda i, s=start: c.store(ns, f"fact number {s + i} about the deployment of service {i % 97}"),
                    count, 16)
                done.set()
            after = await c.stats()
            start += count
            seals = sum(int(v.get("seals", 0)) for v in after["index"].values()) - \
                sum(int(v.get("seals", 0)) for v in before["index"].values())
            out[phase] = {"writes": writes, "probe": {"count": len(lat), **pct(lat)}, "seals": seals,
                          "loop_lag_max_ms": after["loop_lag_ms"]["max_since_last_stats"]}
    return out


def profile_summary(path: Path) -> list[dict[str, Any]]:
    """Where the node's time goes: cumulative time of the main cost centres, as a share of the run."""
    st = pstats.Stats(str(path))
    total = max(st.total_tt, 1e-9)  # type: ignore[attr-defined]
    buckets = {
        "ed25519 verify": ("verify",), "sqlite commit/exec": ("_commit_batch",), "embedder": ("embed",),
        "msgpack/json codec": ("unpackb", "packb", "loads", "dumps"), "websocket I/O (wsproto)": ("send_message", "get_message", "receive_data"),
        "vector index add": ("add_many",), "decode_request": ("decode_request",),
    }
    rows = []
    for name, needles in buckets.items():
        cum = 0.0
        for (_file, _line, func), (_cc, _nc, _tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
            if func in needles:
                cum = max(cum, ct)
        rows.append({"part": name, "seconds": round(cum, 3), "share": round(cum / total, 3)})
    idle = sum(tt for (_f, _l, func), (_cc, _nc, tt, _ct, _c) in st.stats.items()  # type: ignore[attr-defined]
               if func == "<method 'poll' of 'select.epoll' objects>")
    rows.append({"part": "idle (epoll wait)", "seconds": round(idle, 3), "share": round(idle / total, 3)})
    top = sorted(((tt, f"{file.rsplit('/', 1)[-1]}:{func}") for (file, _l, func), (_cc, _nc, tt, _ct, _c)
                  in st.stats.items()), reverse=True)[:12]  # type: ignore[attr-defined]
    rows += [{"part": f"top self time: {name}", "seconds": round(tt, 3), "share": round(tt / total, 3)}
             for tt, name in top]
    return rows


async def main_async(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}}
    n = 500 if args.quick else 3000
    echo, echo_url = start([sys.executable, str(Path(__file__)), "--echo-server"], tmp, "echo")
    try:
        results["echo"] = await echo_bench(echo_url, n * 2)
    finally:
        stop(echo)
    key = tmp / "node.pem"
    Identity.generate().save(key)
    for fsync in ("full", "normal"):
        argv = [sys.executable, "-m", "node.cli", "node", "--listen", "127.0.0.1:0", "--data", str(tmp / f"data-{fsync}"),
                "--key", str(key), "--fsync", fsync, "--log-level", "WARNING"]
        node, url = start(argv, tmp, f"node-{fsync}")
        try:
            results[f"node_fsync_{fsync}"] = await node_bench(url, n, tmp)
            if fsync == "full":
                results["seal_pause"] = await seal_pause_bench(url, 8000 if args.quick else 20000)
        finally:
            stop(node)
    if args.profile:
        prof = tmp / "node.prof"
        argv = [sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "node.cli", "node", "--listen", "127.0.0.1:0",
                "--data", str(tmp / "data-prof"), "--key", str(key), "--log-level", "WARNING"]
        node, url = start(argv, tmp, "node-prof")
        try:
            me = Identity.generate()
            async with MemoryClient(url, me, timeout_s=120, sign_records=False) as c:
                results["profiled_store_inflight16"] = await drive(
                    lambda i: c.store(me.agent_id, f"profiled memory {i} about replicas"), 2 * n, 16)
        finally:
            stop(node)
        results["profile"] = profile_summary(prof) if prof.exists() else "profile not written"
    return results


def print_table(r: dict[str, Any]) -> None:
    e16 = r["echo"]["inflight16"]["ops_per_s"]
    eseq = r["echo"]["sequential"]["ops_per_s"]
    print(f"{'measure':<62} {'ops/s':>8} {'p50 ms':>7} {'vs echo seq':>11} {'vs echo 16':>10}")
    print(f"{'raw trio-websocket echo, sequential (baseline)':<62} {eseq:>8.0f} "
          f"{r['echo']['sequential']['p50_ms']:>7}")
    print(f"{'raw trio-websocket echo, 16 in flight (baseline)':<62} {e16:>8.0f}")
    labels = {
        "health_signed_inflight16": "health, Ed25519 per request, 16 in flight",
        "store_signed_inflight16": "memory.store, Ed25519 per request, 16 in flight",
        "store_sequential": "memory.store, session, sequential",
        "store_inflight16": "memory.store, session, 16 in flight",
        "store_inflight64": "memory.store, session, 64 in flight",
        "store_record_signed_inflight16": "memory.store, session + record signature, 16 in flight",
        "get_sequential": "memory.get, session, sequential",
        "get_inflight16": "memory.get, session, 16 in flight",
        "search_small_inflight4": "memory.search (small namespace), 4 in flight",
        "health_inflight16": "health, session, 16 in flight",
    }
    for fsync in ("full", "normal"):
        nb = r[f"node_fsync_{fsync}"]
        for key, label in labels.items():
            x = nb[key]
            print(f"{label + f' [fsync={fsync}]':<62} {x['ops_per_s']:>8.0f} {x['p50_ms']:>7} "
                  f"{x['ops_per_s'] / eseq:>11.0%} {x['ops_per_s'] / e16:>10.0%}")
    print("\nindex rebuilds vs request delay (load of 16-in-flight stores, sequential health probe):")
    for phase, x in r["seal_pause"].items():
        print(f"  {phase:<11} seals {x['seals']:>2}  event-loop lag max {x['loop_lag_max_ms']:>6.1f} ms  "
              f"probe p50 {x['probe']['p50_ms']} p99 {x['probe']['p99_ms']} max {x['probe']['max_ms']} ms  "
              f"writes p99 {x['writes']['p99_ms']} max {x['writes']['max_ms']} ms")
    if isinstance(r.get("profile"), list):
        print("\nprofile of the node under 16-in-flight session stores (share of the node's run time):")
        for row in r["profile"]:
            print(f"  {row['part']:<60} {row['share']:>6.1%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small counts, skip 100k search")
    ap.add_argument("--profile", action="store_true", help="also profile the node under store load")
    ap.add_argument("--no-search", action="store_true", help="skip the index benchmark (bench/search.py)")
    ap.add_argument("--echo-server", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "single_node.json"))
    args = ap.parse_args()
    if args.echo_server:
        trio.run(echo_server_main, 0)
        return
    with tempfile.TemporaryDirectory() as d:
        results = trio.run(main_async, args, Path(d))
    print_table(results)
    if not args.no_search:
        from bench import search

        results["search"] = search.run((10_000,) if args.quick else (10_000, 100_000), compare=not args.quick)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
