"""Search across the cluster: the query goes to every alive storage node (each searches the replicas it
holds), answers are merged by score and de-duplicated by (ns, id); partitions none of whose owners
answered are reported, so a partial answer is never mistaken for a complete one. A hit that fewer
than R of its owners returned (a replica that missed a delete, a copy on a node that no longer owns
it) is checked with a QUORUM read before it is returned, so a deleted memory does not come back.

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
from ring.partition import Placement, memory_key, partition_range
from ring.quorum import Consistency
from ring.records import Kind

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
        self.stats = {"scatters": 0, "partial": 0, "served": 0, "refused": 0, "hits_checked": 0, "hits_dropped": 0,
                      "hits_unchecked": 0}
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
        results: list[tuple[str, list[Any], bool]] = []  # (node, hits, exhaustive)
        try:
            for p in peers:
                self.r.send(p, SearchQuery(req, body))
            local_found, local_exh = await self.local(body)
            answered.add(me)
            results.append((me, [[m, s] for m, s in local_found], local_exh))
            with trio.move_on_after(self.timeout_s):
                for _ in peers:
                    src, reply = await recv.receive()
                    if reply.ok:
                        answered.add(src)
                        results.append((src, list(reply.body.get("hits", [])), bool(reply.body.get("exhaustive", True))))
        finally:
            del self._waiting[req]
        best: dict[tuple[str, str], tuple[dict[str, Any], float]] = {}
        sources: dict[tuple[str, str], set[str]] = {}
        for src, hits, _ in results:
            for m, s in hits:
                key = (str(m.get("ns")), str(m.get("id")))
                sources.setdefault(key, set()).add(src)
                if key not in best or float(s) > best[key][1]:
                    best[key] = (m, float(s))
        merged = await self._confirmed_top(sorted(best.items(), key=lambda x: -x[1][1]), sources, placement, k)
        coverage = self._coverage(placement, answered)
        if coverage["partial"]:
            self.stats["partial"] += 1
        return merged, all(e for _, _, e in results), coverage

    async def _confirmed_top(self, ranked: list[tuple[tuple[str, str], tuple[dict[str, Any], float]]],
                             sources: dict[tuple[str, str], set[str]], placement: Placement | None,
                             k: int) -> list[tuple[dict[str, Any], float]]:
        """The best `k` hits that are live: returned by at least R of their owners (a delete acked at
        W would have reached one of them: R + W > N), or found live by a QUORUM read; a hit dropped
        makes room for the next one."""
        out: list[tuple[dict[str, Any], float]] = []
        i = 0
        while len(out) < k and i < len(ranked):
            batch = ranked[i:i + k - len(out)]
            i += len(batch)
            doubtful = [key for key, _ in batch if not self._returned_by_quorum(placement, key, sources[key])]
            live = await self._check(doubtful)
            out += [hit for key, hit in batch if live.get(key, True)]
        return out

    def _returned_by_quorum(self, placement: Placement | None, key: tuple[str, str], srcs: set[str]) -> bool:
        if placement is None:
            return True
        owners = placement.owners(memory_key(*key))
        return len(srcs.intersection(owners)) >= min(self.r.config.replication.r_replicas, len(owners))

    async def _check(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], bool]:
        """Read each at QUORUM: False if it is gone (deleted, or never there). A read that fails keeps
        the hit (counted): it cannot be confirmed either way, and dropping it would hide a live one."""
        live: dict[tuple[str, str], bool] = {}

        async def one(key: tuple[str, str]) -> None:
            done = await self.r.read(Kind.MEMORY, key, Consistency.QUORUM)
            if not done.ok:
                self.stats["hits_unchecked"] += 1
                return
            rec = done.record
            live[key] = rec is not None and not rec.body.get("deleted")
            self.stats["hits_dropped"] += not live[key]
        self.stats["hits_checked"] += len(keys)
        async with trio.open_nursery() as nursery:
            for key in keys:
                nursery.start_soon(one, key)
        return live

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
