"""The replication coordinator: turns a client write or read of one item into PutRecord/GetRecord
messages to the item's replicas, counts acks and answers with WriteQuorum/ReadQuorum, retries,
redirects to stand-ins (sloppy quorum), answers the client and repairs stale replicas.

Sans-IO: `write`/`read`/`handle`/`tick` return effects (`Send`, `Done`); it never touches storage
(its own replica is a message to itself), sockets or a clock (`now` is passed in).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Protocol

from crypto.errors import InvalidArgument
from ring.config import ReplicationConfig
from ring.messages import HANDOFF_REQ_LIMIT, Done, GetRecord, GetReply, PutAck, PutRecord, Send
from ring.partition import Placement
from ring.quorum import Consistency, Outcome, ReadQuorum, WriteQuorum, required
from ring.records import Kind, Record, merge

Effect = Send | Done

_REQ_SPAN_BITS = 61  # random start of request ids within [2**62, 2**62 + 2**61): room for 2**61 requests


class Rng(Protocol):
    """What the coordinator draws at random; `random.Random` satisfies it."""

    def getrandbits(self, k: int, /) -> int: ...


@dataclass(frozen=True, slots=True)
class View:
    """The coordinator's belief about the cluster: placement (who owns what) and who is up."""

    placement: Placement
    alive: frozenset[str]


class _Write:
    __slots__ = ("req", "client_req", "record", "partition", "placement", "quorum", "target_of", "failed_nodes",
                 "filled", "stand_ins", "deadline", "timer_at")

    def __init__(self, req: int, client_req: int, record: Record, placement: Placement, quorum: WriteQuorum,
                 deadline: float) -> None:
        self.req, self.client_req, self.record = req, client_req, record
        self.placement = placement
        self.partition = record.partition(placement.partition_bits)
        self.quorum = quorum
        self.target_of: dict[str, str] = {}  # node sent to -> the owner slot it serves
        self.failed_nodes: set[str] = set()  # nodes that answered ok=False
        self.filled: set[str] = set()  # owner slots with an ack
        self.stand_ins: dict[str, int] = {}  # owner -> stand-ins tried for it
        self.deadline = deadline
        self.timer_at = -math.inf  # none armed yet


class _Read:
    __slots__ = ("req", "client_req", "kind", "key", "quorum", "asked", "repaired", "deadline", "timer_at",
                 "decided")

    def __init__(self, req: int, client_req: int, kind: Kind, key: tuple[str, ...], quorum: ReadQuorum[Record],
                 deadline: float) -> None:
        self.req, self.client_req, self.kind, self.key = req, client_req, kind, key
        self.quorum = quorum
        self.asked: set[str] = set()
        self.repaired: dict[str, object] = {}  # node -> version last sent to it by read repair
        self.deadline = deadline
        self.timer_at = -math.inf  # none armed yet
        self.decided = False


