"""SWIM dissemination: the broadcast queue, piggyback packing, the gossip fan-out, push-pull full-state
sync, seed joins and their retries, and direct corrections to a member spreading stale news.

Owns what membership news goes out, to whom, and in which frame; it must not decide what a record
means (SwimNode applies records), read a clock, do I/O or use module-level randomness.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from gossip.broadcast import BroadcastQueue, retransmit_limit
from gossip.codec import GOSSIP_FIXED_BYTES, PUSHPULL_FIXED_BYTES, frame_overhead_bytes, update_bytes
from gossip.config import GossipConfig
from gossip.members import Member, MemberTable
from gossip.messages import Alive, Gossip, Message, NodeState, PushPull, Rng, State, Update

_LIVE = (State.ALIVE, State.SUSPECT)


class Disseminator:
    """Spreads updates and full state for one node. `send` queues a message; `stats` is the node's
    counter dict; `addr` is the node's own address (seeds equal to it are skipped)."""

    __slots__ = ("config", "queue", "seeds", "_table", "_rng", "_send", "_stats", "_addr", "_frame_budget",
                 "_record_bytes_max", "_push_pull_budget", "_last_seed_try")

    def __init__(
        self, config: GossipConfig, table: MemberTable, rng: Rng, send: Callable[[str, Message], None],
        stats: dict[str, int], network: str, addr: str, frame_budget: int, record_bytes_max: int,
    ) -> None:
        self.config = config
        self.queue = BroadcastQueue(config.retransmit_mult, config.broadcast_queue_max)
        self.seeds: tuple[str, ...] = ()
        self._table = table
        self._rng = rng
        self._send = send
        self._stats = stats
        self._addr = addr
        self._frame_budget = frame_budget
        self._record_bytes_max = record_bytes_max
        self._push_pull_budget = config.push_pull_bytes_max - frame_overhead_bytes(network, addr) - PUSHPULL_FIXED_BYTES
        self._last_seed_try = -math.inf

    def n(self) -> int:
        """The group size as this node sees it: live others plus itself."""
        return self._table.live_count() + 1

    # --- the broadcast queue ------------------------------------------------------------------------------

    def enqueue(self, u: Update) -> None:
        size = update_bytes(u)
        if size > self._record_bytes_max:
            self._stats["dropped_oversize"] += 1
            return
        self.queue.push(u, size)

    def enqueue_alive(self, a: Alive, size: int, news: bool) -> None:
        """Queue an Alive record already measured (`size`). Not `news`: likely known to the group already
        (learned from our join reply), so it gets the smallest budget, retransmit_mult sends."""
        if news:
            self.queue.push(a, size)
        else:
            limit = retransmit_limit(self.config.retransmit_mult, self.n())
            self.queue.push(a, size, sent=max(0, limit - self.config.retransmit_mult))

    def piggyback(self, budget: int) -> tuple[Update, ...]:
        """Queued updates for a message with `budget` bytes to spare, fewest-sent first."""
        if not self.queue:
            return ()
        updates, _ = self.queue.take(budget, self.n())
        self._stats["updates_sent"] += len(updates)
        return tuple(updates)

    def gossip(self, now: float) -> None:
        """One fan-out round: a Gossip frame to each of gossip_nodes random members (and the recently dead)."""
        cfg = self.config
        budget = self._frame_budget - GOSSIP_FIXED_BYTES
        for m in self._table.gossip_targets(cfg.gossip_nodes, now, cfg.gossip_to_the_dead_s):
            updates = self.piggyback(budget)
            if not updates:
                break
            self._send(m.addr, Gossip(updates))
            self._stats["gossip_sent"] += 1

    def correct(self, members: list[Member], addr: str) -> None:
        """Send `addr` the current Alive records of `members` (it spread suspicions they refuted)."""
        room = self._frame_budget - GOSSIP_FIXED_BYTES
        records: list[Update] = []
        for m in dict.fromkeys(members):
            room -= m.record_bytes
            if room < 0:
                break
            records.append(Alive(m.id, m.incarnation, m.addr, m.meta))
        self._stats["corrections_sent"] += 1
        self._send(addr, Gossip(tuple(records)))

    # --- push-pull and joins -------------------------------------------------------------------------------

    def push_pull_interval(self) -> float:
        # Grow the interval with log2(n) above the threshold (memberlist pushPullScale): sync load per
        # node stays flat as the state to exchange grows.
        cfg = self.config
        n = self.n()
        if n <= cfg.push_pull_scale_threshold:
            return cfg.push_pull_interval_s
        mult = math.ceil(math.log2(n) - math.log2(cfg.push_pull_scale_threshold)) + 1
        return cfg.push_pull_interval_s * mult

    def states(self) -> tuple[NodeState, ...]:
        """Our whole table (self first) as far as it fits in one push-pull frame."""
        budget = self._push_pull_budget
        out: list[NodeState] = []
        used = 0
        for m in self._table:
            used += m.record_bytes
            if used > budget:
                self._stats["push_pull_truncated"] += 1
                break
            out.append(NodeState(m.id, m.addr, m.incarnation, m.state, m.meta))
        return tuple(out)

    def push_pull(self, addr: str, join: bool = False) -> None:
        self._stats["push_pulls_sent"] += 1
        self._send(addr, PushPull(self.states(), join=join))

    def push_pull_random(self) -> None:
        for m in self._table.random_live(1, alive_only=True):
            self.push_pull(m.addr)

    def answer(self, src_addr: str, pp: PushPull) -> None:
        """Reply to a push-pull with our state (a reply itself is not answered)."""
        self._stats["push_pulls_received"] += 1
        if not pp.reply:
            self._send(src_addr, PushPull(self.states(), join=pp.join, reply=True))

    def join(self, seeds: Sequence[str], now: float) -> None:
        """Push-pull with every seed address; `retry_seeds` tries them again while none is live."""
        self.seeds = tuple(dict.fromkeys(s for s in seeds if s != self._addr))
        states = self.states()
        for addr in self.seeds:
            self._send(addr, PushPull(states, join=True))
            self._stats["push_pulls_sent"] += 1
        self._last_seed_try = now

    def retry_seeds(self, now: float) -> None:
        """Push-pull with one random seed if we are alone, or (once per push-pull interval) if no seed is
        live in our view: a node cut off since boot, or a partition's half without seeds, finds its way."""
        if not self.seeds:
            return
        table = self._table
        alone = table.live_count() == 0
        if alone or now - self._last_seed_try >= self.push_pull_interval():
            live_addrs = {m.addr for m in table if m.state in _LIVE}
            if alone or not live_addrs.intersection(self.seeds):
                self._last_seed_try = now
                addr = self.seeds[int(self._rng.random() * len(self.seeds))]
                self._stats["seed_retries"] += 1
                self.push_pull(addr, join=True)
