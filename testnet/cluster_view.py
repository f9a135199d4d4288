"""The launcher's view of a local cluster: wait until every node sees the whole ring, then show what
each node holds and check the counter every agent bumped.

Talks to the nodes only through the client API (`stats`, `signal.get`); it must not start or stop
processes (testnet/launch.py does).
"""

from __future__ import annotations

import time
from typing import Any

import trio

from crypto.errors import MnemonetError
from crypto.identity import Identity
from node.client import MemoryClient

POLL_S = 1.0
COUNTER_NS, COUNTER_KEY = "public", "agents-done"


async def _stats(url: str, identity: Identity) -> dict[str, Any] | None:
    try:
        with trio.fail_after(10):
            async with MemoryClient(url, identity) as c:
                return await c.stats()
    except (OSError, MnemonetError, trio.TooSlowError):
        return None


async def _all_stats(urls: list[str], identity: Identity) -> list[dict[str, Any] | None]:
    out: list[dict[str, Any] | None] = [None] * len(urls)

    async def one(i: int) -> None:
        out[i] = await _stats(urls[i], identity)
    async with trio.open_nursery() as nursery:
        for i in range(len(urls)):
            nursery.start_soon(one, i)
    return out


def _ready(s: dict[str, Any] | None, n: int) -> bool:
    c = (s or {}).get("cluster") or {}
    return c.get("placement_nodes") == n and c.get("alive") == n


def wait_for_ring(urls: list[str], identity: Identity, timeout_s: float) -> bool:
    """True once every node places data on all len(urls) nodes and sees them all alive."""
    async def main() -> bool:
        with trio.move_on_after(timeout_s):
            while True:
                stats = await _all_stats(urls, identity)
                ready = sum(_ready(s, len(urls)) for s in stats)
                print(f"  {ready}/{len(urls)} nodes see the whole ring", flush=True)
                if ready == len(urls):
                    return True
                await trio.sleep(POLL_S)  # polling processes we only reach through their API
        return False
    return trio.run(main)


def summarise(urls: list[str], identity: Identity, agents: int) -> bool:
    """Print one row per node (items held, hints, anti-entropy, rebalancing) and check that the counter
    every agent incremented once reads `agents` at QUORUM. True if it does."""
    async def main() -> tuple[list[dict[str, Any] | None], Any]:
        stats = await _all_stats(urls, identity)
        async with MemoryClient(urls[-1], identity) as c:
            counter = await c.signal_get(COUNTER_NS, COUNTER_KEY)
        return stats, counter.value
    t0 = time.monotonic()
    stats, counter = trio.run(main)
    print(f"{'node':>6} {'items':>6} {'parts':>6} {'hints':>6} {'ae rounds':>9} {'ae repaired':>11} "
          f"{'coordinated':>11} {'loop lag max ms':>15}")
    total = 0
    for i, s in enumerate(stats):
        if s is None:
            print(f"{'node' + str(i):>6} (no answer)")
            continue
        c = s.get("cluster", {})
        store, ae, coord = c.get("store", {}), c.get("anti_entropy", {}), c.get("coordinator", {})
        total += int(store.get("items", 0))
        print(f"{'node' + str(i):>6} {store.get('items', 0):>6} {store.get('partitions', 0):>6} {store.get('hints', 0):>6} "
              f"{ae.get('sessions_started', 0):>9} {ae.get('records_received', 0):>11} "
              f"{coord.get('writes_ok', 0) + coord.get('reads_ok', 0):>11} {s.get('loop_lag_ms', {}).get('max', 0):>15}")
    ok = counter == agents
    print(f"items held over all nodes: {total} (each item on 3 nodes); counter {COUNTER_NS}/{COUNTER_KEY} = {counter}, "
          f"expected {agents}: {'ok' if ok else 'LOST UPDATES'} ({time.monotonic() - t0:.2f}s)")
    return ok
