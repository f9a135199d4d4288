"""Quorum bookkeeping for one coordinated request: who acked or answered, and whether W (or R) is met.

Sans-IO (modelled on etcd-io/raft's quorum package): it sends nothing, reads no clock (`now` is
passed to `expire`) and never retries; the coordinator in node/ does the I/O and feeds results in.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Sequence
from functools import reduce
from typing import Generic, TypeVar

from crypto.errors import InvalidArgument, Unavailable

V = TypeVar("V")
Merge = Callable[[V | None, V | None], V | None]


class Consistency(enum.Enum):
    """Per-request quorum size; an explicit int is accepted wherever a Consistency is."""

    ONE = "one"
    QUORUM = "quorum"
    ALL = "all"


def required(consistency: Consistency | int, n: int) -> int:
    """How many of ``n`` replicas must ack (or answer) for ``consistency``: 1, a majority, all, or the int."""
    if not _is_int(n) or n < 1:
        raise InvalidArgument("n must be a positive int", n=repr(n))
    if consistency is Consistency.ONE:
        return 1
    if consistency is Consistency.QUORUM:
        return n // 2 + 1
    if consistency is Consistency.ALL:
        return n
    if _is_int(consistency) and 1 <= consistency <= n:
        return consistency
    raise InvalidArgument("consistency must be one, quorum, all or an int in [1, n]",
                          consistency=repr(consistency), n=n)


def parse_consistency(obj: object) -> Consistency | int:
    """A request's ``consistency`` field: ``"one"``, ``"quorum"``, ``"all"`` (any case) or a positive int."""
    if isinstance(obj, str):
        try:
            return Consistency(obj.lower())
        except ValueError:
            pass
    elif isinstance(obj, int) and not isinstance(obj, bool) and obj >= 1:
        return obj
    raise InvalidArgument("consistency must be one, quorum, all or a positive int", consistency=repr(obj))


