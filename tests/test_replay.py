"""The replay window: replays are refused, memory stays bounded, and eviction never lets a replay in."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from crypto.errors import Expired, InvalidArgument, Replay
from crypto.replay import ReplayCache

PK_A, PK_B = b"\xaa" * 32, b"\xbb" * 32


def test_the_same_key_and_nonce_is_a_replay_but_other_pairs_are_not() -> None:
    cache = ReplayCache(window_ms=1000, capacity=100)
    cache.check_and_add(PK_A, "nonce-01", 5000, 5000)
    with pytest.raises(Replay):
        cache.check_and_add(PK_A, "nonce-01", 5000, 5001)
    with pytest.raises(Replay):  # a different ts does not make a reused nonce fresh
        cache.check_and_add(PK_A, "nonce-01", 5100, 5001)
    cache.check_and_add(PK_B, "nonce-01", 5000, 5001)
    cache.check_and_add(PK_A, "nonce-02", 5000, 5001)
    assert len(cache) == 3
    assert cache.statistics()["replay"] == 2 and cache.statistics()["accepted"] == 3


def test_timestamps_outside_the_window_are_expired_and_the_bounds_are_inclusive() -> None:
    cache = ReplayCache(window_ms=1000, capacity=100)
    cache.check_and_add(PK_A, "lo-bound", 4000, 5000)
    cache.check_and_add(PK_A, "hi-bound", 6000, 5000)
    for ts in (3999, 6001):
        with pytest.raises(Expired):
            cache.check_and_add(PK_A, f"n-{ts}", ts, 5000)


def test_entries_are_forgotten_after_the_window_and_their_replays_are_expired() -> None:
    cache = ReplayCache(window_ms=1000, capacity=100)
    cache.check_and_add(PK_A, "old-nonce", 5000, 5000)
    cache.check_and_add(PK_A, "new-nonce", 5500, 5500)
    cache.check_and_add(PK_B, "tick-0001", 6001, 6001)  # floor 5001: forgets ts 5000
    assert len(cache) == 2
    with pytest.raises(Expired):
        cache.check_and_add(PK_A, "old-nonce", 5000, 6001)
    assert cache.statistics()["forgotten"] == 1


def test_a_clock_stepping_back_cannot_revive_a_forgotten_entry() -> None:
    cache = ReplayCache(window_ms=1000, capacity=100)
    cache.check_and_add(PK_A, "nonce-01", 5000, 5000)
    cache.check_and_add(PK_B, "nonce-02", 7000, 7000)  # forgets (A, nonce-01)
    with pytest.raises(Expired):  # now=5500 would accept ts=5000 by itself; the floor says no
        cache.check_and_add(PK_A, "nonce-01", 5000, 5500)


def test_overflow_evicts_the_oldest_group_and_raises_the_watermark() -> None:
    cache = ReplayCache(window_ms=10_000, capacity=4)
    for i, ts in enumerate([100, 100, 101, 102]):
        cache.check_and_add(PK_A, f"nonce-{i:03}", ts, 100)
    assert cache.watermark_ms is None
    cache.check_and_add(PK_A, "nonce-004", 103, 100)  # 5 > 4: both ts=100 entries go
    assert len(cache) == 3 and cache.watermark_ms == 100
    with pytest.raises(Expired, match="shrunk"):
        cache.check_and_add(PK_A, "nonce-000", 100, 100)  # a replay of an evicted entry
    with pytest.raises(Expired, match="shrunk"):
        cache.check_and_add(PK_A, "fresh-100", 100, 100)  # the honest cost: the window narrowed
    with pytest.raises(Replay):
        cache.check_and_add(PK_A, "nonce-002", 101, 100)  # still remembered
    cache.check_and_add(PK_A, "fresh-101", 101, 100)
    assert cache.statistics()["evicted"] == 2 and cache.statistics()["shrunk"] == 2


def test_an_entry_older_than_everything_is_evicted_at_once_and_its_replay_refused() -> None:
    cache = ReplayCache(window_ms=10_000, capacity=2)
    cache.check_and_add(PK_A, "nonce-500", 500, 500)
    cache.check_and_add(PK_A, "nonce-501", 501, 500)
    cache.check_and_add(PK_A, "nonce-050", 50, 500)  # oldest: evicted immediately
    assert len(cache) == 2 and cache.watermark_ms == 50
    with pytest.raises(Expired):
        cache.check_and_add(PK_A, "nonce-050", 50, 500)


def test_bad_arguments() -> None:
    with pytest.raises(InvalidArgument):
        ReplayCache(window_ms=0, capacity=1)
    with pytest.raises(InvalidArgument):
        ReplayCache(window_ms=1, capacity=0)
    with pytest.raises(InvalidArgument):
        ReplayCache(window_ms=1, capacity=1).check_and_add(b"short", "nonce", 0, 0)


WINDOW_MS, CAPACITY = 20, 6


class ReplayCacheAgainstHistory(RuleBasedStateMachine):
    """Drives the cache with colliding nonces, a wandering clock and overflow; checks every answer
    against the full history of what it accepted."""

    @initialize()
    def start(self) -> None:
        self.cache = ReplayCache(WINDOW_MS, CAPACITY)
        self.now = 1000
        self.floor: int | None = None  # highest now - window seen by the cache so far
        self.accepted: set[tuple[bytes, str, int]] = set()
        self.pairs: set[tuple[bytes, str]] = set()
        self.watermark: int | None = None

    @rule(step=st.integers(-8, 12))
    def move_clock(self, step: int) -> None:
        self.now += step  # sometimes backwards, as wall clocks do

    @rule(pk=st.sampled_from([PK_A, PK_B]), nonce=st.sampled_from(["n1", "n2", "n3", "nonce-é"]),
          offset=st.integers(-WINDOW_MS - 3, WINDOW_MS + 3))
    def present(self, pk: bytes, nonce: str, offset: int) -> None:
        ts = self.now + offset
        self.floor = self.now - WINDOW_MS if self.floor is None else max(self.floor, self.now - WINDOW_MS)
        try:
            self.cache.check_and_add(pk, nonce, ts, self.now)
            outcome: type[Exception] | None = None
        except (Replay, Expired) as e:
            outcome = type(e)
        out_of_window = ts < self.floor or ts > self.now + WINDOW_MS
        under_watermark = self.watermark is not None and ts <= self.watermark
        if out_of_window or under_watermark:
            assert outcome is Expired
        elif (pk, nonce, ts) in self.accepted:
            assert outcome is Replay  # within the window and above the watermark: still remembered
        elif (pk, nonce) not in self.pairs:
            assert outcome is None  # a fresh pair in the window is never refused
        else:
            assert outcome in (None, Replay)  # reused nonce, new ts: allowed only once the old one is forgotten
        if outcome is Replay:
            assert (pk, nonce) in self.pairs  # no false replays
        if outcome is None:
            assert (pk, nonce, ts) not in self.accepted  # the safety property: no replay ever accepted
            self.accepted.add((pk, nonce, ts))
            self.pairs.add((pk, nonce))
        self.watermark = self.cache.watermark_ms

    @rule(pk=st.sampled_from([PK_A, PK_B]), offset=st.integers(-WINDOW_MS, WINDOW_MS), n=st.integers(1, 4))
    def flood(self, pk: bytes, offset: int, n: int) -> None:
        for _ in range(n):
            self.present(pk, f"flood-{len(self.accepted)}-{offset}", offset)

    @invariant()
    def memory_is_bounded_by_capacity(self) -> None:
        assert len(self.cache) <= CAPACITY

    @invariant()
    def watermark_never_decreases(self) -> None:
        wm = self.cache.watermark_ms
        assert wm is None or self.watermark is None or wm >= self.watermark


TestReplayCacheAgainstHistory = ReplayCacheAgainstHistory.TestCase
TestReplayCacheAgainstHistory.settings = settings(max_examples=200, stateful_step_count=60, deadline=None)
