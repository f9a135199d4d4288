"""Cluster mode end to end in one process: real nodes (Service + gossip + replication) on 127.0.0.1,
clients talking to any node; quorum writes and reads, hinted handoff to a stopped node, anti-entropy,
scatter search with a partial answer, and a joining node pulling its share (rebalancing)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from crypto.errors import Unavailable
from crypto.identity import Identity
from gossip.config import GossipConfig
from gossip.messages import Meta
from node.client import MemoryClient
from node.cluster import ClusterNode
from node.config import NodeConfig
from node.gossip_transport import WebsocketTransport
from node.membership import Membership
from node.replication import ClusterConfig
from node.server import run_node
from node.service import Service
from ring.records import Kind

GOSSIP = GossipConfig.local()
# Anti-entropy every 10 s, not 30: a session's tree over ~100k shared partitions costs ~0.2 s of the
# event loop on each side, and four nodes share this process's two cores.
REPL = ClusterConfig().replication.replace(request_timeout_s=2.0, anti_entropy_interval_s=10.0,
                                           hint_retry_s=0.3, rebalance_nudge_interval_s=1.0)


@dataclasses.dataclass
class Node:
    name: str
    identity: Identity
    data: Path
    service: Service | None = None
    cluster: ClusterNode | None = None
    url: str = ""
    scope: trio.CancelScope | None = None

    def client(self, agent: Identity) -> MemoryClient:
        return MemoryClient(self.url, agent, sign_records=False)


async def start(nursery: trio.Nursery, node: Node, seeds: list[str], *, bootstrap_s: float = 0.0,
                dead_grace_s: float = 1800.0) -> None:
    cfg = ClusterConfig(replication=REPL, settle_s=0.2, bootstrap_s=bootstrap_s, gc_interval_s=3600.0,
                        dead_grace_s=dead_grace_s)

    async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            node.scope = scope
            service = Service(NodeConfig(fsync="normal"), node.data, node.identity)
            transport = WebsocketTransport()
            cluster = ClusterNode(service, network="t", config=cfg, rng_seed=7)
            async with trio.open_nursery() as inner:
                port = await inner.start(functools.partial(
                    run_node, service, "127.0.0.1", 0, gossip_handler=transport.handle_request,
                    peer_handlers=cluster.peer_handlers))
                node.url = f"ws://127.0.0.1:{port}"
                transport.local_addr = node.url
                service.membership = Membership(node.identity, node.url, Meta(roles=("storage",), endpoint=node.url),
                                                transport, config=GOSSIP, network="t", seeds=seeds,
                                                data_dir=node.data)
                await inner.start(service.membership.run)
                await inner.start(cluster.run)
                node.service, node.cluster = service, cluster
                task_status.started()
    await nursery.start(run)


async def until(pred: Callable[[], bool], timeout_s: float = 30.0, what: str = "") -> None:
    with trio.fail_after(timeout_s):
        while not pred():
            await trio.sleep(0.05)  # polling a view that has no event to wait on; bounded by fail_after


def placed(nodes: list[Node], n: int) -> bool:
    for x in nodes:
        r = x.cluster.replication if x.cluster else None
        if r is None or r.placement is None or len(r.placement.nodes) != n or len(r.alive) != n:
            return False
    return True


@pytest.fixture
def cluster_nodes(tmp_path: Path) -> Callable[[int], list[Node]]:
    def make(n: int) -> list[Node]:
        return [Node(f"n{i}", Identity.generate(), tmp_path / f"n{i}") for i in range(n)]
    return make


async def test_quorum_writes_reads_hints_and_search(cluster_nodes: Callable[[int], list[Node]]) -> None:
    nodes = cluster_nodes(4)
    agent = Identity.generate()
    ns = agent.agent_id
    async with trio.open_nursery() as nursery:
        await start(nursery, nodes[0], [], bootstrap_s=30)
        for x in nodes[1:]:
            await start(nursery, x, [nodes[0].url], bootstrap_s=30)
        await until(lambda: placed(nodes, 4), what="ring of 4")

        async with nodes[1].client(agent) as c:
            for i in range(40):
                await c.store(ns, f"memory number {i} about apples and pears {i * 7}", id=f"m{i}")
            await c.signal_set(ns, "mood", "calm")
            await c.signal_incr(ns, "hits", by=3)
            await c.signal_incr(ns, "hits", by=2)
            await c.state_publish({"step": 1})
        # Every write is readable at QUORUM through any other node, and each item has exactly 3 copies.
        async with nodes[3].client(agent) as c:
            for i in (0, 17, 39):
                m = await c.get(ns, f"m{i}")
                assert m.content.startswith(f"memory number {i} ")
            assert (await c.signal_get(ns, "mood")).value == "calm"
            assert (await c.signal_get(ns, "hits")).value == 5
            assert (await c.state_get(agent.agent_id))["doc"] == {"step": 1}
            found = await c.search("memory number 10 about apples and pears 70", limit=5)
            assert found.items and found.items[0].id == "m10"
            assert len({m.id for m in found.items}) == len(found.items)  # de-duplicated across replicas
        for mid in ("m0", "m17"):
            copies = [x for x in nodes if x.cluster and x.cluster.store.get(Kind.MEMORY, (ns, mid)) is not None]
            assert len(copies) == 3

        # Stop one owner of m5: writes still succeed (W=2), a stand-in keeps hints, and the owner gets
        # them once it is back; meanwhile search says which ranges it could not cover.
        r1 = nodes[1].cluster.replication if nodes[1].cluster else None
        assert r1 is not None and r1.placement is not None
        from ring.partition import memory_key
        owners = r1.placement.owners(memory_key(ns, "late"))
        victim = next(x for x in nodes[1:] if x.identity.agent_id in owners)
        assert victim.scope is not None
        victim.scope.cancel()
        coord = next(x for x in nodes if x is not victim)
        await until(lambda: all(
            x.cluster is not None and victim.identity.agent_id not in x.cluster.replication.alive
            for x in nodes if x is not victim), what="victim seen dead")
        async with coord.client(agent) as c:
            await c.store(ns, "written while an owner was down", id="late")
            res = await c.request("memory.search", None, {"query": "memory number 33 about apples and pears 231",
                                                           "limit": 3})
        # One owner down of three: every partition still has an answering replica, so the answer is whole.
        assert res.get("partial") is False and res["hits"][0]["id"] == "m33"
        assert sum(len(x.cluster.replication.hints) for x in nodes if x is not victim and x.cluster) >= 1

        await start(nursery, victim, [nodes[0].url])
        await until(lambda: victim.cluster is not None and victim.cluster.store.get(Kind.MEMORY, (ns, "late")) is not None,
                    what="hint delivered")
        await until(lambda: all(len(x.cluster.replication.hints) == 0 for x in nodes if x.cluster),
                    what="hints drained")
        nursery.cancel_scope.cancel()


async def test_consistency_all_fails_clearly_when_an_owner_is_down(cluster_nodes: Callable[[int], list[Node]]) -> None:
    nodes = cluster_nodes(3)
    agent = Identity.generate()
    async with trio.open_nursery() as nursery:
        await start(nursery, nodes[0], [], bootstrap_s=30)
        for x in nodes[1:]:
            await start(nursery, x, [nodes[0].url], bootstrap_s=30)
        await until(lambda: placed(nodes, 3))
        # Garbage, a text frame and a frame signed by a non-member on /replica: refused and counted,
        # and the node keeps serving peers and clients.
        from trio_websocket import open_websocket_url

        from node.replica_codec import encode_frame
        from ring.messages import GetRecord
        links = nodes[0].cluster.replication.links if nodes[0].cluster else None
        assert links is not None
        stranger = encode_frame(Identity.generate(), "t", nodes[0].service.wall_ms() if nodes[0].service else 0,
                                [GetRecord(1, Kind.STATE, ("x",))])
        async with open_websocket_url(nodes[0].url + "/replica") as ws:
            await ws.send_message(b"\xc1garbage")
            await ws.send_message("text")
            await ws.send_message(stranger)
        await until(lambda: links.stats["refused_frames"] >= 2 and links.stats["refused_non_member"] >= 1)
        assert nodes[2].scope is not None
        nodes[2].scope.cancel()
        await until(lambda: all(x.cluster is not None and len(x.cluster.replication.alive) == 2 for x in nodes[:2]))
        async with nodes[0].client(agent) as c:
            await c.store(agent.agent_id, "fine at quorum", id="q")  # 2 of 3 owners: W=2 met
            with pytest.raises(Unavailable) as err:
                await c.request("memory.store", agent.agent_id,
                                {"id": "a", "content": "needs all three", "consistency": "all"})
            assert err.value.details.get("required") == 3
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("founders_bootstrap_s", [1.0, 600.0])
async def test_a_joining_node_takes_its_share_and_old_owners_drop_theirs(
        cluster_nodes: Callable[[int], list[Node]], founders_bootstrap_s: float) -> None:
    """A 4th node joins a 3-node ring holding data: it pulls the ~98k partitions it gains (nearly all
    empty), the old owners drop them once it confirms, and every item ends with exactly its 3 owners.
    Also when it joins inside the founders' bootstrap window: founders that hold data move it anyway."""
    nodes = cluster_nodes(4)
    agent = Identity.generate()
    ns = agent.agent_id
    async with trio.open_nursery() as nursery:
        await start(nursery, nodes[0], [], bootstrap_s=founders_bootstrap_s)
        for x in nodes[1:3]:
            await start(nursery, x, [nodes[0].url], bootstrap_s=founders_bootstrap_s)
        await until(lambda: placed(nodes[:3], 3))
        await until(lambda: all(x.cluster is not None and x.cluster.replication.rb.settled() for x in nodes[:3]))
        async with nodes[0].client(agent) as c:
            for i in range(60):
                await c.store(ns, f"memory {i} before the join", id=f"j{i}")
        founders = [x.cluster.replication for x in nodes[:3] if x.cluster]
        if founders_bootstrap_s < 60:
            await until(lambda: all(trio.current_time() > r._bootstrap_until for r in founders))

        await start(nursery, nodes[3], [nodes[0].url])
        await until(lambda: placed(nodes, 4))
        repls = [x.cluster.replication for x in nodes if x.cluster]
        await until(lambda: all(r.rb.settled() for r in repls), timeout_s=120, what="rebalanced")
        newcomer = repls[3]
        assert newcomer.rb.statistics().partitions_pulled > 50_000
        assert sum(r.rb.statistics().partitions_dropped for r in repls[:3]) > 50_000
        from ring.partition import memory_key
        placement = newcomer.placement
        assert placement is not None
        owners = {i: set(placement.owners(memory_key(ns, f"j{i}"))) for i in range(60)}

        def holders(i: int) -> set[str]:
            return {x.identity.agent_id for x in nodes
                    if x.cluster and x.cluster.store.get(Kind.MEMORY, (ns, f"j{i}")) is not None}
        # The newcomer has what it owns; nobody keeps what it lost (the last drops may still be in the
        # lane when the rebalancers report settled, hence the bounded wait).
        await until(lambda: all(holders(i) == owners[i] for i in range(60)), what="items on exactly their owners")
        assert any(newcomer.me in o for o in owners.values())
        async with nodes[3].client(agent) as c:
            for i in (0, 31, 59):
                assert (await c.get(ns, f"j{i}")).content == f"memory {i} before the join"
        nursery.cancel_scope.cancel()


