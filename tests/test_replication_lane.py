"""The replication shell's lane and rebalance confirms: an RbConfirm leaves only after the pages it
vouches for are committed, including a confirm repeated on a nudge, and a confirm whose pages failed
to commit is never repeated."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crypto.errors import Unavailable
from crypto.identity import Identity
from node.replication import Replication
from ring.messages import ApplyRecords, RbConfirm, Send
from tests.test_replica_store import mem, running


def _shell(store: Any) -> tuple[Replication, list[tuple[str, object]]]:
    r = Replication(Identity.generate(), store, lambda: [], rng_seed=1)
    sent: list[tuple[str, object]] = []
    r.links.send = lambda to, msg: sent.append((to, msg))  # type: ignore[method-assign]
    return r, sent


async def test_a_repeated_confirm_queues_behind_the_lane(tmp_path: Path) -> None:
    async with running(tmp_path / "r.sqlite3") as (store, _):
        r, sent = _shell(store)
        rec = mem(("ns", "a"), "hello", 5)
        p = rec.partition(store.partition_bits)
        first = [ApplyRecords("loser", (rec,)), Send("loser", RbConfirm(p, (1, 1)))]
        again = [Send("loser", RbConfirm(p, (1, 1)))]  # what a nudge returns: sends only
        r._route(first)
        r._route(again)
        assert sent == []  # neither overtakes the pages still waiting in the lane
        items = [r._lane_recv.receive_nowait(), r._lane_recv.receive_nowait()]
        await r._commit_lane(items)
        assert store.get(rec.kind, rec.key) is not None
        assert sent == [("loser", RbConfirm(p, (1, 1)))] * 2


async def test_a_confirm_whose_pages_failed_is_forgotten(tmp_path: Path) -> None:
    async with running(tmp_path / "r.sqlite3") as (store, _):
        r, sent = _shell(store)
        rec = mem(("ns", "b"), "world", 6)
        p = rec.partition(store.partition_bits)
        r.rb._vouched[(p, "loser")] = (7, 1)  # as the rebalancer records it when it emits the confirm

        async def failing(fns: list[Any]) -> list[Any]:
            return [Unavailable("disk full")] * len(fns)
        store.db.write_each = failing  # type: ignore[assignment]
        await r._commit_lane([[ApplyRecords("loser", (rec,)), Send("loser", RbConfirm(p, (7, 1)))]])
        assert sent == []
        assert (p, "loser") not in r.rb._vouched  # a nudge now sweeps again instead of re-confirming
