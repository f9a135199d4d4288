"""Does an index rebuild delay requests? The node's event loop, in-process (no competing load
generator on the same cores), under 16-in-flight session stores that trigger seals and merges.

Measures event-loop lag (a 10 ms timer's lateness) and per-request latency, and how many seals and
merges ran meanwhile. Prints a table, writes bench/results/index_pause.json.
Run: python bench/index_pause.py [--stores 40000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the node CLI does

import numpy as np  # noqa: E402
import trio  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from crypto.identity import Identity  # noqa: E402
from crypto.session import ClientHandshake, accept_session, mac_request  # noqa: E402
from node.config import NodeConfig  # noqa: E402
from node.service import Service  # noqa: E402
from node.session import Session  # noqa: E402


async def run(stores: int, tmp: Path) -> dict[str, Any]:
    svc = Service(NodeConfig(), tmp / "d", Identity.generate())
    me = Identity.generate()
    lags: list[float] = []
    latencies: list[float] = []

    async def lag_monitor() -> None:
        while True:
            t = trio.current_time()
            await trio.sleep(0.01)
            lags.append((trio.current_time() - t - 0.01) * 1000)

    async with trio.open_nursery() as nursery:
        await nursery.start(svc.run)
        nursery.start_soon(lag_monitor)
        session = Session(svc.hub, 1 << 20)
        hs = ClientHandshake(me)
        key, _ = accept_session(svc.identity, me.public_key, hs.public)
        state = session.open_auth(key, me.public_key)
        todo = iter(range(stores))

        async def worker() -> None:
            for i in todo:
                frame = mac_request(key, state.sid, {
                    "v": 1, "rid": i, "action": "memory.store", "ns": me.agent_id, "ctr": i + 1,
                    "data": {"content": f"memory {i} about quorum replicas and gossip, topic {i % 97}"}}, binary=True)
                t = time.perf_counter()
                reply, _ = await svc.handle_frame(frame, True, session)
                latencies.append((time.perf_counter() - t) * 1000)
                assert reply["ok"], reply

        t0 = time.perf_counter()
        async with trio.open_nursery() as workers:
            for _ in range(16):
                workers.start_soon(worker)
        elapsed = time.perf_counter() - t0
        stats = svc.spaces.statistics()
        nursery.cancel_scope.cancel()
    index = next(iter(stats.values()))
    lag = np.asarray(lags)
    lat = np.asarray(latencies)
    return {
        "stores": stores, "stores_per_s": round(stores / elapsed, 1),
        "seals": index.get("seals"), "merges": index.get("merges"), "vacuums": index.get("vacuums"),
        "seal_ms_last": round(float(index.get("seal_ms_last", 0.0)), 1),  # type: ignore[arg-type]
        "compact_ms_last": round(float(index.get("compact_ms_last", 0.0)), 1),  # type: ignore[arg-type]
        "loop_lag_ms": {"p50": round(float(np.percentile(lag, 50)), 2), "p99": round(float(np.percentile(lag, 99)), 2),
                        "max": round(float(lag.max()), 2), "over_50ms": int((lag > 50).sum())},
        "store_latency_ms": {"p50": round(float(np.percentile(lat, 50)), 2), "p99": round(float(np.percentile(lat, 99)), 2),
                             "max": round(float(lat.max()), 2)},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stores", type=int, default=40_000)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "index_pause.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        r = trio.run(run, args.stores, Path(d))
    print(f"{r['stores']} stores (16 in flight, in-process): {r['stores_per_s']}/s; index: {r['seals']} seals, "
          f"{r['merges']} merges, {r['vacuums']} vacuums (last seal {r['seal_ms_last']} ms, last compact "
          f"{r['compact_ms_last']} ms, both in a worker thread)")
    lag, lat = r["loop_lag_ms"], r["store_latency_ms"]
    print(f"event-loop lag ms: p50 {lag['p50']}  p99 {lag['p99']}  max {lag['max']}  (>50 ms: {lag['over_50ms']} times)")
    print(f"store latency ms:  p50 {lat['p50']}  p99 {lat['p99']}  max {lat['max']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(r, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
