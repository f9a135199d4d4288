"""Hinted handoff: the writes a stand-in keeps for owners that were down (sloppy quorum), bounded per
owner and in age, and their delivery to each owner once it is alive again.

Sans-IO: methods return effects (`Send`, `HintStored`, `HintDropped`); the shell persists hints by
mirroring HintStored/HintDropped (one row per Hint) and restores them with `restore`. No clock, no I/O.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Collection, Iterable

from crypto.errors import InvalidArgument
from ring.config import ReplicationConfig
from ring.messages import HANDOFF_REQ_LIMIT, Hint, HintDropped, HintStored, PutAck, PutRecord, Send
from ring.records import Kind, Record, merge

Effect = Send | HintStored | HintDropped
ItemId = tuple[Kind, tuple[str, ...]]



class HintQueue:
    """Hints by owner, oldest first. One hint per (owner, item): a second write to the same item is
    merged into it (records are semilattice joins) under a new hint id — an ack names the exact
    content it stored, so an ack for the older content can never drop the newer one. A merged
    hint keeps the older creation time: a hint's age bounds the age of every write in it, which
    is what `hint_ttl_s < tombstone_grace_s` relies on (a late hint must not revive a record whose
    tombstone was already collected elsewhere).

    Bounds: `hints_per_owner_max` per owner (the oldest is dropped and counted), `hint_ttl_s` age
    (expired ones are dropped and counted; anti-entropy repairs both), `hints_in_flight_per_owner_max`
    unacked deliveries per owner, each sent again after `hint_retry_s`.
    """

    def __init__(self, config: ReplicationConfig | None = None) -> None:
        cfg = config or ReplicationConfig()
        self.per_owner_max = cfg.hints_per_owner_max
        self.ttl_s = cfg.hint_ttl_s
        self.retry_s = cfg.hint_retry_s
        self.in_flight_per_owner_max = cfg.hints_in_flight_per_owner_max
        self._next_id = 1
        self._queues: dict[str, OrderedDict[ItemId, Hint]] = {}
        self._by_id: dict[int, Hint] = {}
        self._in_flight: dict[str, dict[int, float]] = {}  # owner -> hint id -> when last sent
        # Owners with hints added since the last `due`: due at once (the owner may well be up: a
        # stand-in is also used for an owner that was merely slow), not at the next view change.
        self._fresh: dict[str, float] = {}
        self.stats: dict[str, int] = dict.fromkeys(
            ("stored", "merged", "delivered", "expired", "overflow", "sends", "refused"), 0)

    # ---- persistence ----
    def restore(self, hints: Iterable[Hint], next_id: int = 1) -> None:
        """Load persisted hints after a restart. `next_id`: one above the highest id ever issued
        (SQLite AUTOINCREMENT's sqlite_sequence + 1), so ids of delivered hints are never reused."""
        self._queues.clear()
        self._by_id.clear()
        self._in_flight.clear()
        self._fresh.clear()
        self._next_id = max(1, next_id)
        for h in sorted(hints, key=lambda h: (h.created, h.hint_id)):
            self._queues.setdefault(h.owner, OrderedDict())[(h.record.kind, h.record.key)] = h
            self._by_id[h.hint_id] = h
            self._next_id = max(self._next_id, h.hint_id + 1)

    @property
    def next_id(self) -> int:
        return self._next_id

    # ---- stand-in side ----
    def add(self, owner: str, record: Record, now: float) -> list[Effect]:
        """Keep `record` for `owner`. Persist the effects before acking the PutRecord that carried it."""
        if not isinstance(owner, str) or not owner:
            raise InvalidArgument("owner must be a non-empty string")
        if self._next_id >= HANDOFF_REQ_LIMIT:
            raise InvalidArgument("hint ids exhausted")  # 2**62 hints: unreachable in practice
        queue = self._queues.setdefault(owner, OrderedDict())
        item = (record.kind, record.key)
        out: list[Effect] = []
        old = queue.get(item)
        created = now
        if old is not None:
            merged = merge(old.record, record)
            assert merged is not None
            if merged.version == old.record.version:
                return out  # nothing new for the owner
            record, created = merged, min(old.created, now)
            self._forget(old, queue_too=False)
            self.stats["merged"] += 1
            out.append(HintDropped(old.hint_id, owner, "merged"))
        hint = Hint(self._next_id, owner, record, created)
        self._next_id += 1
        queue[item] = hint  # a merged hint keeps its place: queues stay ordered by created
        self._by_id[hint.hint_id] = hint
        self._fresh.setdefault(owner, now)
        self.stats["stored"] += 1
        out.append(HintStored(hint))
        while len(queue) > self.per_owner_max:
            _, oldest = queue.popitem(last=False)
            self._forget(oldest, queue_too=False)
            self.stats["overflow"] += 1
            out.append(HintDropped(oldest.hint_id, owner, "overflow"))
        return out

    def due(self, alive: Collection[str], now: float) -> list[Effect]:
        """Drop expired hints; send hints to owners in `alive` (up to the in-flight bound, again after
        `retry_s` without an ack). Call at `next_deadline()` and whenever the liveness view changes."""
        out = self._expire(now)
        self._fresh.clear()
        for owner in self._queues:
            if owner in alive:
                self._fill(owner, now, out)
            else:  # its deliveries are lost with it; no retry timer until it is back
                self._in_flight.pop(owner, None)
        return out

    def on_ack(self, src: str, msg: PutAck, now: float) -> list[Effect]:
        """The owner's answer to a delivery: drop the hint on ok (and send the next one)."""
        out: list[Effect] = []
        hint = self._by_id.get(msg.req)
        if hint is None or src != hint.owner:
            return out  # merged away, expired, or not from the owner: nothing to drop
        if not msg.ok:
            self.stats["refused"] += 1
            return out  # keep it; sent again after retry_s
        self._forget(hint)
        self.stats["delivered"] += 1
        out.append(HintDropped(hint.hint_id, hint.owner, "delivered"))
        self._fill(hint.owner, now, out)
        return out

    def next_deadline(self) -> float | None:
        """The next expiry, delivery retry or first delivery attempt of new hints; None with no
        hints. (Owners coming back alive are a view change, not a deadline: call `due` then.)"""
        times = [next(iter(q.values())).created + self.ttl_s for q in self._queues.values() if q]
        times += [t + self.retry_s for sent in self._in_flight.values() for t in sent.values()]
        times += self._fresh.values()
        return min(times) if times else None

    # ---- inspection ----
    def hints(self, owner: str | None = None) -> list[Hint]:
        if owner is not None:
            return list(self._queues.get(owner, {}).values())
        return [h for q in self._queues.values() for h in q.values()]

    def owners(self) -> list[str]:
        return sorted(o for o, q in self._queues.items() if q)

    def __len__(self) -> int:
        return len(self._by_id)

    def statistics(self) -> dict[str, int]:
        return {**self.stats, "hints": len(self._by_id), "in_flight": sum(map(len, self._in_flight.values()))}

    # ---- internals ----
    def _fill(self, owner: str, now: float, out: list[Effect]) -> None:
        in_flight = 0
        sent_at = self._in_flight.setdefault(owner, {})
        for hint in self._queues.get(owner, {}).values():
            if in_flight >= self.in_flight_per_owner_max:
                break
            if sent_at.get(hint.hint_id, -math.inf) + self.retry_s > now:
                in_flight += 1
                continue
            sent_at[hint.hint_id] = now
            in_flight += 1
            self.stats["sends"] += 1
            out.append(Send(owner, PutRecord(hint.hint_id, hint.record, None)))

    def _expire(self, now: float) -> list[Effect]:
        out: list[Effect] = []
        for owner, queue in list(self._queues.items()):
            while queue:
                oldest = next(iter(queue.values()))
                if oldest.created + self.ttl_s > now:
                    break
                self._forget(oldest)
                self.stats["expired"] += 1
                out.append(HintDropped(oldest.hint_id, owner, "expired"))
            if not queue:
                del self._queues[owner]
                self._in_flight.pop(owner, None)
        return out

    def _forget(self, hint: Hint, *, queue_too: bool = True) -> None:
        self._by_id.pop(hint.hint_id, None)
        self._in_flight.get(hint.owner, {}).pop(hint.hint_id, None)
        if queue_too:
            queue = self._queues.get(hint.owner)
            item = (hint.record.kind, hint.record.key)
            if queue is not None and queue.get(item) is hint:
                del queue[item]
