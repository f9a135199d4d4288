"""Live fan-out of change-log entries to the watches and subscriptions open on connections.

Owns matching (topic, namespace, key or key prefix) and per-subscription overflow; it does not
read storage (resumption replays from the `changes` table before a subscription goes live).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from node.effects import Change


@dataclass(slots=True, eq=False)
class Subscription:
    """One watch. `deliver(push) -> bool` returns False when the connection's queue is full."""

    sub_id: int
    topic: str
    ns: str
    key: str
    exact: bool
    deliver: Callable[[dict[str, Any]], bool]
    last_seq: int = 0
    live: bool = False
    buffered: list[Change] = field(default_factory=list)
    lost: bool = False

    def matches(self, c: Change) -> bool:
        if c.topic != self.topic or c.ns != self.ns:
            return False
        return c.key == self.key if self.exact else c.key.startswith(self.key)

    def push(self, c: Change) -> bool:
        """Deliver one change in sequence order (older or repeated seqs are skipped)."""
        if c.seq <= self.last_seq or self.lost:
            return True
        ok = self.deliver({"push": self.topic, "sub": self.sub_id, "seq": c.seq, "event": c.event})
        if ok:
            self.last_seq = c.seq
        return ok


class ChangeHub:
    """Routes committed changes to matching subscriptions.

    A subscription starts not-live: changes are buffered while its backlog is replayed from
    storage, then `go_live` flushes the buffer (skipping seqs the backlog already delivered), so
    a resuming watcher sees every change exactly once and in order.
    """

    def __init__(self) -> None:
        self._subs: dict[int, Subscription] = {}
        self._ids = itertools.count(1)
        self.overflows = 0

    def open(self, topic: str, ns: str, key: str, exact: bool, deliver: Callable[[dict[str, Any]], bool],
             since: int) -> Subscription:
        sub = Subscription(next(self._ids), topic, ns, key, exact, deliver, last_seq=since)
        self._subs[sub.sub_id] = sub
        return sub

    def go_live(self, sub: Subscription) -> None:
        for c in sub.buffered:
            if not sub.push(c):
                self._overflow(sub)
                return
        sub.buffered.clear()
        sub.live = True

    def close(self, sub_id: int) -> bool:
        return self._subs.pop(sub_id, None) is not None

    def publish(self, c: Change) -> None:
        for sub in list(self._subs.values()):
            if not sub.matches(c):
                continue
            if not sub.live:
                sub.buffered.append(c)
            elif not sub.push(c):
                self._overflow(sub)

    def _overflow(self, sub: Subscription) -> None:
        # The client reads too slowly: stop this watch rather than buffer without bound. It gets a
        # `resync` notice and can resume from its last seq (or re-read if that was compacted).
        sub.lost = True
        self.overflows += 1
        self._subs.pop(sub.sub_id, None)
        sub.deliver({
            "push": sub.topic, "sub": sub.sub_id, "seq": sub.last_seq,
            "error": {"code": "resync", "message": "watch dropped: connection too slow; resume from seq",
                      "details": {"last_seq": sub.last_seq}},
        })

    def __len__(self) -> int:
        return len(self._subs)
