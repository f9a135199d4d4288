"""ClusterOps over a replication that returns stale quorum reads: a counter update never builds on a
read that missed this node's own last write (the node remembers it durably, across restarts)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
import trio.testing

from node.cluster_ops import ClusterOps
from node.database import Database
from node.replica_store import ReplicaStore
from ring.crdt import PNCounter
from ring.messages import Done
from ring.records import Kind, Record


@dataclass
class StaleReplication:
    """Quorum reads answer from a replica that saw none of this node's writes (as after writes acked
    at ONE, or only by stand-ins); writes are acked and kept."""

    store: ReplicaStore
    me: str = "node-a"
    stale: Record | None = None
    written: list[Record] = field(default_factory=list)

    async def read(self, kind: Kind, key: tuple[str, ...], consistency: Any = None) -> Done:
        return Done(0, True, self.stale)

    async def write(self, record: Record, consistency: Any = None) -> Done:
        self.written.append(record)
        return Done(0, True, record, details={"acked": ("x", "y")})


async def with_store(path: Path, body: Any) -> Any:
    db = Database(path, fsync="normal")
    store = ReplicaStore(db)
    try:
        async with trio.open_nursery() as n:
            await n.start(db.run)
            out = await body(store)
            n.cancel_scope.cancel()
        return out
    finally:
        store.close()


async def test_a_counter_update_builds_on_this_nodes_own_last_write_even_when_reads_miss_it(tmp_path: Path) -> None:
    other = Record(Kind.COUNTER, ("ns", "hits"), {"hlc": 5, "epoch": 0, "deleted": False,
                                                  "state": PNCounter().incr("node-b", 10).to_wire()})

    async def first(store: ReplicaStore) -> list[int]:
        r = StaleReplication(store, stale=other)
        ops = ClusterOps(r)  # type: ignore[arg-type]
        values = [(await ops.signal_update("ns", "hits", Kind.COUNTER, 100 + i, "incr", n, None))["value"]
                  for i, n in enumerate((3, 2))]
        return values

    # node-b's 10 is seen; node-a's own 3 is not in the (stale) read, yet 10 + 3 + 2 = 15, not 12.
    assert await with_store(tmp_path / "db", first) == [13, 15]

    async def after_restart(store: ReplicaStore) -> int:
        ops = ClusterOps(StaleReplication(store, stale=None))  # type: ignore[arg-type]
        return int((await ops.signal_update("ns", "hits", Kind.COUNTER, 200, "incr", 1, None))["value"])

    # A restarted node whose read finds nothing at all still has its last write (durable): 15 + 1.
    assert await with_store(tmp_path / "db", after_restart) == 16


@dataclass
class GatedReplication(StaleReplication):
    """Reads return the last write; writes wait for `gate` (so updates queue on the key's lock)."""

    gate: trio.Event = field(default_factory=trio.Event)

    async def read(self, kind: Kind, key: tuple[str, ...], consistency: Any = None) -> Done:
        return Done(0, True, self.written[-1] if self.written else None)

    async def write(self, record: Record, consistency: Any = None) -> Done:
        await self.gate.wait()
        return await super().write(record, consistency)


async def test_updates_of_one_key_queue_and_leave_no_lock_behind_even_when_cancelled_while_waiting(
        tmp_path: Path) -> None:
    async def body(store: ReplicaStore) -> tuple[Any, int]:
        r = GatedReplication(store)
        ops = ClusterOps(r)  # type: ignore[arg-type]
        results: list[int] = []

        async def incr(n: int, hlc: int) -> None:
            results.append(int((await ops.signal_update("ns", "k", Kind.COUNTER, hlc, "incr", n, None))["value"]))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(incr, 1, 10)
            await trio.testing.wait_all_tasks_blocked()
            waiting = trio.CancelScope()
            nursery.start_soon(_in_scope, waiting, incr, 100, 11)
            await trio.testing.wait_all_tasks_blocked()
            assert len(ops._locks) == 1  # both on the key's lock: one holds it, one waits
            waiting.cancel()  # the waiter gives up before it gets the lock
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(incr, 2, 12)
            await trio.testing.wait_all_tasks_blocked()
            r.gate.set()
        return results, len(ops._locks)

    results, locks_left = await with_store(tmp_path / "db", body)
    assert results == [1, 3] and locks_left == 0  # in order, the cancelled +100 never applied, no entry leaked


async def _in_scope(scope: trio.CancelScope, fn: Any, *args: Any) -> None:
    with scope:
        await fn(*args)
