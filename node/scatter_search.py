"""Search across the cluster: the query goes to every alive storage node (each searches the replicas it
holds), answers are merged by score and de-duplicated by (ns, id); partitions none of whose owners
answered are reported, so a partial answer is never mistaken for a complete one.

Owns the scatter, the gather and the coverage check; it must not rank or filter (each node's local
search does, node/search.py) nor check permissions (the action does, before the scatter).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import trio

from node.peer_messages import SearchQuery, SearchReply
from node.replication import Replication
from ring.partition import Placement, partition_range

log = logging.getLogger("mnemonet.scatter_search")

LocalSearch = Callable[[dict[str, Any]], Awaitable[tuple[list[tuple[dict[str, Any], float]], bool]]]
MISSING_RANGES_MAX = 64  # ranges listed in a partial answer; the count of missing partitions is always exact


class ScatterSearch:
    """Registers itself for SearchQuery/SearchReply on `replication`; `run` serves peers' queries."""

    def __init__(self, replication: Replication, local: LocalSearch, timeout_s: float = 2.0,
                 concurrent_max: int = 16) -> None:
        self.r, self.local, self.timeout_s = replication, local, timeout_s
        self._ids = itertools.count(1)
        self._waiting: dict[int, tuple[trio.MemorySendChannel[tuple[str, SearchReply]], set[str]]] = {}
        self._queries_send, self._queries_recv = trio.open_memory_channel[tuple[str, SearchQuery]](256)
        self._limit = trio.Semaphore(concurrent_max)
        self.stats = {"scatters": 0, "partial": 0, "served": 0, "refused": 0}
        replication.handlers[SearchQuery] = self._on_query
        replication.handlers[SearchReply] = self._on_reply

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            task_status.started()
            async for src, q in self._queries_recv:
                await self._limit.acquire()
                nursery.start_soon(self._serve, src, q)

    def _on_query(self, src: str, q: SearchQuery) -> None:
        try:
            self._queries_send.send_nowait((src, q))
        except trio.WouldBlock:
            self.stats["refused"] += 1
            self.r.send(src, SearchReply(q.req, False, {}, "unavailable"))

    def _on_reply(self, src: str, reply: SearchReply) -> None:
        entry = self._waiting.get(reply.req)
        if entry is not None and src in entry[1]:
            entry[1].discard(src)
            entry[0].send_nowait((src, reply))

    async def _serve(self, src: str, q: SearchQuery) -> None:
        try:
            found, exhaustive = await self.local(dict(q.body))
            reply = SearchReply(q.req, True, {"hits": [[m, s] for m, s in found], "exhaustive": exhaustive})
            self.stats["served"] += 1
        except Exception as e:
            log.warning("scatter search for %s failed: %s", src[:12], e)
            reply = SearchReply(q.req, False, {}, getattr(e, "code", "internal"))
        finally:
            self._limit.release()
        self.r.send(src, reply)

    async def search(self, body: dict[str, Any], k: int) -> tuple[list[tuple[dict[str, Any], float]], bool, dict[str, Any]]:
        """Top `k` over the cluster: (hits, exhaustive, coverage) where coverage has `partial` and,
        when partial, `missing_partitions` and `missing_ranges` ([start, end) of the 64-bit key space)."""
        placement, alive = self.r.owners_alive()
        me = self.r.me
        peers = sorted(n for n in (placement.nodes if placement else ()) if n in alive and n != me)
        req = next(self._ids)
        send, recv = trio.open_memory_channel[tuple[str, SearchReply]](len(peers) + 1)
        self._waiting[req] = (send, set(peers))
        self.stats["scatters"] += 1
        answered: set[str] = set()
        results: list[tuple[list[Any], bool]] = []
        try:
            for p in peers:
                self.r.send(p, SearchQuery(req, body))
            local_found, local_exh = await self.local(body)
            answered.add(me)
            results.append(([[m, s] for m, s in local_found], local_exh))
            with trio.move_on_after(self.timeout_s):
                for _ in peers:
                    src, reply = await recv.receive()
                    if reply.ok:
                        answered.add(src)
                        results.append((list(reply.body.get("hits", [])), bool(reply.body.get("exhaustive", True))))
        finally:
            del self._waiting[req]
        best: dict[tuple[str, str], tuple[dict[str, Any], float]] = {}
        for hits, _ in results:
            for m, s in hits:
                key = (str(m.get("ns")), str(m.get("id")))
                if key not in best or float(s) > best[key][1]:
                    best[key] = (m, float(s))
        merged = sorted(best.values(), key=lambda x: -x[1])[:k]
        coverage = self._coverage(placement, answered)
        if coverage["partial"]:
            self.stats["partial"] += 1
        return merged, all(e for _, e in results), coverage

    @staticmethod
    def _coverage(placement: Placement | None, answered: set[str]) -> dict[str, Any]:
        if placement is None:
            return {"partial": False}
        idx = np.array([n in answered for n in placement.nodes], dtype=bool)
        covered = idx[placement.table].any(axis=1)
        missing = np.flatnonzero(~covered)
        if missing.size == 0:
            return {"partial": False}
        ranges: list[list[int]] = []
        for p in missing.tolist():
            lo, hi = partition_range(p, placement.partition_bits)
            if ranges and ranges[-1][1] == lo:
                ranges[-1][1] = hi
            else:
                ranges.append([lo, hi])
        return {"partial": True, "missing_partitions": int(missing.size),
                "missing_ranges": ranges[:MISSING_RANGES_MAX], "missing_ranges_truncated": len(ranges) > MISSING_RANGES_MAX}
