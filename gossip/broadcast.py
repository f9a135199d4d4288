"""Transmit-limited broadcast queue: which membership updates to piggyback next, and how often.

Owns ordering (fewest-sent first, newest first among equals), the retransmit bound, per-member
invalidation and packing into a byte budget; it must not encode bytes (sizes are given by the caller).
"""

from __future__ import annotations

import math

from gossip.messages import Update

# Stop packing once fewer bytes than the smallest possible record remain (Suspect/Dead with 1-char ids).
_RECORD_BYTES_MIN = 16
# Give up after this many records that did not fit, so packing stays O(taken), not O(queue).
_MISFITS_MAX = 32


def retransmit_limit(retransmit_mult: int, n: int) -> int:
    """How many times one update is sent: retransmit_mult * ceil(log10(n + 1)) (SWIM's O(log n))."""
    return retransmit_mult * max(1, math.ceil(math.log10(n + 1)))


class _Item:
    __slots__ = ("update", "size", "transmits")

    def __init__(self, update: Update, size: int) -> None:
        self.update = update
        self.size = size
        self.transmits = 0


class BroadcastQueue:
    """At most one queued update per member: a newer update about a member replaces the older one.

    Items live in buckets by transmit count, each an insertion-ordered dict keyed by member id, so
    push, invalidate and take are O(1) per item touched, never O(queue) per message.
    """

    __slots__ = ("_retransmit_mult", "_items_max", "_by_node", "_buckets", "dropped")

    def __init__(self, retransmit_mult: int, items_max: int) -> None:
        self._retransmit_mult = retransmit_mult
        self._items_max = items_max
        self._by_node: dict[str, _Item] = {}
        self._buckets: list[dict[str, _Item]] = [{}]
        self.dropped = 0  # updates evicted by the queue bound before reaching their limit

    def __len__(self) -> int:
        return len(self._by_node)

    def __bool__(self) -> bool:
        return bool(self._by_node)

    def push(self, update: Update, size: int, sent: int = 0) -> None:
        """Queue `update` (its encoded size bound is `size` bytes), replacing any queued one for its node.

        `sent` counts it as already transmitted that many times: a smaller budget for likely old news.
        """
        node = update.node
        old = self._by_node.get(node)
        if old is not None:
            del self._buckets[old.transmits][node]
        item = _Item(update, size)
        item.transmits = sent
        while len(self._buckets) <= sent:
            self._buckets.append({})
        self._by_node[node] = item
        self._buckets[sent][node] = item
        if len(self._by_node) > self._items_max:
            self._evict_one()

    def invalidate(self, node: str) -> None:
        item = self._by_node.pop(node, None)
        if item is not None:
            del self._buckets[item.transmits][node]

    def take(self, budget_bytes: int, n: int, skip_node: str | None = None) -> tuple[list[Update], int]:
        """Updates that fit in `budget_bytes`, fewest-sent first; each counts as one more transmit.

        `n` is the current group size, for the retransmit limit; an update reaching it leaves the
        queue. `skip_node` leaves that member's update queued (the caller already sends one about it).
        Returns the updates and the bytes they use.
        """
        limit = retransmit_limit(self._retransmit_mult, n)
        taken: list[_Item] = []
        room = budget_bytes
        buckets = self._buckets
        by_node = self._by_node
        for t in range(len(buckets)):
            bucket = buckets[t]
            if not bucket:
                continue
            if t >= limit:  # the group shrank: these were sent enough for its new size
                for node in bucket:
                    del by_node[node]
                bucket.clear()
                continue
            # popitem() takes the newest first in O(1); what we skip goes back in its old order.
            skipped: list[tuple[str, _Item]] = []
            while bucket and room >= _RECORD_BYTES_MIN and len(skipped) < _MISFITS_MAX:
                node, item = bucket.popitem()
                if item.size > room or node == skip_node:
                    skipped.append((node, item))
                    continue
                taken.append(item)
                room -= item.size
            for node, item in reversed(skipped):
                bucket[node] = item
            if room < _RECORD_BYTES_MIN or len(skipped) >= _MISFITS_MAX:
                break
        # Moved up a bucket only now, so one call never hands out the same update twice.
        for item in taken:
            item.transmits += 1
            node = item.update.node
            if item.transmits >= limit:
                del by_node[node]
            else:
                if item.transmits == len(buckets):
                    buckets.append({})
                buckets[item.transmits][node] = item
        return [item.update for item in taken], budget_bytes - room

    def _evict_one(self) -> None:
        # The most-transmitted (then oldest) update has done most of its work already.
        for bucket in reversed(self._buckets):
            if bucket:
                node = next(iter(bucket))
                del bucket[node]
                del self._by_node[node]
                self.dropped += 1
                return

    def transmit_counts(self) -> dict[str, int]:
        """Member id -> times its queued update was sent (for tests and statistics)."""
        return {node: item.transmits for node, item in self._by_node.items()}
