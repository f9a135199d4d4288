"""Scatter search over a fake replication: a hit fewer than R of its owners returned is checked at
QUORUM and dropped if it is gone (a replica that missed a delete, a copy on a node that lost the
partition); hits every owner returned cost no read; a dropped hit makes room for the next one."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from node.peer_messages import SearchQuery, SearchReply
from node.replication import ClusterConfig
from node.scatter_search import ScatterSearch
from ring.messages import Done
from ring.partition import Placement, StorageNode, memory_key
from ring.records import Kind, Record

NODES = ["a", "b", "c", "d", "e"]
PLACEMENT = Placement([StorageNode(n) for n in NODES], 3, 8)


def owners(mid: str) -> tuple[str, ...]:
    return PLACEMENT.owners(memory_key("ns", mid))


def hit(mid: str) -> dict[str, Any]:
    return {"ns": "ns", "id": mid, "content": mid}


@dataclass
class FakeReplication:
    """Peers answer from `held` at once; reads answer from `truth` (mid -> live?)."""

    held: dict[str, list[tuple[str, float]]]
    truth: dict[str, bool]
    me: str = "a"
    config: ClusterConfig = ClusterConfig()
    handlers: dict[type, Any] = field(default_factory=dict)
    reads: list[str] = field(default_factory=list)

    def owners_alive(self) -> tuple[Placement, frozenset[str]]:
        return PLACEMENT, frozenset(NODES)

    def send(self, to: str, msg: object) -> None:
        if isinstance(msg, SearchQuery):
            hits = [[hit(mid), s] for mid, s in self.held.get(to, [])]
            self.handlers[SearchReply](to, SearchReply(msg.req, True, {"hits": hits, "exhaustive": True}))

    async def read(self, kind: Kind, key: tuple[str, ...], consistency: Any = None) -> Done:
        mid = key[1]
        self.reads.append(mid)
        body = {"ns": "ns", "id": mid, "hlc": 1, "deleted": not self.truth[mid], "content": mid}
        return Done(0, True, Record(Kind.MEMORY, ("ns", mid), body))


def scenario() -> tuple[dict[str, list[tuple[str, float]]], dict[str, bool]]:
    held: dict[str, list[tuple[str, float]]] = {n: [] for n in NODES}
    truth: dict[str, bool] = {}
    # "everywhere": live, returned by all 3 owners. "stale": deleted, but one owner missed the delete.
    # "lonely": live, only one owner has it indexed yet. "moved": gone, a copy on a non-owner.
    plan = {"everywhere": (0.5, 3, True), "stale": (0.9, 1, False), "lonely": (0.8, 1, True), "moved": (0.95, 0, False)}
    for mid, (score, n_owners, live) in plan.items():
        truth[mid] = live
        for o in owners(mid)[:n_owners]:
            held[o].append((mid, score))
        if n_owners == 0:
            outsider = next(n for n in NODES if n not in owners(mid))
            held[outsider].append((mid, score))
    for i in range(5):  # filler, all live everywhere, low scores
        truth[f"f{i}"] = True
        for o in owners(f"f{i}"):
            held[o].append((f"f{i}", 0.1 - i / 100))
    return held, truth


async def test_hits_not_returned_by_a_quorum_of_owners_are_checked_and_dropped_if_gone() -> None:
    held, truth = scenario()
    r = FakeReplication(held, truth)

    async def local(body: dict[str, Any]) -> tuple[list[tuple[dict[str, Any], float]], bool]:
        return [(hit(mid), s) for mid, s in held["a"]], True
    s = ScatterSearch(r, local)  # type: ignore[arg-type]
    found, exhaustive, coverage = await s.search({"query": "q"}, 3)
    assert [m["id"] for m, _ in found] == ["lonely", "everywhere", "f0"]  # stale and moved are gone
    assert sorted(r.reads) == ["lonely", "moved", "stale"]  # the ones every owner returned cost no read
    assert coverage["partial"] is False and exhaustive
    assert s.stats["hits_checked"] == 3 and s.stats["hits_dropped"] == 2


async def test_without_doubt_no_read_is_made() -> None:
    held, truth = scenario()
    for n in NODES:
        held[n] = [(m, sc) for m, sc in held[n] if m.startswith("f") or m == "everywhere"]
    r = FakeReplication(held, truth)

    async def local(body: dict[str, Any]) -> tuple[list[tuple[dict[str, Any], float]], bool]:
        return [(hit(mid), s) for mid, s in held["a"]], True
    found, _, _ = await ScatterSearch(r, local).search({}, 4)  # type: ignore[arg-type]
    assert [m["id"] for m, _ in found] == ["everywhere", "f0", "f1", "f2"] and r.reads == []
