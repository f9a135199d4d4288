"""An in-process cluster for benchmarks: real nodes (Service + gossip + replication + websocket server)
on 127.0.0.1 in one trio run, a single-node baseline, bulk loading through the stores, and a load driver.

Owns bench plumbing only (the pattern of tests/test_cluster_node.py, not imported from tests/); it must
not change how a node behaves: every node is built from node/ exactly as `mnemonet node --cluster` does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import trio

from crypto.identity import Identity
from gossip.config import GossipConfig
from gossip.messages import Meta
from node import memory_store
from node.client import MemoryClient
from node.cluster import ClusterNode
from node.config import NodeConfig
from node.database import Applied
from node.embedder import HashingEmbedder
from node.gossip_transport import WebsocketTransport
from node.membership import Membership
from node.memory_store import NewMemory
from node.replication import ClusterConfig
from node.server import run_node
from node.service import Service
from ring.hlc import hlc_pack
from ring.partition import memory_key
from ring.records import Record

NETWORK = "bench"
APPLY_BATCH = 500  # records per store write while bulk loading (one SQLite transaction)
_WORDS = [f"{a}{b}{c}" for a in ("ka", "lo", "mi", "ne", "ru", "sa", "to", "vi")
          for b in ("ber", "don", "fal", "gin", "mor", "pel", "sut", "wen")
          for c in ("a", "e", "i", "o", "u", "ys")]  # 384 made-up words: hash-embedder food


@dataclasses.dataclass
class BenchNode:
    """One node of the bench cluster (or the single-node baseline when `cluster` stays None)."""

    name: str
    identity: Identity
    data: Path
    service: Service | None = None
    cluster: ClusterNode | None = None
    url: str = ""

    def client(self, agent: Identity) -> MemoryClient:
        # No per-record author signature: the bench measures replication, not Ed25519 (same for both sides).
        return MemoryClient(self.url, agent, sign_records=False)


def cluster_config(*, ae_interval_s: float = 600.0, nudge_s: float = 1.0, bootstrap_s: float = 0.0) -> ClusterConfig:
    """The node defaults except: anti-entropy interval (long unless a section measures it: each session
    builds a tree over ~40k partitions on the event loop of a process that runs all nodes), the
    rebalancer nudge (1 s, as in tests; default 30 s) and a quick settle (0.2 s)."""
    rc = ClusterConfig().replication.replace(anti_entropy_interval_s=ae_interval_s, rebalance_nudge_interval_s=nudge_s)
    return ClusterConfig(replication=rc, settle_s=0.2, bootstrap_s=bootstrap_s, gc_interval_s=3600.0)


async def start_node(nursery: trio.Nursery, node: BenchNode, seeds: list[str], config: ClusterConfig) -> None:
    """A cluster node: Service, gossip membership (local preset), ClusterNode, on an ephemeral port."""
    async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        service = Service(NodeConfig(fsync="normal"), node.data, node.identity)
        transport = WebsocketTransport()
        cluster = ClusterNode(service, network=NETWORK, config=config, rng_seed=7)
        async with trio.open_nursery() as inner:
            port = await inner.start(functools.partial(
                run_node, service, "127.0.0.1", 0, gossip_handler=transport.handle_request,
                peer_handlers=cluster.peer_handlers))
            node.url = f"ws://127.0.0.1:{port}"
            transport.local_addr = node.url
            service.membership = Membership(node.identity, node.url, Meta(roles=("storage",), endpoint=node.url),
                                            transport, config=GossipConfig.local(), network=NETWORK, seeds=seeds,
                                            data_dir=node.data)
            await inner.start(service.membership.run)
            await inner.start(cluster.run)
            node.service, node.cluster = service, cluster
            task_status.started()
    await nursery.start(run)


async def start_single(nursery: trio.Nursery, node: BenchNode) -> None:
    """The baseline: one node in the single-node (master) mode, no gossip, no replication."""
    service = Service(NodeConfig(fsync="normal"), node.data, node.identity)
    port = await nursery.start(functools.partial(run_node, service, "127.0.0.1", 0))
    node.url, node.service = f"ws://127.0.0.1:{port}", service


async def start_ring(nursery: trio.Nursery, nodes: Sequence[BenchNode], config: ClusterConfig,
                     timeout_s: float = 60.0) -> None:
    """Start `nodes` as founding members seeded by the first, and wait until each sees a ring of all."""
    await start_node(nursery, nodes[0], [], config)
    for x in nodes[1:]:
        await start_node(nursery, x, [nodes[0].url], config)
    await until(lambda: placed(nodes, len(nodes)), timeout_s, f"ring of {len(nodes)}")


async def until(pred: Callable[[], bool], timeout_s: float = 60.0, what: str = "", poll_s: float = 0.05) -> None:
    """Poll `pred` (views with no event to wait on) until true; TooSlowError naming `what` after `timeout_s`."""
    try:
        with trio.fail_after(timeout_s):
            while not pred():
                await trio.sleep(poll_s)
    except trio.TooSlowError:
        raise trio.TooSlowError(f"bench: timed out after {timeout_s} s waiting for {what}") from None


def placed(nodes: Sequence[BenchNode], n: int) -> bool:
    for x in nodes:
        r = x.cluster.replication if x.cluster else None
        if r is None or r.placement is None or len(r.placement.nodes) != n or len(r.alive) != n:
            return False
    return True


def rebalanced(nodes: Sequence[BenchNode]) -> bool:
    return all(x.cluster is not None and x.cluster.replication.rb.settled() for x in nodes)


# ---------------------------------------------------------------- data

def texts(n: int, seed: int, start: int = 0) -> list[str]:
    """`n` distinct synthetic passages (12-24 words of a 384-word vocabulary plus the item number)."""
    rng = random.Random(seed * 1_000_003 + start)
    return [f"memory {start + i} " + " ".join(rng.choices(_WORDS, k=rng.randint(12, 24))) for i in range(n)]


@functools.lru_cache(maxsize=4)
def corpus(n: int, seed: int, start: int = 0) -> tuple[list[str], np.ndarray]:
    """`texts(n, seed, start)` and their default hash-embedder vectors (cached: sections share them)."""
    contents = texts(n, seed, start)
    emb = HashingEmbedder()
    vecs = np.concatenate([emb.embed(contents[lo:lo + 2048]) for lo in range(0, n, 2048)]) if n else \
        np.zeros((0, emb.dim), dtype=np.float32)
    return contents, vecs.astype(np.float32, copy=False)


def new_memories(ns: str, owner: str, ids: Sequence[str], contents: Sequence[str], vectors: np.ndarray,
                 now_ms: int) -> list[NewMemory]:
    """NewMemory rows carrying the hash embedder's vectors (what `memory.store` would compute)."""
    eid = HashingEmbedder().embedder_id
    return [NewMemory(ns, mid, owner, "note", text, {}, vectors[i], eid, hlc_pack(now_ms, i % 60_000), None)
            for i, (mid, text) in enumerate(zip(ids, contents, strict=True))]


