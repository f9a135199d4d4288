"""Hybrid logical clock (Kulkarni et al. 2014): the version stamp of every replicated write.

Owns the packed timestamp layout and the send/receive rules; must not read a clock (wall time is passed in).

A timestamp is a plain int ``physical_ms << 16 | logical``: it sorts as an int, fits SQLite's signed
64-bit INTEGER, and compares exactly like the paper's (l, c) pair. With that packing the paper's rules
collapse to one line each:

* send / local event: ``ts = max(last + 1, wall_ms << 16)``
* receive event:      ``ts = max(max(last, remote) + 1, wall_ms << 16)``

Logical overflow: ``+ 1`` on a stamp whose logical part is 0xFFFF carries into the physical part, i.e.
the clock moves its physical time 1 ms ahead of the wall clock rather than wrapping or stalling.
That takes 65 536 events inside one millisecond, and the clock falls back to wall time as soon as
the wall clock passes it, so the lead stays small in practice.
"""

from __future__ import annotations

from crypto.errors import Internal, InvalidArgument

LOGICAL_BITS = 16
LOGICAL_MAX = (1 << LOGICAL_BITS) - 1
# 47 bits of milliseconds (about 4 400 years after 1970) keep a packed stamp inside a signed int64.
PHYSICAL_MS_MAX = (1 << (63 - LOGICAL_BITS)) - 1
HLC_MAX = (1 << 63) - 1
# One minute: far above NTP-synchronised skew, small enough that a peer with a broken clock cannot
# push everyone's versions (and so every LWW decision) hours into the future.
MAX_DRIFT_MS_DEFAULT = 60_000


def hlc_pack(physical_ms: int, logical: int) -> int:
    """Pack ``(physical_ms, logical)`` into one sortable int."""
    if not _is_int(physical_ms) or not 0 <= physical_ms <= PHYSICAL_MS_MAX:
        raise InvalidArgument("physical_ms out of range", physical_ms=repr(physical_ms))
    if not _is_int(logical) or not 0 <= logical <= LOGICAL_MAX:
        raise InvalidArgument("logical out of range", logical=repr(logical))
    return (physical_ms << LOGICAL_BITS) | logical


def hlc_physical_ms(ts: int) -> int:
    """Milliseconds part of a packed timestamp."""
    return ts >> LOGICAL_BITS


def hlc_logical(ts: int) -> int:
    """Logical counter part of a packed timestamp."""
    return ts & LOGICAL_MAX


class HybridClock:
    """One node's HLC. Every stamp it returns is strictly greater than every earlier one.

    ``now(wall_ms)`` stamps a local or send event; ``observe(remote, wall_ms)`` folds in a stamp that
    arrived with a message and returns a stamp for the receive event. Wall time may go backwards
    (NTP step, VM migration); stamps keep increasing because ``last`` is always part of the max.
    """

    __slots__ = ("_last", "_max_drift_ms")

    def __init__(self, last: int = 0, max_drift_ms: int = MAX_DRIFT_MS_DEFAULT) -> None:
        _check_ts(last, "last")
        if not _is_int(max_drift_ms) or max_drift_ms < 0:
            raise InvalidArgument("max_drift_ms must be a non-negative int", max_drift_ms=repr(max_drift_ms))
        self._last = last
        self._max_drift_ms = max_drift_ms

    @property
    def last(self) -> int:
        """The most recent stamp issued (or the one the clock was restored from)."""
        return self._last

    @property
    def max_drift_ms(self) -> int:
        return self._max_drift_ms

    def now(self, wall_ms: int) -> int:
        """Stamp a local or send event."""
        _check_wall(wall_ms)
        return self._advance(max(self._last + 1, wall_ms << LOGICAL_BITS))

    def observe(self, remote: int, wall_ms: int) -> int:
        """Stamp a receive event carrying ``remote``; the result is greater than both ``last`` and ``remote``.

        Raises ``InvalidArgument`` (and leaves the clock untouched) when the remote physical time is
        more than ``max_drift_ms`` ahead of ``wall_ms``: accepting it would drag this clock, and through
        it the whole network, forward by the sender's error.
        """
        _check_wall(wall_ms)
        _check_ts(remote, "remote")
        remote_ms = remote >> LOGICAL_BITS
        if remote_ms > wall_ms + self._max_drift_ms:
            raise InvalidArgument(
                "remote clock too far ahead",
                remote_physical_ms=remote_ms,
                wall_ms=wall_ms,
                max_drift_ms=self._max_drift_ms,
            )
        return self._advance(max(max(self._last, remote) + 1, wall_ms << LOGICAL_BITS))

    def _advance(self, ts: int) -> int:
        if ts > HLC_MAX:
            # Needs a stamp near the year 6400 or a corrupted `last`; refusing beats wrapping.
            raise Internal("hybrid clock exhausted", last=self._last)
        self._last = ts
        return ts

    def __repr__(self) -> str:
        return (
            f"HybridClock(last={hlc_physical_ms(self._last)}ms+{hlc_logical(self._last)}, "
            f"max_drift_ms={self._max_drift_ms})"
        )


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_wall(wall_ms: int) -> None:
    if not _is_int(wall_ms) or not 0 <= wall_ms <= PHYSICAL_MS_MAX:
        raise InvalidArgument("wall_ms out of range", wall_ms=repr(wall_ms))


def _check_ts(ts: int, name: str) -> None:
    if not _is_int(ts) or not 0 <= ts <= HLC_MAX:
        raise InvalidArgument(f"{name} is not a valid HLC timestamp", **{name: repr(ts)})