class Outcome(enum.Enum):
    """etcd's VoteResult (Pending, Won, Lost) under the names a client sees. Final once not PENDING."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class _Tally:
    """What both quorums share: the owners, the deadline, failures, and a decision that never changes
    once made (SUCCEEDED at `need` successes, FAILED when they can no longer come or at the deadline)."""

    __slots__ = ("_owners", "_deadline", "_failed", "_outcome", "_timed_out")

    def __init__(self, replicas: Sequence[str], deadline: float) -> None:
        self._owners = _check_replicas(replicas)
        self._deadline = _check_deadline(deadline)
        self._failed: dict[str, str] = {}  # owner -> first error code, while it has not succeeded
        self._outcome = Outcome.PENDING
        self._timed_out = False

    @property
    def outcome(self) -> Outcome:
        return self._outcome

    @property
    def failed(self) -> dict[str, str]:
        """Owner -> error code, for replicas given up on and not succeeded since."""
        return dict(self._failed)

    @property
    def replicas(self) -> tuple[str, ...]:
        return self._owners

    def expire(self, now: float) -> Outcome:
        """FAILED if still pending at or after the deadline."""
        if self._outcome is Outcome.PENDING and now >= self._deadline:
            self._outcome, self._timed_out = Outcome.FAILED, True
        return self._outcome

    def next_deadline(self) -> float | None:
        """When to call ``expire`` next; None once decided."""
        return self._deadline if self._outcome is Outcome.PENDING else None

    def _decide_at(self, successes: int, need: int) -> Outcome:
        if self._outcome is Outcome.PENDING:
            if successes >= need:
                self._outcome = Outcome.SUCCEEDED
            elif len(self._owners) - len(self._failed) < need:
                self._outcome = Outcome.FAILED
        return self._outcome


class WriteQuorum(_Tally):
    """Counts acks of one write toward ``w``; decides as soon as the answer is certain.

    Each owner in ``replicas`` is one slot. A slot is filled by the owner's ack or, when constructed
    with ``sloppy=True``, by a stand-in's ack for that owner (a hint the stand-in delivers later).
    Each physical node fills at most one slot, so W counts distinct nodes holding the write.
    SUCCEEDED once ``w`` slots are filled; FAILED once fewer than ``w`` slots can still be filled
    (``len(replicas) - failed < w``) or at the deadline. An ack is proof the data is stored, so it
    wins over an earlier or later failure of the same slot. Duplicate and unknown acks are ignored.
    Events after the decision are still recorded (``acked``, ``hints``) but never change ``outcome``.
    """

    __slots__ = ("_w", "_sloppy", "_filled")

    def __init__(self, replicas: Sequence[str], w: int, deadline: float, *, sloppy: bool = False) -> None:
        super().__init__(replicas, deadline)
        self._w = _check_count(w, len(self._owners), "w")
        self._sloppy = bool(sloppy)
        self._filled: dict[str, str] = {}  # owner -> the node that acked for it (itself or a stand-in)

    def ack(self, replica: str, *, stands_in_for: str | None = None) -> Outcome:
        """``replica`` stored the write, for itself or (``stands_in_for``) as a hint for that owner."""
        if stands_in_for == replica:
            stands_in_for = None
        owner = replica if stands_in_for is None else stands_in_for
        if owner not in self._filled and owner in self._owners and _is_name(replica):
            if stands_in_for is None:
                self._fill(owner, replica)
            elif self._sloppy and replica not in self._owners and replica not in self._filled.values():
                # An owner standing in for another owner, or one node for two owners, would let one
                # physical copy count twice toward W.
                self._fill(owner, replica)
        elif stands_in_for is None and self._filled.get(owner, owner) != owner:
            # The owner itself now has the write: its slot no longer depends on a hint.
            self._filled[owner] = owner
        return self._decide()

    def fail(self, replica: str, error_code: str, *, stands_in_for: str | None = None) -> Outcome:
        """The coordinator gives up on a slot: its owner (or the stand-in tried for it) failed with
        ``error_code`` and no further stand-in will be tried. With ``sloppy``, redirect to a stand-in
        instead of calling this while one is available."""
        if not isinstance(error_code, str) or not error_code:
            raise InvalidArgument("error_code must be a non-empty string", error_code=repr(error_code))
        owner = replica if stands_in_for is None else stands_in_for
        counts = stands_in_for is None or (self._sloppy and replica not in self._owners)
        if counts and owner in self._owners and owner not in self._filled:
            self._failed.setdefault(owner, error_code)
        return self._decide()

    def _fill(self, owner: str, node: str) -> None:
        self._filled[owner] = node
        self._failed.pop(owner, None)

    def _decide(self) -> Outcome:
        return self._decide_at(len(self._filled), self._w)

    @property
    def acked(self) -> frozenset[str]:
        """The nodes whose acks count toward W (owners and counted stand-ins), one per filled slot."""
        return frozenset(self._filled.values())

    @property
    def w(self) -> int:
        return self._w

    def hints(self) -> list[tuple[str, str]]:
        """``(stand_in, owner)`` for every slot filled by a stand-in whose owner has not acked itself."""
        return [(self._filled[o], o) for o in self._owners if self._filled.get(o, o) != o]

    def error(self) -> Unavailable | None:
        """The error to answer with once FAILED (never a false success), with how many acked; else None."""
        if self._outcome is not Outcome.FAILED:
            return None
        return Unavailable("write quorum not reached", acked=len(self._filled), required=self._w,
                           replicas=len(self._owners), failed=dict(self._failed), timed_out=self._timed_out)

    def __repr__(self) -> str:
        return (f"WriteQuorum({self._outcome.value}, acked={len(self._filled)}/{self._w} of "
                f"{len(self._owners)}, failed={len(self._failed)}, sloppy={self._sloppy})")


class ReadQuorum(_Tally, Generic[V]):
    """Collects answers of one read until ``r`` replicas answered, merges them, names stale replicas.

    An answer is a versioned value or None (the replica has nothing). ``merge`` must be a semilattice
    join with None as identity (ring/merge.py's ``lww_merge``, ``memory_merge``), so ``result()`` does not
    depend on arrival order. Answers after the decision (``late``) still feed ``result`` and ``stale``
    for read repair, never ``outcome``. Only the first answer of a replica counts; an answer wins over
    an earlier failure of the same replica; unknown replicas are ignored.
    """

    __slots__ = ("_r", "_merge", "_answers")

    def __init__(self, replicas: Sequence[str], r: int, deadline: float, merge: Merge[V]) -> None:
        super().__init__(replicas, deadline)
        self._r = _check_count(r, len(self._owners), "r")
        if not callable(merge):
            raise InvalidArgument("merge must be callable")
        self._merge = merge
        self._answers: dict[str, V | None] = {}

    def respond(self, replica: str, value: V | None) -> Outcome:
        """``replica`` answered with ``value`` (None: it holds nothing for the key)."""
        if replica in self._owners and replica not in self._answers:
            self._answers[replica] = value
            self._failed.pop(replica, None)
        return self._decide()

    def late(self, replica: str, value: V | None) -> Outcome:
        """Same as ``respond``; reads better where answers are collected for repair after the outcome."""
        return self.respond(replica, value)

    def fail(self, replica: str, error_code: str) -> Outcome:
        """``replica`` will not answer (error or transport failure)."""
        if not isinstance(error_code, str) or not error_code:
            raise InvalidArgument("error_code must be a non-empty string", error_code=repr(error_code))
        if replica in self._owners and replica not in self._answers:
            self._failed.setdefault(replica, error_code)
        return self._decide()

    def _decide(self) -> Outcome:
        return self._decide_at(len(self._answers), self._r)

    def result(self) -> V | None:
        """The merge of every answer so far (the value to return once SUCCEEDED, and to repair with)."""
        return reduce(self._merge, self._answers.values(), None)

    def stale(self) -> list[str]:
        """Answered replicas whose value differs from ``result()``, late ones included: read repair targets.

        Failed and silent replicas are not listed: their state is unknown (anti-entropy covers them).
        """
        merged = self.result()
        return [rep for rep in self._owners if rep in self._answers and self._answers[rep] != merged]

    @property
    def answers(self) -> dict[str, V | None]:
        return dict(self._answers)

    @property
    def r(self) -> int:
        return self._r

    def error(self) -> Unavailable | None:
        if self._outcome is not Outcome.FAILED:
            return None
        return Unavailable("read quorum not reached", answered=len(self._answers), required=self._r,
                           replicas=len(self._owners), failed=dict(self._failed), timed_out=self._timed_out)

    def __repr__(self) -> str:
        return (f"ReadQuorum({self._outcome.value}, answered={len(self._answers)}/{self._r} of "
                f"{len(self._owners)}, failed={len(self._failed)})")


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_name(x: object) -> bool:
    return isinstance(x, str) and bool(x)


def _check_replicas(replicas: Sequence[str]) -> tuple[str, ...]:
    if isinstance(replicas, str | bytes):
        raise InvalidArgument("replicas must be a sequence of node ids, not one string")
    out = tuple(replicas)
    if not out or not all(_is_name(r) for r in out):
        raise InvalidArgument("replicas must be non-empty strings, at least one")
    if len(set(out)) != len(out):
        raise InvalidArgument("replicas must be distinct", replicas=list(out))
    return out


def _check_count(k: int, n: int, name: str) -> int:
    if not _is_int(k) or not 1 <= k <= n:
        raise InvalidArgument(f"{name} must be an int in [1, len(replicas)]", **{name: repr(k), "replicas": n})
    return k


def _check_deadline(deadline: float) -> float:
    if not isinstance(deadline, int | float) or isinstance(deadline, bool) or math.isnan(deadline):
        raise InvalidArgument("deadline must be a number", deadline=repr(deadline))
    return float(deadline)
