"""Cluster mode for one node: assembles the replica store, the replication shell, the scatter search and
the cluster operations around a running Service, and feeds membership changes to the placement.

Owns start-up order and wiring only; it must not decide anything the parts decide.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import trio

from gossip.messages import MemberView
from node.cluster_ops import ClusterOps
from node.peer_links import REPLICA_PATH
from node.replica_store import ReplicaStore
from node.replication import ClusterConfig, Replication
from node.scatter_search import ScatterSearch

if TYPE_CHECKING:
    from node.membership import Membership
    from node.service import Service


class ClusterNode:
    """Turns `service` into a storage node of the ring. Create before the server starts (its
    `peer_handlers` go to run_node), then `await nursery.start(cluster.run)` once `service.membership`
    runs."""

    def __init__(self, service: Service, *, network: str = "default", config: ClusterConfig | None = None,
                 rng_seed: int | None = None) -> None:
        self.service = service
        self.config = config or ClusterConfig()
        self.store = ReplicaStore(service.db)
        self.replication = Replication(service.identity, self.store, self._members, network=network,
                                       config=self.config, wall_ms=service.wall_ms, rng_seed=rng_seed)
        from node.memory_actions import local_search
        self.scatter = ScatterSearch(self.replication, functools.partial(local_search, service),
                                     timeout_s=self.config.replication.request_timeout_s)
        self.peer_handlers = {REPLICA_PATH: self.replication.links.handle_request}
        service.replica_store = self.store
        service.cluster = ClusterOps(self.replication)
        service.scatter = self.scatter

    def _members(self) -> list[MemberView]:
        m = self.service.membership
        return m.members() if m is not None else []

    @property
    def membership(self) -> Membership:
        if self.service.membership is None:
            raise RuntimeError("cluster mode needs gossip membership (service.membership)")
        return self.service.membership

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        events = self.membership.subscribe()
        async with trio.open_nursery() as nursery:
            await nursery.start(self.replication.run)
            await nursery.start(self.scatter.run)
            nursery.start_soon(self._follow, events)
            self.replication.notify_membership()
            task_status.started()

    async def _follow(self, events: trio.MemoryReceiveChannel[object]) -> None:
        while True:
            async for _ in events:
                self.replication.notify_membership()
            # Fell behind and was dropped: subscribe again (the view is re-read in full anyway).
            events = self.membership.subscribe()
            self.replication.notify_membership()
