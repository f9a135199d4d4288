"""Fault injection around any gossip Transport: loss, added latency, one-way and two-way partitions
between named groups, and pause; changeable at runtime and counted. It must not inspect frames.
"""

from __future__ import annotations

from collections import deque

import trio

from gossip.sim import Latency, LinkFaults, UniformRng
from node.gossip_transport import Transport

__all__ = ["FaultyTransport", "Latency", "LinkFaults"]


class FaultyTransport:
    """Wraps `inner` (and runs it). Faults apply to this node's outgoing frames, judged by
    `rules` (a LinkFaults several nodes may share) with `rng`; pause holds both directions."""

    def __init__(self, inner: Transport, rng: UniformRng, rules: LinkFaults | None = None, *,
                 in_flight_max: int = 4096, held_max: int = 4096) -> None:
        self.inner = inner
        self.rng = rng
        self.rules = rules or LinkFaults()
        self.in_flight_max = in_flight_max
        """Frames waiting out their latency; beyond it new ones are dropped (counted)."""
        self.held_max = held_max
        """Outgoing frames held while paused; beyond it the oldest are dropped (counted)."""
        self._held: deque[tuple[str, bytes]] = deque()
        self._held_inbound: deque[bytes] = deque()
        self._resumed = trio.Event()
        self._resumed.set()
        self._in_flight = 0
        self._nursery: trio.Nursery | None = None
        self._stats = dict.fromkeys((
            "passed", "delayed", "dropped_random", "dropped_partition", "dropped_in_flight_full",
            "held", "dropped_held_full", "released", "held_inbound"), 0)

    @property
    def local_addr(self) -> str:
        return self.inner.local_addr

    @local_addr.setter
    def local_addr(self, addr: str) -> None:
        self.inner.local_addr = addr

    @property
    def paused(self) -> bool:
        return not self._resumed.is_set()

    def pause(self) -> None:
        """Hold everything: outgoing frames wait here, inbound ones wait in the inner transport's
        bounded queue; both flow, late, on resume (a SIGSTOPped process, in-process)."""
        if not self.paused:
            self._resumed = trio.Event()

    async def resume(self) -> None:
        if not self.paused:
            return
        self._resumed.set()
        while self._held and not self.paused:
            addr, frame = self._held.popleft()
            self._stats["released"] += 1
            await self._route(addr, frame)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.inner.run)
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    async def send(self, addr: str, frame: bytes) -> None:
        if self.paused:
            if len(self._held) >= self.held_max:
                self._held.popleft()
                self._stats["dropped_held_full"] += 1
            self._held.append((addr, frame))
            self._stats["held"] += 1
            return
        await self._route(addr, frame)

    async def receive(self) -> bytes:
        while True:
            if self.paused:
                await self._resumed.wait()  # cancellable without losing a frame: none is taken yet
            if self._held_inbound:
                return self._held_inbound.popleft()
            frame = await self.inner.receive()
            if not self.paused:
                return frame
            self._held_inbound.append(frame)  # at most one per waiting receiver
            self._stats["held_inbound"] += 1

    def statistics(self) -> dict[str, int]:
        inner = {f"inner_{k}": v for k, v in self.inner.statistics().items()}
        return {**self._stats, "in_flight": self._in_flight, "held_now": len(self._held), **inner}

    async def _route(self, addr: str, frame: bytes) -> None:
        rules = self.rules
        if rules.blocked(self.inner.local_addr, addr):
            self._stats["dropped_partition"] += 1
            return
        if rules.drop_rate > 0.0 and self.rng.random() < rules.drop_rate:
            self._stats["dropped_random"] += 1
            return
        delay_s = rules.latency.sample(self.rng)
        if delay_s <= 0.0:
            self._stats["passed"] += 1
            await self.inner.send(addr, frame)
            return
        if self._nursery is None:
            raise RuntimeError("transport is not running (start run() in a nursery first)")
        if self._in_flight >= self.in_flight_max:
            self._stats["dropped_in_flight_full"] += 1
            return
        self._in_flight += 1
        self._stats["delayed"] += 1
        self._nursery.start_soon(self._deliver_later, delay_s, addr, frame)

    async def _deliver_later(self, delay_s: float, addr: str, frame: bytes) -> None:
        try:
            await trio.sleep(delay_s)
            self._stats["passed"] += 1
            await self.inner.send(addr, frame)
        finally:
            self._in_flight -= 1
