"""Anti-entropy between two replicas: a sans-IO session engine that finds the partitions whose digests
differ (top-down over a DigestTree, in bounded rounds), lists their items and swaps the copies either
side lacks, plus the schedule that picks a co-replica every interval.

Owns the session protocol and its statistics (its bounds are ReplicationConfig's `ae_*` fields); it must
not touch storage (a `LocalView` answers reads, `ApplyRecords` effects carry writes), read a clock or
draw randomness of its own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from crypto.errors import InvalidArgument
from ring.config import ReplicationConfig
from ring.digest import DigestTree, tree
from ring.messages import (
    AeAck,
    AeClose,
    AeFetch,
    AeOpen,
    AeOpened,
    AePush,
    AeRecords,
    AeReject,
    AeSummaries,
    AeSummaryQuery,
    AeTreeHashes,
    AeTreeQuery,
    ApplyRecords,
    ItemRef,
    ItemSummary,
    Send,
    SessionEnded,
    SummaryPage,
)
from ring.records import Record, merge
from ring.replicaview import LocalView, Rng, as_ref, pack, ref_of, wire_bytes

Effect = Send | ApplyRecords | SessionEnded


@dataclass(slots=True)
class AntiEntropyStats:
    sessions_started: int = 0
    sessions_in_sync: int = 0
    sessions_repaired: int = 0
    sessions_failed: int = 0
    sessions_answered: int = 0
    partitions_compared: int = 0
    partitions_differing: int = 0
    tree_nodes_compared: int = 0
    summaries_received: int = 0
    records_sent: int = 0
    records_received: int = 0
    records_rejected: int = 0
    messages_sent: int = 0
    messages_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    retransmits: int = 0

def partitions_fingerprint(ids: Sequence[int]) -> int:
    """64-bit hash of a sorted partition set: both sides must compare the same partitions."""
    h = hashlib.blake2b(digest_size=8, person=b"mnemonet-aeset")
    h.update(np.asarray(ids, dtype=">u8").tobytes())
    return int.from_bytes(h.digest(), "big")

@dataclass(slots=True)
class _Req:
    msg: Any
    sent_at: float
    attempts: int = 1


@dataclass(slots=True)
class _Outgoing:
    """A session this node started: it sends every request and decides what to fetch and push."""

    peer: str
    session: int
    tree: DigestTree
    partitions: frozenset[int]
    retry: bool
    next_req: int = 1
    opened: bool = False
    responder_state: bool = False  # the responder keeps a tree for us until AeClose or idle expiry
    inflight: dict[int, _Req] = field(default_factory=dict)
    tree_todo: deque[tuple[int, tuple[int, ...]]] = field(default_factory=deque)
    summary_todo: deque[tuple[int, ItemRef | None]] = field(default_factory=deque)
    fetch_buf: deque[ItemRef] = field(default_factory=deque)
    push_buf: deque[ItemRef | Record] = field(default_factory=deque)  # refs to read, or joins to send
    both: set[ItemRef] = field(default_factory=set)  # fetched items we hold too: push the join if it is news
    differing: int = 0
    records_in: int = 0
    records_out: int = 0

    def idle(self) -> bool:
        return not (self.inflight or self.tree_todo or self.summary_todo or self.fetch_buf or self.push_buf)


@dataclass(slots=True)
class _Incoming:
    """A session this node answers: the tree it compares against and the partitions it may touch."""

    tree: DigestTree
    partitions: frozenset[int]
    last_s: float


_ANSWERS: dict[type, type] = {AeOpen: AeOpened, AeTreeQuery: AeTreeHashes, AeSummaryQuery: AeSummaries,
                              AeFetch: AeRecords, AePush: AeAck}


class AntiEntropy:
    """One node's anti-entropy: sessions it starts (`start`, or every interval from `tick`) and
    sessions it answers (`handle`). Every call returns effects; `next_deadline` says when to tick."""

    def __init__(self, me: str, view: LocalView, config: ReplicationConfig, rng: Rng, now: float) -> None:
        self.me, self._view, self._config, self._rng = me, view, config, rng
        self._out: dict[int, _Outgoing] = {}
        self._in: dict[tuple[str, int], _Incoming] = {}
        self._last_attempt: dict[str, float] = {}
        self._retry: set[str] = set()
        self._stats = AntiEntropyStats()
        self._next_round_s = now + self._interval()

    # ---- public ----
    def statistics(self) -> AntiEntropyStats:
        return dataclasses.replace(self._stats)

    def active_peers(self) -> set[str]:
        return {s.peer for s in self._out.values()}

    def start(self, peer: str, partitions: Sequence[int], now: float, *, retry: bool = False) -> list[Effect]:
        """Open a session with `peer` over `partitions` (which both should own); no-op at the
        session bound, with a session to `peer` already open, or with nothing to compare."""
        ids = sorted({int(p) for p in partitions})
        if peer == self.me or not ids or len(self._out) >= self._config.ae_sessions_max or peer in self.active_peers():
            return []
        t = tree(ids, self._view.digests(ids), self._config.digest_fanout)
        session = self._new_session_id()
        s = _Outgoing(peer, session, t, frozenset(ids), retry)
        self._out[session] = s
        self._last_attempt[peer] = now
        self._stats.sessions_started += 1
        self._stats.partitions_compared += len(ids)
        self._stats.tree_nodes_compared += 1
        msg = AeOpen(session, partitions_fingerprint(ids), len(ids), t.fanout, t.root)
        s.inflight[0] = _Req(msg, now)
        return [self._send(peer, msg)]

    def handle(self, src: str, msg: object, now: float) -> list[Effect]:
        self._stats.messages_received += 1
        self._stats.bytes_received += wire_bytes(msg)
        if isinstance(msg, AeOpen):
            return self._on_open(src, msg, now)
        if isinstance(msg, AeClose):
            self._in.pop((src, msg.session), None)
            return []
        if isinstance(msg, AeTreeQuery | AeSummaryQuery | AeFetch | AePush):
            inc = self._in.get((src, msg.session))
            if inc is None:
                return [self._send(src, AeReject(msg.session, "session"))]
            inc.last_s = now
            try:
                return self._answer(src, inc, msg)
            except (InvalidArgument, ValueError, TypeError, IndexError):
                self._in.pop((src, msg.session), None)
                return [self._send(src, AeReject(msg.session, "invalid"))]
        if isinstance(msg, AeOpened | AeReject | AeTreeHashes | AeSummaries | AeRecords | AeAck):
            s = self._out.get(msg.session)
            if s is None or s.peer != src:
                return []  # late or duplicate answer of a finished session
            if isinstance(msg, AeReject):
                return self._end(s, msg.code)
            try:
                effects = self._on_answer(s, msg)
            except (InvalidArgument, ValueError, TypeError, IndexError):
                return self._end(s, "invalid")
            return effects + self._pump(s, now)
        return []

    def tick(self, now: float) -> list[Effect]:
        effects: list[Effect] = []
        if now >= self._next_round_s:
            self._next_round_s = now + self._interval()
            effects += self._start_round(now)
        for key in [k for k, inc in self._in.items() if now >= inc.last_s + self._config.ae_session_idle_s]:
            del self._in[key]
        for s in list(self._out.values()):
            for req in s.inflight.values():
                # Same expression as next_deadline(): `now - sent_at < timeout` can disagree with
                # `sent_at + timeout <= now` by float rounding and make the shell tick forever.
                if now < req.sent_at + self._config.ae_request_timeout_s:
                    continue
                if req.attempts >= self._config.ae_request_attempts_max:
                    effects += self._end(s, "timeout")
                    break
                req.attempts += 1
                req.sent_at = now
                self._stats.retransmits += 1
                effects.append(self._send(s.peer, req.msg))
        return effects

    def next_deadline(self) -> float:
        t = self._next_round_s
        for s in self._out.values():
            for req in s.inflight.values():
                t = min(t, req.sent_at + self._config.ae_request_timeout_s)
        for inc in self._in.values():
            t = min(t, inc.last_s + self._config.ae_session_idle_s)
        return t

    # ---- scheduling ----
    def _interval(self) -> float:
        j = self._config.ae_interval_jitter_fraction
        return self._config.anti_entropy_interval_s * (1.0 - j + 2.0 * j * self._rng.random())

    def _start_round(self, now: float) -> list[Effect]:
        """Least recently tried co-replica first (a peer whose session timed out goes before all)."""
        busy = self.active_peers()
        peers = [p for p in self._view.co_replicas() if p != self.me and p not in busy]
        if not peers or len(self._out) >= self._config.ae_sessions_max:
            return []
        retry = sorted(p for p in peers if p in self._retry)
        if retry:
            peer = retry[0]
            self._retry.discard(peer)
        else:
            peer = min(peers, key=lambda p: (self._last_attempt.get(p, -math.inf), self._rng.random()))
        return self.start(peer, self._view.shared_partitions(peer), now, retry=bool(retry))

    def _new_session_id(self) -> int:
        while True:
            sid = 1 + int(self._rng.random() * (1 << 53))
            if sid not in self._out:
                return sid

    def _send(self, to: str, msg: object) -> Send:
        self._stats.messages_sent += 1
        self._stats.bytes_sent += wire_bytes(msg)
        return Send(to, msg)

    # ---- responder ----
    def _on_open(self, src: str, msg: AeOpen, now: float) -> list[Effect]:
        key = (src, msg.session)
        inc = self._in.get(key)
        if inc is None:
            ids = sorted({int(p) for p in self._view.shared_partitions(src)})
            if len(ids) != msg.partitions or partitions_fingerprint(ids) != msg.partitions_fp:
                return [self._send(src, AeReject(msg.session, "partitions"))]
            if len(self._in) >= self._config.ae_responder_sessions_max:
                return [self._send(src, AeReject(msg.session, "busy"))]
            try:
                t = tree(ids, self._view.digests(ids), msg.fanout)
            except InvalidArgument:
                return [self._send(src, AeReject(msg.session, "invalid"))]
            self._stats.sessions_answered += 1
            if t.root == msg.root:
                return [self._send(src, AeOpened(msg.session, ()))]
            inc = self._in[key] = _Incoming(t, frozenset(ids), now)
        inc.last_s = now
        return [self._send(src, AeOpened(msg.session, tuple(inc.tree.hashes(1, range(inc.tree.level_size(1))))))]

    def _answer(self, src: str, inc: _Incoming, msg: AeTreeQuery | AeSummaryQuery | AeFetch | AePush) -> list[Effect]:
        cfg, t = self._config, inc.tree
        if isinstance(msg, AeTreeQuery):
            if not 2 <= msg.level < t.depth:
                raise InvalidArgument("tree level out of range")
            children = t.children(msg.level - 1, msg.parents)
            if len(children) > cfg.ae_tree_hashes_per_message_max:
                raise InvalidArgument("tree query too large")
            return [self._send(src, AeTreeHashes(msg.session, msg.req, tuple(t.hashes(msg.level, children))))]
        if isinstance(msg, AeSummaryQuery):
            if len(msg.cursors) > cfg.ae_partitions_per_query_max:
                raise InvalidArgument("summary query too large")
            return [self._send(src, AeSummaries(msg.session, msg.req, self._pages(inc, msg.cursors)))]
        if isinstance(msg, AeFetch):
            if len(msg.items) > cfg.ae_records_per_message_max:
                raise InvalidArgument("fetch too large")
            items = [as_ref(i) for i in msg.items]
            bits = self._view.partition_bits
            found = [r for r in self._view.records(items) if r.partition(bits) in inc.partitions]
            have = {ref_of(r) for r in found}
            sent = pack(found, cfg.ae_message_bytes_max)
            self._stats.records_sent += len(sent)
            missing = tuple(i for i in items if i not in have)
            return [self._send(src, AeRecords(msg.session, msg.req, tuple(sent), missing))]
        if len(msg.records) > cfg.ae_records_per_message_max:
            raise InvalidArgument("push too large")
        bits = self._view.partition_bits
        ok = tuple(r for r in msg.records if r.partition(bits) in inc.partitions)
        self._stats.records_received += len(ok)
        self._stats.records_rejected += len(msg.records) - len(ok)
        reply: list[Effect] = [ApplyRecords(src, ok)] if ok else []
        return reply + [self._send(src, AeAck(msg.session, msg.req))]

    def _pages(self, inc: _Incoming, cursors: Sequence[tuple[int, Any]]) -> tuple[SummaryPage, ...]:
        budget, size = self._config.ae_summaries_per_message_max, 0
        pages: list[SummaryPage] = []
        for p, after in cursors:
            if p not in inc.partitions:
                raise InvalidArgument("partition outside the session")
            if budget <= 0 or size >= self._config.ae_message_bytes_max:
                break
            items = self._view.summaries(p, None if after is None else as_ref(after), budget)
            kept: list[ItemSummary] = []
            for it in items:
                b = wire_bytes(it)
                if (pages or kept) and size + b > self._config.ae_message_bytes_max:
                    break
                kept.append(it)
                size += b
            if items and not kept:
                break
            complete = len(kept) == len(items) < budget
            budget -= len(kept)
            pages.append(SummaryPage(p, tuple(kept), complete))
            if not complete:
                break
        return tuple(pages)

    # ---- initiator ----
    def _on_answer(self, s: _Outgoing, msg: AeOpened | AeTreeHashes | AeSummaries | AeRecords | AeAck) -> list[Effect]:
        key = 0 if isinstance(msg, AeOpened) else msg.req
        req = s.inflight.get(key)
        if req is None:
            return []  # duplicate answer
        if _ANSWERS[type(req.msg)] is not type(msg):
            raise InvalidArgument("answer of the wrong type")
        del s.inflight[key]
        t = s.tree
        if isinstance(msg, AeOpened):
            s.opened = True
            if not msg.hashes:
                return []
            s.responder_state = True
            n = t.level_size(1)
            self._stats.tree_nodes_compared += n
            self._descend(s, 1, t.differing(1, range(n), msg.hashes))
        elif isinstance(msg, AeTreeHashes):
            q: AeTreeQuery = req.msg
            children = t.children(q.level - 1, q.parents)
            self._stats.tree_nodes_compared += len(children)
            self._descend(s, q.level, t.differing(q.level, children, msg.hashes))
        elif isinstance(msg, AeSummaries):
            asked = dict(req.msg.cursors)
            for page in msg.pages:
                if page.partition not in asked:
                    raise InvalidArgument("summary page for a partition not asked")
                self._compare(s, page, asked.pop(page.partition))
            s.summary_todo.extendleft(reversed(list(asked.items())))
        elif isinstance(msg, AeRecords):
            return self._on_records(s, req.msg, msg)
        return []

    def _descend(self, s: _Outgoing, level: int, differing: list[int]) -> None:
        if not differing:
            return
        if level == s.tree.depth - 1:
            parts = s.tree.partitions_at(differing)
            s.differing += len(parts)
            self._stats.partitions_differing += len(parts)
            s.summary_todo.extend((p, None) for p in parts)
            return
        step = max(1, self._config.ae_tree_hashes_per_message_max // s.tree.fanout)
        for i in range(0, len(differing), step):
            s.tree_todo.append((level + 1, tuple(differing[i:i + step])))

    def _compare(self, s: _Outgoing, page: SummaryPage, after: ItemRef | None) -> None:
        """Fetch what the peer holds and we lack or hold differently; push what only we hold. A copy
        both hold differently is fetched first, and our join with it goes back only if it differs from
        theirs, so an older copy never travels."""
        remote = {as_ref(i): i[2] for i in page.items}
        self._stats.summaries_received += len(remote)
        hi = None if page.complete else as_ref(page.items[-1])
        local: dict[ItemRef, int] = {}
        cur, lim = after, self._config.ae_summaries_per_message_max
        while True:
            items = self._view.summaries(page.partition, cur, lim)
            past_hi = False
            for k, key, h in items:
                if hi is not None and (k, key) > hi:
                    past_hi = True
                    break
                local[(k, key)] = h
            if past_hi or len(items) < lim:
                break
            cur = (items[-1][0], items[-1][1])
        for ref, h in remote.items():
            mine = local.get(ref)
            if mine != h:
                s.fetch_buf.append(ref)
                if mine is not None:
                    s.both.add(ref)
        s.push_buf.extend(ref for ref in local if ref not in remote)
        if hi is not None:
            s.summary_todo.append((page.partition, hi))

    def _on_records(self, s: _Outgoing, asked: AeFetch, msg: AeRecords) -> list[Effect]:
        want = set(asked.items)
        bits = self._view.partition_bits
        got: dict[ItemRef, Record] = {}
        for r in msg.records:
            ref = ref_of(r)
            if ref in want and ref not in got and r.partition(bits) in s.partitions:
                got[ref] = r
            else:
                self._stats.records_rejected += 1
        missing = {as_ref(i) for i in msg.missing} & want
        rest = [i for i in asked.items if i not in got and i not in missing]
        if len(rest) == len(asked.items):
            raise InvalidArgument("a fetch answer must make progress")
        s.fetch_buf.extendleft(reversed(rest))
        for ref in missing:
            s.both.discard(ref)
        for ref, r in got.items():
            if ref in s.both:
                s.both.discard(ref)
                joined = merge(next(iter(self._view.records([ref])), None), r)
                if joined is not None and joined.version != r.version:
                    s.push_buf.append(joined)
        s.records_in += len(got)
        self._stats.records_received += len(got)
        return [ApplyRecords(s.peer, tuple(got.values()))] if got else []

    def _pump(self, s: _Outgoing, now: float) -> list[Effect]:
        effects: list[Effect] = []
        while s.session in self._out and len(s.inflight) < self._config.ae_requests_in_flight_max:
            msg = self._next_request(s)
            if msg is None:
                break
            s.inflight[msg.req] = _Req(msg, now)
            effects.append(self._send(s.peer, msg))
        if s.opened and s.idle() and s.session in self._out:
            effects += self._end(s, "repaired" if s.differing else "in_sync")
        return effects

    def _next_request(self, s: _Outgoing) -> AeTreeQuery | AeSummaryQuery | AeFetch | AePush | None:
        cfg = self._config
        while True:
            req = s.next_req
            if s.tree_todo:
                level, parents = s.tree_todo.popleft()
                msg: AeTreeQuery | AeSummaryQuery | AeFetch | AePush | None = AeTreeQuery(s.session, req, level, parents)
            elif len(s.push_buf) >= cfg.ae_records_per_message_max or (s.push_buf and not s.summary_todo):
                msg = self._push(s, req)
                if msg is None:
                    continue
            elif len(s.fetch_buf) >= cfg.ae_records_per_message_max or (s.fetch_buf and not s.summary_todo):
                n = min(len(s.fetch_buf), cfg.ae_records_per_message_max)
                msg = AeFetch(s.session, req, tuple(s.fetch_buf.popleft() for _ in range(n)))
            elif s.summary_todo:
                n = min(len(s.summary_todo), cfg.ae_partitions_per_query_max)
                msg = AeSummaryQuery(s.session, req, tuple(s.summary_todo.popleft() for _ in range(n)))
            else:
                return None
            s.next_req += 1
            return msg

    def _push(self, s: _Outgoing, req: int) -> AePush | None:
        n = min(len(s.push_buf), self._config.ae_records_per_message_max)
        items = [s.push_buf.popleft() for _ in range(n)]
        bits = self._view.partition_bits
        found = {ref_of(r): r for r in self._view.records([i for i in items if not isinstance(i, Record)])}
        records: list[Record] = []
        for i in items:
            r = i if isinstance(i, Record) else found.get(i)
            if r is not None and r.partition(bits) in s.partitions:
                records.append(r)
        sent = pack(records, self._config.ae_message_bytes_max)
        s.push_buf.extendleft(reversed(records[len(sent):]))
        if not sent:
            return None  # the items went away locally (collected): nothing to push
        s.records_out += len(sent)
        self._stats.records_sent += len(sent)
        return AePush(s.session, req, tuple(sent))

    def _end(self, s: _Outgoing, outcome: str) -> list[Effect]:
        self._out.pop(s.session, None)
        effects: list[Effect] = []
        if outcome == "in_sync":
            self._stats.sessions_in_sync += 1
        elif outcome == "repaired":
            self._stats.sessions_repaired += 1
        else:
            self._stats.sessions_failed += 1
            if outcome == "timeout" and not s.retry:
                self._retry.add(s.peer)
        if s.responder_state or not s.opened:
            effects.append(self._send(s.peer, AeClose(s.session)))
        effects.append(SessionEnded(s.peer, s.session, outcome, s.differing, s.records_in, s.records_out))
        return effects