async def load_cluster(nodes: Sequence[BenchNode], records: Sequence[Record],
                       skip: Callable[[str, Record], bool] | None = None) -> dict[str, int]:
    """Apply `records` straight into the replica store of each of their owners (per the current
    placement) through ReplicaStore.apply: the same merge, digests and vector index a replica's lane
    commits, without client round trips. `skip(node_id, record)` leaves a copy out. Returns copies per node."""
    by_id = {x.identity.agent_id: x for x in nodes}
    first = nodes[0].cluster
    assert first is not None and first.replication.placement is not None
    pl = first.replication.placement
    per: dict[str, list[Record]] = {nid: [] for nid in by_id}
    for r in records:
        for owner in pl.owners(memory_key(*r.key)):
            if skip is None or not skip(owner, r):
                per[owner].append(r)

    async def fill(nid: str) -> None:
        c = by_id[nid].cluster
        svc = by_id[nid].service
        assert c is not None and svc is not None
        recs = per[nid]
        for lo in range(0, len(recs), APPLY_BATCH):
            await c.store.apply(recs[lo:lo + APPLY_BATCH], svc.wall_ms())

    async with trio.open_nursery() as nursery:
        for nid in per:
            nursery.start_soon(fill, nid)
    return {by_id[nid].name: len(v) for nid, v in per.items()}


async def load_single(node: BenchNode, mems: Sequence[NewMemory]) -> None:
    """Fill the baseline node through memory_store.store (what its memory.store action writes)."""
    svc = node.service
    assert svc is not None
    for lo in range(0, len(mems), APPLY_BATCH):
        batch, now_ms = mems[lo:lo + APPLY_BATCH], svc.wall_ms()

        def fn(conn: Any, batch: Sequence[NewMemory] = batch, now_ms: int = now_ms) -> Applied[None]:
            effects: list[Any] = []
            for m in batch:
                effects += memory_store.store(conn, m, now_ms).effects
            return Applied(None, tuple(effects))
        await svc.db.write(fn)


async def seal_indexes(nodes: Sequence[BenchNode]) -> None:
    """Seal every vector buffer (as the node's seal loop eventually does), so searches on both sides
    run against built indexes, not against whatever a bulk load left in the brute-force buffer."""
    for x in nodes:
        if x.service is not None:
            await x.service.spaces.seal_if_needed(force=True)


# ---------------------------------------------------------------- load driver

def pct(lat: Sequence[float]) -> dict[str, float]:
    a = np.asarray(lat, dtype=np.float64) * 1000
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p99_ms": round(float(np.percentile(a, 99)), 3),
            "max_ms": round(float(a.max()), 3)}


async def drive(clients: Sequence[MemoryClient], op: Callable[[MemoryClient, int], Awaitable[Any]], n: int,
                inflight: int) -> dict[str, Any]:
    """op(client, i) for i in 0..n-1 with `inflight` workers, worker w on clients[w % len]: ops/s and
    latency percentiles (each op timed from send to answer, through the websocket client API)."""
    lat: list[float] = []
    counter = iter(range(n))

    async def worker(c: MemoryClient) -> None:
        for i in counter:
            t = time.perf_counter()
            await op(c, i)
            lat.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for w in range(inflight):
            nursery.start_soon(worker, clients[w % len(clients)])
    dt = time.perf_counter() - t0
    return {"ops": n, "inflight": inflight, "ops_per_s": round(n / dt, 1), **pct(lat)}


@contextlib.asynccontextmanager
async def open_clients(nodes: Sequence[BenchNode], agent: Identity, count: int) -> AsyncIterator[list[MemoryClient]]:
    """`count` connected clients, round-robin over `nodes`, each held open by its own task and closed
    together on exit. (MemoryClient.aclose waits ~1 s for a close handshake that never completes: it
    cancels the nursery running the websocket's reader before closing it. Closed concurrently, 16
    clients cost 1 s, not 16.)"""
    clients = [nodes[i % len(nodes)].client(agent) for i in range(count)]
    done = trio.Event()

    async def hold(c: MemoryClient, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with c:
            task_status.started()
            await done.wait()

    async with trio.open_nursery() as nursery:
        try:
            for c in clients:
                await nursery.start(hold, c)
            yield clients
        finally:
            done.set()
