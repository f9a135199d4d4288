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
    """One watch. `deliver(push) -> bool` returns False when the connection's queue is full;
    `allowed()` is asked before each delivery, so a revoked or expired grant stops the watch."""

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
    allowed: Callable[[], bool] | None = None

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

    def __init__(self, buffered_max: int = 1024) -> None:
        # Indexed by (topic, ns): a change is matched only against watches of its own namespace.
        self._by_ns: dict[tuple[str, str], dict[int, Subscription]] = {}
        self._ids = itertools.count(1)
        self._count = 0
        self.buffered_max = buffered_max
        self.overflows = 0
        self.revoked = 0

    def open(self, topic: str, ns: str, key: str, exact: bool, deliver: Callable[[dict[str, Any]], bool],
             since: int, allowed: Callable[[], bool] | None = None) -> Subscription:
        sub = Subscription(next(self._ids), topic, ns, key, exact, deliver, last_seq=since, allowed=allowed)
        self._by_ns.setdefault((topic, ns), {})[sub.sub_id] = sub
        self._count += 1
        return sub

    def go_live(self, sub: Subscription) -> None:
        if sub.lost:
            return
        for c in sub.buffered:
            if not sub.push(c):
                self._overflow(sub)
                return
        sub.buffered.clear()
        sub.live = True

    def close(self, sub: Subscription) -> bool:
        subs = self._by_ns.get((sub.topic, sub.ns))
        if subs is None or subs.pop(sub.sub_id, None) is None:
            return False
        if not subs:
            del self._by_ns[(sub.topic, sub.ns)]
        self._count -= 1
        return True

    def publish(self, c: Change) -> None:
        subs = self._by_ns.get((c.topic, c.ns))
        if not subs:
            return
        for sub in list(subs.values()):
            if not sub.matches(c):
                continue
            if not sub.live:  # permission was checked just now, at open; the reply is not sent yet
                sub.buffered.append(c)
                if len(sub.buffered) > self.buffered_max:  # the client is not reading its replies
                    self._overflow(sub)
            elif sub.allowed is not None and not sub.allowed():
                self.revoked += 1
                self._end(sub, "forbidden", "watch ended: permission revoked or expired")
            elif not sub.push(c):
                self._overflow(sub)

    def _overflow(self, sub: Subscription) -> None:
        # The client reads too slowly: stop this watch rather than buffer without bound. It gets a
        # `resync` notice and can resume from its last seq (or re-read if that was compacted).
        self.overflows += 1
        self._end(sub, "resync", "watch dropped: connection too slow; resume from seq")

    def _end(self, sub: Subscription, code: str, message: str) -> None:
        sub.lost = True
        sub.buffered.clear()
        self.close(sub)
        sub.deliver({"push": sub.topic, "sub": sub.sub_id, "seq": sub.last_seq,
                     "error": {"code": code, "message": message, "details": {"last_seq": sub.last_seq}}})

    def __len__(self) -> int:
        return self._count
