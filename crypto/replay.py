"""The replay window: which (public key, nonce) pairs a node has accepted recently.

Owns the bounded nonce memory and its fail-closed eviction rule; it must not read a clock (`now_ms`
is passed in) nor check signatures (callers verify before they remember).
"""

from __future__ import annotations

import heapq
from typing import Any

from crypto.errors import Expired, InvalidArgument, Replay


class ReplayCache:
    """Remembers each accepted (public key, nonce) until its timestamp leaves the accepted window.

    A request is accepted only if `ts` lies in [now - window_ms, now + window_ms], so an entry with
    timestamp `ts` can be forgotten once `ts < now - window_ms`: a replay of it would be Expired anyway.
    Entries sit in a min-heap by `ts` and are dropped lazily on each call (O(log n) amortised).

    `now_ms` may go backwards (wall clocks step). The cache therefore keeps a *floor*, the highest
    `now - window_ms` it has seen, and rejects any `ts` below the floor: forgetting is driven by the
    floor, so a backwards step cannot revive a forgotten entry.

    Bounded memory without letting a replay through: when more than `capacity` entries are live, the
    cache evicts the entries with the oldest `ts` (the whole group sharing that `ts`) and raises a
    *watermark* to the newest evicted `ts`. Any later request with `ts <= watermark` is rejected with
    Expired("replay window shrunk under load"). Every forgotten pair had `ts <= watermark` (or below the
    floor), and a replay carries the same signed `ts` as the original, so a replay of a forgotten pair
    is always rejected: under load the window narrows from below instead of leaking. Honest clients
    see Expired only when the node is flooded with more than `capacity` requests per window, and a
    fresh timestamp fixes it.

    Not thread-safe: one owner (the node's request path) calls it.
    """

    __slots__ = ("_window_ms", "_capacity", "_heap", "_seen", "_floor_ms", "_watermark_ms", "_counts")

    def __init__(self, window_ms: int, capacity: int) -> None:
        if window_ms <= 0 or capacity <= 0:
            raise InvalidArgument("ReplayCache needs a positive window_ms and capacity")
        self._window_ms = window_ms
        self._capacity = capacity
        # (ts, key) with key = public key (32 bytes, fixed width) + UTF-8 nonce: unambiguous and one
        # object shared by heap and set, which halves the memory of a (pk, nonce) tuple.
        self._heap: list[tuple[int, bytes]] = []
        self._seen: set[bytes] = set()
        self._floor_ms: int | None = None
        self._watermark_ms: int | None = None
        self._counts = {"accepted": 0, "replay": 0, "expired": 0, "shrunk": 0, "evicted": 0, "forgotten": 0}

    def __len__(self) -> int:
        return len(self._seen)

    @property
    def watermark_ms(self) -> int | None:
        """Newest timestamp evicted for lack of room (requests at or below it are Expired)."""
        return self._watermark_ms

    def check_and_add(self, public_key: bytes, nonce: str, ts_ms: int, now_ms: int) -> None:
        """Remember (public_key, nonce) or raise Replay / Expired. Call only after the signature verified."""
        if len(public_key) != 32:
            raise InvalidArgument("public key must be 32 raw bytes")
        floor = now_ms - self._window_ms
        if self._floor_ms is None or floor > self._floor_ms:
            self._floor_ms = floor
            self._forget_before(floor)
        if ts_ms < self._floor_ms or ts_ms > now_ms + self._window_ms:
            self._counts["expired"] += 1
            raise Expired("request timestamp is outside the accepted window", ts=ts_ms, now=now_ms)
        if self._watermark_ms is not None and ts_ms <= self._watermark_ms:
            self._counts["shrunk"] += 1
            raise Expired("replay window shrunk under load", ts=ts_ms, watermark=self._watermark_ms)
        key = public_key + nonce.encode("utf-8", "surrogatepass")
        if key in self._seen:
            self._counts["replay"] += 1
            raise Replay("this nonce was already used with this key", nonce=nonce)
        self._seen.add(key)
        heapq.heappush(self._heap, (ts_ms, key))
        self._counts["accepted"] += 1
        if len(self._seen) > self._capacity:
            self._evict_oldest()

    def _forget_before(self, floor_ms: int) -> None:
        heap, seen = self._heap, self._seen
        while heap and heap[0][0] < floor_ms:
            seen.discard(heapq.heappop(heap)[1])
            self._counts["forgotten"] += 1

    def _evict_oldest(self) -> None:
        # Evict the whole oldest-ts group: entries left at ts == watermark would be dead weight, since
        # every request at that ts is now rejected. May evict the entry just added; that is still safe.
        heap, seen = self._heap, self._seen
        while len(seen) > self._capacity:
            ts = heap[0][0]
            while heap and heap[0][0] == ts:
                seen.discard(heapq.heappop(heap)[1])
                self._counts["evicted"] += 1
            if self._watermark_ms is None or ts > self._watermark_ms:
                self._watermark_ms = ts

    def statistics(self) -> dict[str, Any]:
        return {
            "size": len(self._seen),
            "capacity": self._capacity,
            "window_ms": self._window_ms,
            "floor_ms": self._floor_ms,
            "watermark_ms": self._watermark_ms,
            **self._counts,
        }
