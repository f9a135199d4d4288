"""Rebalancing after a placement change, sans-IO: a node pulls the partitions it gained from their old
owners in resumable pages, and drops the partitions it lost once every new owner has confirmed them.

Owns the transfer and hand-over protocol and its statistics (its bounds are ReplicationConfig's
`rebalance_*` fields); it must not touch storage (a `ReplicaData` answers reads, effects carry writes
and drops), route client requests or read a clock.

Reads and writes during a move (the rule the coordinator and the shell follow):
- Writes go to the owners in the new placement as soon as a coordinator knows it. An old owner keeps
  a lost partition and still accepts writes to it (from coordinators still on the old placement) until
  it drops it. It drops only when every new owner's RbConfirm equals its digest *at that moment*, and
  the shell carries out DropPartitions before it applies any other write, so every write the old owner
  acknowledged is held by every new owner: nothing acknowledged is lost.
- Reads go to the new owners; one still pulling (`pending(p)`) answers "not ready" and the coordinator
  asks the next replica, or an old owner, which holds the data until it drops it.
- Effects are carried out in order: an RbConfirm is only sent after the pages it vouches for were applied.

Confirmation: a new owner "sweeps" a losing owner, pulling every page of the partition from it. If the
loser's digest was the same on the first and the last page, nothing changed in between (merges only
grow a partition), so every item it held is now merged here: the new owner sends RbConfirm(that digest).
A loser whose digest moved on answers retry (sweep again), and nudges unconfirmed new owners every
`rebalance_nudge_interval_s` (RbSweepMe), which also covers a lost RbConfirm or a new owner that restarted.
A new owner nudged for a partition it already swept from that loser re-sends its RbConfirm rather than
pulling the partition again: the confirm may only be queued behind its own writes (the shell sends it
once the pages are applied), and a loser whose digest moved on answers retry, which starts a real sweep.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from ring.config import ReplicationConfig
from ring.digest import RangeDigest
from ring.messages import (
    ApplyRecords,
    DigestWire,
    DropPartitions,
    ItemRef,
    RbConfirm,
    RbConfirmed,
    RbPage,
    RbPages,
    RbPull,
    RbPullMany,
    RbSweepMe,
    Send,
)
from ring.partition import Movement
from ring.replicaview import ReplicaData, Rng, as_ref, pack, ref_of, wire_bytes

Effect = Send | ApplyRecords | DropPartitions


@dataclass(slots=True)
class RebalanceStats:
    partitions_gained: int = 0
    partitions_pulled: int = 0
    pages_received: int = 0
    records_received: int = 0
    pages_served: int = 0
    records_served: int = 0
    confirms_sent: int = 0
    reconfirms_sent: int = 0
    confirms_accepted: int = 0
    confirms_stale: int = 0
    resweeps: int = 0
    timeouts: int = 0
    partitions_dropped: int = 0
    nudges_sent: int = 0
    messages_sent: int = 0
    messages_received: int = 0


@dataclass(slots=True)
class _Task:
    """Pull every page of `partition` from `source`, resuming at `cursor`; `confirm`: it is a losing
    owner we must sweep and confirm to."""

    partition: int
    source: str
    confirm: bool
    cursor: ItemRef | None = None
    first: DigestWire | None = None
    transfer: int = 0
    attempts: int = 0
    sent_at: float = 0.0


@dataclass(slots=True)
class _Group:
    """One RbPullMany in flight: fresh tasks (no cursor) of one source, by partition."""

    source: str
    tasks: dict[int, _Task]
    attempts: int = 1
    sent_at: float = 0.0


@dataclass(slots=True)
class _Owned:
    """A moved partition this node owns in the new placement (gained, or kept beside losing owners)."""

    movement: Movement
    gained: bool
    have_data: bool

    @property
    def sources(self) -> tuple[str, ...]:
        """Old owners to pull from: losers first (their pull doubles as their sweep)."""
        m = self.movement
        return m.lost + tuple(n for n in m.old if n not in m.lost)


@dataclass(slots=True)
class _Lost:
    confirmers: tuple[str, ...]
    confirmed: dict[str, DigestWire] = field(default_factory=dict)


class Rebalancer:
    """One node's side of every move: `plan(diff(old, new))` on each placement change (the diff from the
    last settled placement), then `handle`/`tick` return effects; `next_deadline` says when to tick."""

    def __init__(self, me: str, view: ReplicaData, config: ReplicationConfig, rng: Rng, now: float) -> None:
        self.me, self._view, self._config, self._rng = me, view, config, rng
        self._owned: dict[int, _Owned] = {}
        self._lost: dict[int, _Lost] = {}
        self._queue: deque[_Task] = deque()
        self._delayed: list[tuple[float, int, _Task]] = []
        self._active: dict[int, _Task] = {}
        self._groups: dict[int, _Group] = {}
        self._tasks: set[tuple[int, str]] = set()
        self._vouched: dict[tuple[int, str], DigestWire] = {}  # (partition, loser): digest we last confirmed
        self._per_partition: Counter[int] = Counter()
        self._seq = 0
        self._nudge_s = math.inf
        self._stats = RebalanceStats()

    # ---- public ----
    def statistics(self) -> RebalanceStats:
        return dataclasses.replace(self._stats)

    def pending(self, partition: int) -> bool:
        """Gained and not yet pulled: reads of it should go to another replica."""
        o = self._owned.get(partition)
        return o is not None and not o.have_data

    def keeping(self, partition: int) -> bool:
        """Lost but not yet dropped: still served and still written."""
        return partition in self._lost

    def forget_confirm(self, partition: int, loser: str) -> None:
        """The shell could not commit the pages an RbConfirm to `loser` vouched for (the confirm was
        not sent): a nudge must start a new sweep, not repeat that confirm."""
        self._vouched.pop((partition, loser), None)

    def settled(self) -> bool:
        return not self._lost and not self._tasks and all(o.have_data for o in self._owned.values())

    def plan(self, movements: Sequence[Movement], now: float) -> list[Effect]:
        """Adopt the moves of a placement change. Work on partitions that stay in the plan carries over."""
        me = self.me
        owned: dict[int, _Owned] = {}
        lost: dict[int, _Lost] = {}
        for m in movements:
            p = m.partition
            if me in m.new and (me in m.gained or m.lost):
                prev = self._owned.get(p)
                gained = me in m.gained
                have = not gained or not m.old or (prev is not None and prev.have_data and prev.movement.old == m.old)
                owned[p] = _Owned(m, gained, have)
                if gained and (prev is None or not prev.gained):
                    self._stats.partitions_gained += 1
            if me in m.lost:
                confirmers = m.gained or m.new  # no new node: a remaining owner vouches instead
                prev_lost = self._lost.get(p)
                kept = {c: d for c, d in prev_lost.confirmed.items() if c in confirmers} if prev_lost else {}
                lost[p] = _Lost(confirmers, kept)
        self._owned, self._lost = owned, lost
        self._vouched = {(p, loser): d for (p, loser), d in self._vouched.items()
                         if p in owned and loser in owned[p].movement.lost}
        keep = [t for t in self._all_tasks() if t.partition in owned and t.source in owned[t.partition].movement.old]
        self._queue, self._delayed, self._active, self._groups = deque(), [], {}, {}
        self._tasks.clear()
        self._per_partition.clear()
        for t in keep:
            self._enqueue(t, now)
        for p, o in owned.items():
            if not o.gained or self._per_partition[p]:
                continue
            losers = o.movement.lost
            if losers:
                for loser in losers:
                    self._enqueue(_Task(p, loser, True), now)
            elif not o.have_data:
                self._enqueue(_Task(p, o.sources[0], False), now)
        self._nudge_s = now + self._config.rebalance_nudge_interval_s if lost else math.inf
        return self._pump(now)

    def handle(self, src: str, msg: object, now: float) -> list[Effect]:
        self._stats.messages_received += 1  # (bytes: the shell's links count what crossed the wire)
        if isinstance(msg, RbPull):
            return [self._serve(src, msg)]
        if isinstance(msg, RbPullMany):
            return [self._serve_many(src, msg)]
        if isinstance(msg, RbPage):
            return self._on_page(src, msg, now) + self._pump(now)
        if isinstance(msg, RbPages):
            return self._on_pages(src, msg, now) + self._pump(now)
        if isinstance(msg, RbConfirm):
            return self._on_confirm(src, msg)
        if isinstance(msg, RbConfirmed):
            if msg.ok:  # kept: a nudge that crossed this answer gets the same confirm again
                return []
            self._vouched.pop((msg.partition, src), None)
            if msg.retry:
                self._sweep(msg.partition, src, now)
            return self._pump(now)
        if isinstance(msg, RbSweepMe):
            effects: list[Effect] = []
            for p in msg.partitions[: self._config.rebalance_partitions_per_nudge_max]:
                vouched = self._vouched.get((p, src))
                if vouched is not None and p in self._owned:
                    self._stats.reconfirms_sent += 1
                    effects.append(self._send(src, RbConfirm(p, vouched)))
                else:
                    self._sweep(p, src, now)
            return effects + self._pump(now)
        return []

    def tick(self, now: float) -> list[Effect]:
        effects: list[Effect] = []
        while self._delayed and self._delayed[0][0] <= now:
            self._queue.append(heapq.heappop(self._delayed)[2])
        pulls: list[tuple[int, _Task | _Group]] = [*self._active.items(), *self._groups.items()]
        for tid, pull in pulls:
            if now - pull.sent_at < self._config.rebalance_request_timeout_s:
                continue
            if pull.attempts >= self._config.rebalance_request_attempts_max:
                tasks = [pull] if isinstance(pull, _Task) else list(self._groups.pop(tid).tasks.values())
                for t in tasks:
                    self._stats.timeouts += 1
                    self._finish(t)
                    self._give_up(t, now)
            else:
                pull.attempts += 1
                pull.sent_at = now
                msg = RbPull(tid, pull.partition, pull.cursor) if isinstance(pull, _Task) \
                    else RbPullMany(tid, tuple(pull.tasks))
                effects.append(self._send(pull.source, msg))
        if now >= self._nudge_s:
            self._nudge_s = now + self._config.rebalance_nudge_interval_s
            effects += self._nudges()
        return effects + self._pump(now)

    def next_deadline(self) -> float:
        t = self._nudge_s
        if self._delayed:
            t = min(t, self._delayed[0][0])
        for task in self._active.values():
            t = min(t, task.sent_at + self._config.rebalance_request_timeout_s)
        for g in self._groups.values():
            t = min(t, g.sent_at + self._config.rebalance_request_timeout_s)
        return t

    # ---- serving and losing ----
    def _serve(self, src: str, msg: RbPull) -> Send:
        after = None if msg.after is None else as_ref(msg.after)
        cfg = self._config
        page = self._build_page(msg.transfer, msg.partition, after, cfg.rebalance_records_per_page_max,
                                cfg.rebalance_page_bytes_max)
        assert page is not None  # the budget is positive
        self._stats.pages_served += 1
        return self._send(src, page)

    def _serve_many(self, src: str, msg: RbPullMany) -> Send:
        """Whole partitions while the page budget lasts; the first one that does not fit whole is cut
        (at least one record, so a reply always makes progress) and ends the reply."""
        cfg = self._config
        records_left, bytes_left = cfg.rebalance_records_per_page_max, cfg.rebalance_page_bytes_max
        pages: list[RbPage] = []
        for p in msg.partitions[:cfg.rebalance_partitions_per_pull_max]:
            page = self._build_page(msg.transfer, p, None, records_left, bytes_left)
            if page is None:
                break
            pages.append(page)
            records_left -= len(page.records)
            bytes_left -= sum(wire_bytes(r) for r in page.records)
            if page.next is not None:
                break
        self._stats.pages_served += len(pages)
        return self._send(src, RbPages(msg.transfer, tuple(pages)))

    def _build_page(self, transfer: int, p: int, after: ItemRef | None, records_max: int,
                    bytes_max: int) -> RbPage | None:
        """Records of `p` after `after` within the budget, and the digest they are as of; None if `p`
        holds something and the budget is spent. An empty partition costs no read."""
        d = self._digest(p)
        if d[1] == 0:
            return RbPage(transfer, p, after, (), None, d)
        if records_max <= 0 or bytes_max <= 0:
            return None
        records = self._view.records_after(p, after, records_max)
        sent = pack(records, bytes_max)
        more = len(sent) < len(records) or len(records) == records_max
        self._stats.records_served += len(sent)
        return RbPage(transfer, p, after, tuple(sent), ref_of(sent[-1]) if more and sent else None, d)

    def _on_confirm(self, src: str, msg: RbConfirm) -> list[Effect]:
        p = msg.partition
        lost = self._lost.get(p)
        if lost is None or src not in lost.confirmers:
            return [self._send(src, RbConfirmed(p, False))]  # not (or no longer) ours to release
        current = self._digest(p)
        if tuple(msg.digest) != current:
            self._stats.confirms_stale += 1
            return [self._send(src, RbConfirmed(p, False, retry=True))]
        self._stats.confirms_accepted += 1
        lost.confirmed[src] = current
        effects: list[Effect] = []
        if all(lost.confirmed.get(c) == current for c in lost.confirmers):
            del self._lost[p]
            self._stats.partitions_dropped += 1
            effects.append(DropPartitions((p,)))
            if not self._lost:
                self._nudge_s = math.inf
        return effects + [self._send(src, RbConfirmed(p, True))]

    def _nudges(self) -> list[Effect]:
        """Ask every new owner that has not confirmed our current digest to sweep us (again)."""
        cap = self._config.rebalance_partitions_per_nudge_max
        wanted: dict[str, list[int]] = {}
        for p, lost in self._lost.items():
            current: DigestWire | None = None
            for c in lost.confirmers:
                got = lost.confirmed.get(c)
                if got is not None:
                    current = current or self._digest(p)  # only read when some owner has confirmed
                    if got == current:
                        continue
                ps = wanted.setdefault(c, [])
                if len(ps) < cap:  # one message per new owner per interval: the rest in the next ones
                    ps.append(p)
        self._stats.nudges_sent += len(wanted)
        return [self._send(c, RbSweepMe(tuple(ps))) for c, ps in sorted(wanted.items())]

    # ---- pulling ----
    def _on_page(self, src: str, msg: RbPage, now: float) -> list[Effect]:
        t = self._active.get(msg.transfer)
        after = None if msg.after is None else as_ref(msg.after)
        if t is None or t.source != src or t.partition != msg.partition or after != t.cursor:
            return []  # duplicate, late or foreign page
        return self._page(t, src, msg, now)

    def _on_pages(self, src: str, msg: RbPages, now: float) -> list[Effect]:
        g = self._groups.get(msg.transfer)
        if g is None or g.source != src:
            return []  # duplicate, late or foreign reply
        del self._groups[msg.transfer]
        effects: list[Effect] = []
        for page in msg.pages:
            t = g.tasks.pop(page.partition, None)
            if t is not None and page.after is None:
                effects += self._page(t, src, page, now)
        for t in g.tasks.values():  # not served this time (the reply was full): first in line again
            t.transfer = 0
            self._queue.appendleft(t)
        return effects

    def _page(self, t: _Task, src: str, msg: RbPage, now: float) -> list[Effect]:
        bits = self._view.partition_bits
        records = tuple(r for r in msg.records if r.partition(bits) == t.partition)
        self._stats.pages_received += 1
        self._stats.records_received += len(records)
        effects: list[Effect] = [ApplyRecords(src, records)] if records else []
        digest: DigestWire = (int(msg.digest[0]), int(msg.digest[1]))
        if t.first is None:
            t.first = digest
        o = self._owned.get(t.partition)
        if msg.next is not None:
            if t.transfer not in self._active:  # the rest of a partition from an RbPullMany: pulled alone
                t.transfer = self._new_transfer_id()
                self._active[t.transfer] = t
            t.cursor, t.attempts, t.sent_at = as_ref(msg.next), 1, now
            return effects + [self._send(src, RbPull(t.transfer, t.partition, t.cursor))]
        self._finish(t)
        if o is not None and o.gained and not o.have_data:
            o.have_data = True
            self._stats.partitions_pulled += 1
        if t.confirm:
            if t.first == digest:
                self._stats.confirms_sent += 1
                self._vouched[(t.partition, src)] = digest
                effects.append(self._send(src, RbConfirm(t.partition, digest)))
            else:  # the loser changed while we swept it: what it gained since may have been skipped
                self._stats.resweeps += 1
                self._enqueue(_Task(t.partition, src, True), now)
        return effects

    def _sweep(self, p: int, loser: str, now: float) -> None:
        o = self._owned.get(p)
        if o is not None and loser in o.movement.lost and (p, loser) not in self._tasks:
            self._enqueue(_Task(p, loser, True), now)

    def _give_up(self, t: _Task, now: float) -> None:
        """A source stopped answering. A loser's sweep waits for its nudge; missing data is pulled from
        the next old owner, resuming at the cursor (pages are ranges of one item order everywhere)."""
        o = self._owned.get(t.partition)
        if o is None or o.have_data or self._per_partition[t.partition]:
            return
        sources = o.sources
        i = (sources.index(t.source) + 1) % len(sources) if t.source in sources else 0
        nxt = _Task(t.partition, sources[i], False, t.cursor)
        self._enqueue(nxt, now + (self._config.rebalance_retry_backoff_s if i == 0 else 0.0))

    def _enqueue(self, t: _Task, ready_s: float) -> None:
        t.first, t.attempts, t.transfer = None, 0, 0
        if t.confirm:
            t.cursor = None  # a sweep is only a proof if it is whole
        self._tasks.add((t.partition, t.source))
        self._per_partition[t.partition] += 1
        self._seq += 1
        heapq.heappush(self._delayed, (ready_s, self._seq, t))

    def _finish(self, t: _Task) -> None:
        self._active.pop(t.transfer, None)
        self._tasks.discard((t.partition, t.source))
        self._per_partition[t.partition] -= 1

    def _pump(self, now: float) -> list[Effect]:
        while self._delayed and self._delayed[0][0] <= now:
            self._queue.append(heapq.heappop(self._delayed)[2])
        effects: list[Effect] = []
        while self._queue and len(self._active) + len(self._groups) < self._config.rebalance_transfers_in_flight_max:
            t = self._queue.popleft()
            tid = self._new_transfer_id()
            group = [t] + self._take_fresh(t.source) if t.cursor is None else [t]
            if len(group) > 1:
                for x in group:
                    x.transfer = tid
                self._groups[tid] = _Group(t.source, {x.partition: x for x in group}, 1, now)
                effects.append(self._send(t.source, RbPullMany(tid, tuple(x.partition for x in group))))
                continue
            t.transfer, t.attempts, t.sent_at = tid, 1, now
            self._active[tid] = t
            effects.append(self._send(t.source, RbPull(tid, t.partition, t.cursor)))
        return effects

    def _take_fresh(self, source: str) -> list[_Task]:
        """More queued tasks without a cursor from `source`, for one RbPullMany; looks a bounded way
        down the queue and leaves the others in their order."""
        want = self._config.rebalance_partitions_per_pull_max - 1
        taken: list[_Task] = []
        skipped: list[_Task] = []
        while self._queue and len(taken) < want and len(skipped) < 4 * want:
            t = self._queue.popleft()
            if t.source == source and t.cursor is None:  # (partition, source) is unique among tasks
                taken.append(t)
            else:
                skipped.append(t)
        self._queue.extendleft(reversed(skipped))
        return taken

    # ---- helpers ----
    def _all_tasks(self) -> list[_Task]:
        return (list(self._active.values()) + [t for g in self._groups.values() for t in g.tasks.values()]
                + list(self._queue) + [t for _, _, t in self._delayed])

    def _digest(self, p: int) -> DigestWire:
        d = self._view.digests([p]).get(p, RangeDigest())
        return d.sum, d.count

    def _new_transfer_id(self) -> int:
        while True:
            tid = 1 + int(self._rng.random() * (1 << 53))
            if tid not in self._active and tid not in self._groups:
                return tid

    def _send(self, to: str, msg: object) -> Send:
        self._stats.messages_sent += 1
        return Send(to, msg)