async def test_a_dead_node_leaves_the_ring_after_its_grace_and_its_data_is_re_replicated(
        cluster_nodes: Callable[[int], list[Node]]) -> None:
    """No membership event marks the end of a dead member's grace: the survivors drop it from the
    ring on time anyway, pull what it held from the other replicas, and every item is back to 3 copies."""
    nodes = cluster_nodes(4)
    agent = Identity.generate()
    ns = agent.agent_id
    async with trio.open_nursery() as nursery:
        # Founders in their bootstrap window form the ring without moves; once they hold data, the
        # death below moves it all the same.
        await start(nursery, nodes[0], [], bootstrap_s=30, dead_grace_s=2)
        for x in nodes[1:]:
            await start(nursery, x, [nodes[0].url], bootstrap_s=30, dead_grace_s=2)
        await until(lambda: placed(nodes, 4))
        repls = [x.cluster.replication for x in nodes if x.cluster]
        await until(lambda: all(r.rb.settled() for r in repls))
        async with nodes[0].client(agent) as c:
            for i in range(40):
                await c.store(ns, f"memory {i} before the death", id=f"d{i}")
        victim, survivors = nodes[3], nodes[:3]
        assert victim.scope is not None
        victim.scope.cancel()
        live = repls[:3]
        await until(lambda: all(r.placement is not None and len(r.placement.nodes) == 3 for r in live),
                    timeout_s=60, what="the dead node left the ring")
        await until(lambda: all(r.rb.settled() for r in live), timeout_s=120, what="re-replicated")
        def copies(i: int) -> int:
            return sum(1 for x in survivors if x.cluster and x.cluster.store.get(Kind.MEMORY, (ns, f"d{i}")) is not None)
        await until(lambda: all(copies(i) == 3 for i in range(40)), what="3 copies again")  # pages may be in the lane
        nursery.cancel_scope.cancel()


def test_coverage_names_exactly_the_partitions_with_no_answering_owner() -> None:
    from node.scatter_search import ScatterSearch
    from ring.partition import Placement, StorageNode, partition_range
    pl = Placement([StorageNode(f"s{i}") for i in range(5)], 3, partition_bits=10)
    answered = {"s0", "s1"}
    cov = ScatterSearch._coverage(pl, answered)
    lost = [p for p in range(1 << 10) if not set(pl.preference(p)) & answered]
    assert lost and cov["partial"] is True and cov["missing_partitions"] == len(lost)
    spans = sorted(partition_range(p, 10) for p in lost)
    lost_set = set(lost)
    for lo, hi in cov["missing_ranges"]:  # each listed range is made of lost partitions only, whole
        first, last = lo >> (64 - 10), (hi - 1) >> (64 - 10)
        assert all(p in lost_set for p in range(first, last + 1))
    listed = sum(hi - lo for lo, hi in cov["missing_ranges"])
    total = sum(hi - lo for lo, hi in spans)
    assert listed == total if not cov["missing_ranges_truncated"] else (listed < total and len(cov["missing_ranges"]) == 64)
    assert ScatterSearch._coverage(pl, {"s0", "s1", "s2"})["partial"] is False