class Coordinator:
    """Coordinates writes and reads of single items for one node (`node_id`).

    A write is sent to every owner believed alive; with `config.sloppy_quorum`, an owner believed
    down, failing, or silent for `config.replica_timeout_s` gets a stand-in (the next healthy node in the
    partition's rendezvous order) that keeps the record as a hint. Success needs `required(...)`
    distinct nodes' acks (WriteQuorum); anything else ends in `Done(ok=False, code="unavailable")`
    with the counts — never a false success. A read asks every live owner, answers at R, and sends
    the merged record to every answering replica whose copy differs, late answers included.
    Silent replicas are re-sent the same request every `config.replica_timeout_s` (puts are joins and gets
    are reads, so repeats are harmless) until the request's deadline.
    """

    def __init__(self, node_id: str, config: ReplicationConfig | None = None, rng: Rng | None = None) -> None:
        if not isinstance(node_id, str) or not node_id:
            raise InvalidArgument("node_id must be a non-empty string")
        self.node_id = node_id
        self.config = config or ReplicationConfig()
        self._next_req = HANDOFF_REQ_LIMIT + (rng.getrandbits(_REQ_SPAN_BITS) if rng is not None else 0)
        self._view: View | None = None
        self._writes: dict[int, _Write] = {}
        self._reads: dict[int, _Read] = {}
        self._timers: list[tuple[float, int]] = []
        self.stats: dict[str, int] = dict.fromkeys(
            ("writes_ok", "writes_failed", "reads_ok", "reads_failed", "overloaded", "stand_ins", "resends",
             "repairs"), 0)

    # ---- view ----
    def set_view(self, placement: Placement, alive: Collection[str]) -> None:
        """New placement and liveness belief; requests in flight keep the owners they started with."""
        self._view = View(placement, frozenset(alive))

    def _alive(self, node: str) -> bool:
        return node == self.node_id or (self._view is not None and node in self._view.alive)

    # ---- client requests ----
    def write(self, client_req: int, record: Record, consistency: Consistency | int | None, now: float) -> list[Effect]:
        """Replicate `record` (merged into each replica's copy). `consistency` None: config.w_replicas."""
        refused = self._refuse(client_req)
        if refused or self._view is None:
            return refused or [self._unavailable(client_req, "no placement yet")]
        placement = self._view.placement
        owners = placement.owners(record.ring_hash)
        w = self._count(consistency, self.config.w_replicas, len(owners))
        if w is None:
            return [self._unavailable(client_req, "consistency exceeds replicas", replicas=len(owners))]
        deadline = now + self.config.request_timeout_s
        op = _Write(self._new_req(), client_req, record, placement,
                    WriteQuorum(owners, w, deadline, sloppy=self.config.sloppy_quorum), deadline)
        self._writes[op.req] = op
        out: list[Effect] = []
        for owner in owners:
            if self._alive(owner):
                self._send_put(op, owner, owner, out)
            elif not self._add_stand_in(op, owner, out):
                op.quorum.fail(owner, "down")
        return self._settle_write(op, now, out)

    def read(self, client_req: int, kind: Kind, key: tuple[str, ...], consistency: Consistency | int | None,
             now: float) -> list[Effect]:
        """Read one item from its owners; `Done.record` is the merge of R (or more) answers."""
        refused = self._refuse(client_req)
        if refused or self._view is None:
            return refused or [self._unavailable(client_req, "no placement yet")]
        owners = self._view.placement.owners(Record(kind, key, None).ring_hash)
        r = self._count(consistency, self.config.r_replicas, len(owners))
        if r is None:
            return [self._unavailable(client_req, "consistency exceeds replicas", replicas=len(owners))]
        deadline = now + self.config.request_timeout_s
        op = _Read(self._new_req(), client_req, kind, key, ReadQuorum(owners, r, deadline, merge), deadline)
        self._reads[op.req] = op
        out: list[Effect] = []
        for owner in owners:
            if self._alive(owner):
                op.asked.add(owner)
                out.append(Send(owner, GetRecord(op.req, kind, key)))
            else:
                op.quorum.fail(owner, "down")
        return self._settle_read(op, now, out)

    # ---- replies and time ----
    def handle(self, src: str, msg: object, now: float) -> list[Effect]:
        """A PutAck or GetReply from `src` (the shell verified who sent it). Unknown requests
        (finished, repairs, or from before a restart) are ignored."""
        out: list[Effect] = []
        if isinstance(msg, PutAck):
            op = self._writes.get(msg.req)
            owner = op.target_of.get(src) if op is not None else None
            if op is None or owner is None:
                return out
            if msg.ok:
                op.filled.add(owner)
                op.quorum.ack(src, stands_in_for=None if src == owner else owner)
            else:
                op.failed_nodes.add(src)
                if owner not in op.filled and not self._add_stand_in(op, owner, out) and \
                        all(n in op.failed_nodes for n, o in op.target_of.items() if o == owner):
                    op.quorum.fail(owner, msg.code or "failed")
            return self._settle_write(op, now, out)
        if isinstance(msg, GetReply):
            rd = self._reads.get(msg.req)
            if rd is None or src not in rd.asked:
                return out
            if msg.ok:
                rd.quorum.respond(src, msg.record)
            else:
                rd.quorum.fail(src, msg.code or "failed")
            return self._settle_read(rd, now, out)
        return out

    def tick(self, now: float) -> list[Effect]:
        """Resend to silent replicas, add stand-ins, and fail requests past their deadline."""
        out: list[Effect] = []
        while self._timers and self._timers[0][0] <= now:
            at, req = heapq.heappop(self._timers)
            op = self._writes.get(req)
            if op is not None and op.timer_at == at:
                self._retry_write(op, now, out)
                self._settle_write(op, now, out)
                continue
            rd = self._reads.get(req)
            if rd is not None and rd.timer_at == at:
                self._retry_read(rd, now, out)
                self._settle_read(rd, now, out)
        return out

    def next_deadline(self) -> float | None:
        """When `tick` must be called next; None when nothing is in flight."""
        while self._timers:
            at, req = self._timers[0]
            op: _Write | _Read | None = self._writes.get(req) or self._reads.get(req)
            if op is not None and op.timer_at == at:
                return at
            heapq.heappop(self._timers)
        return None

    @property
    def pending(self) -> int:
        return len(self._writes) + len(self._reads)

    def statistics(self) -> dict[str, int]:
        return {**self.stats, "pending_writes": len(self._writes), "pending_reads": len(self._reads)}

    # ---- writes ----
    def _send_put(self, op: _Write, node: str, owner: str, out: list[Effect]) -> None:
        op.target_of[node] = owner
        out.append(Send(node, PutRecord(op.req, op.record, None if node == owner else owner)))

    def _add_stand_in(self, op: _Write, owner: str, out: list[Effect]) -> bool:
        """Send the write to one more stand-in for `owner`'s slot, if sloppy and one is left."""
        tried = op.stand_ins.get(owner, 0)
        if not self.config.sloppy_quorum or tried >= self.config.stand_ins_per_slot_max or self._view is None:
            return False
        alive = self._view.alive | {self.node_id}
        # A node serves one slot at most, so one physical copy never counts twice toward W.
        excluded = {n for n in op.placement.nodes if n not in alive} | op.target_of.keys() | op.failed_nodes
        found = op.placement.stand_ins(op.partition, excluded, 1)
        if not found:
            return False
        op.stand_ins[owner] = tried + 1
        self.stats["stand_ins"] += 1
        self._send_put(op, found[0], owner, out)
        return True

    def _retry_write(self, op: _Write, now: float, out: list[Effect]) -> None:
        if now >= op.deadline:
            op.quorum.expire(now)
            return
        for owner in op.quorum.replicas:
            if owner in op.filled:
                continue
            silent = [n for n, o in op.target_of.items() if o == owner and n not in op.failed_nodes]
            for node in silent:  # the put or its ack may have been lost
                self.stats["resends"] += 1
                self._send_put(op, node, owner, out)
            if owner not in op.target_of and self._alive(owner):
                self._send_put(op, owner, owner, out)  # believed down at first, up now
            self._add_stand_in(op, owner, out)

    def _settle_write(self, op: _Write, now: float, out: list[Effect]) -> list[Effect]:
        q = op.quorum
        if q.outcome is Outcome.SUCCEEDED:
            self.stats["writes_ok"] += 1
            out.append(Done(op.client_req, True, None, "ok", {
                "acked": sorted(q.acked), "required": q.w, "hints": q.hints()}))
        elif q.outcome is Outcome.FAILED:
            self.stats["writes_failed"] += 1
            err = q.error()
            out.append(Done(op.client_req, False, None, "unavailable", err.details if err else {}))
        else:
            self._arm(op, now)
            return out
        del self._writes[op.req]
        return out

    # ---- reads ----
    def _retry_read(self, rd: _Read, now: float, out: list[Effect]) -> None:
        if now >= rd.deadline:
            rd.quorum.expire(now)
            return
        answered, failed = rd.quorum.answers, rd.quorum.failed
        for owner in rd.quorum.replicas:
            if owner in answered or (owner in failed and owner in rd.asked) or not self._alive(owner):
                continue
            if owner in rd.asked:
                self.stats["resends"] += 1
            rd.asked.add(owner)
            out.append(Send(owner, GetRecord(rd.req, rd.kind, rd.key)))

    def _settle_read(self, rd: _Read, now: float, out: list[Effect]) -> list[Effect]:
        q = rd.quorum
        if not rd.decided and q.outcome is not Outcome.PENDING:
            rd.decided = True
            if q.outcome is Outcome.SUCCEEDED:
                self.stats["reads_ok"] += 1
                out.append(Done(rd.client_req, True, q.result(), "ok", {
                    "answered": sorted(q.answers), "required": q.r}))
            else:
                self.stats["reads_failed"] += 1
                err = q.error()
                out.append(Done(rd.client_req, False, None, "unavailable", err.details if err else {}))
        if q.outcome is Outcome.SUCCEEDED:
            self._repair(rd, out)
        unsettled = rd.asked - q.answers.keys() - q.failed.keys()
        if q.outcome is Outcome.FAILED or not unsettled or now >= rd.deadline:
            del self._reads[rd.req]
        else:
            self._arm(rd, now)
        return out

    def _repair(self, rd: _Read, out: list[Effect]) -> None:
        """Read repair: the merged record to every answering replica whose copy differs from it."""
        merged = rd.quorum.result()
        if merged is None:
            return
        version = merged.version
        for node in rd.quorum.stale():
            if rd.repaired.get(node) != version:
                rd.repaired[node] = version
                self.stats["repairs"] += 1
                out.append(Send(node, PutRecord(self._new_req(), merged, None)))

    # ---- helpers ----
    def _arm(self, op: _Write | _Read, now: float) -> None:
        """One live timer per request: the next resend (or the deadline, whichever is first)."""
        if op.timer_at > now:
            return
        op.timer_at = min(now + self.config.replica_timeout_s, op.deadline)
        heapq.heappush(self._timers, (op.timer_at, op.req))

    def _new_req(self) -> int:
        self._next_req += 1
        return self._next_req

    def _refuse(self, client_req: int) -> list[Effect]:
        if self.pending < self.config.pending_requests_max:
            return []
        self.stats["overloaded"] += 1
        return [self._unavailable(client_req, "coordinator overloaded", pending_max=self.config.pending_requests_max)]

    @staticmethod
    def _count(consistency: Consistency | int | None, default: int, n: int) -> int | None:
        if consistency is None:
            return min(default, n)
        try:
            return required(consistency, n)
        except InvalidArgument:
            if isinstance(consistency, int) and not isinstance(consistency, bool) and consistency > n:
                return None
            raise

    @staticmethod
    def _unavailable(client_req: int, reason: str, **details: Any) -> Done:
        return Done(client_req, False, None, "unavailable", {"reason": reason, **details})
