"""Lifeguard dynamic suspicion timeout: starts at max, shrinks to min with independent confirmations."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gossip.suspicion import SuspicionTimer, suspicion_min_s, suspicion_timeout_s


def test_min_timeout_grows_with_log10_of_group_size() -> None:
    assert suspicion_min_s(4, 1, 1.0) == 4.0
    assert suspicion_min_s(4, 5, 1.0) == 4.0  # floor of one log10 unit for small groups
    assert suspicion_min_s(4, 1000, 1.0) == pytest.approx(12.0)
    assert suspicion_min_s(4, 100, 0.5) == pytest.approx(4.0)


def test_timer_starts_at_max_and_reaches_min_after_k_confirmations() -> None:
    t = SuspicionTimer("a", k=2, min_s=4.0, max_s=24.0, now=100.0)
    assert t.deadline == 124.0
    assert t.confirm("b")
    after_one = t.deadline
    assert 104.0 < after_one < 124.0
    # memberlist's formula: max - log(n+1)/log(k+1) * (max - min)
    assert after_one == pytest.approx(100 + 24 - math.log(2) / math.log(3) * 20)
    assert t.confirm("c")
    assert t.deadline == pytest.approx(104.0)
    assert not t.confirm("d")  # enough evidence: further confirmations change nothing
    assert t.deadline == pytest.approx(104.0)


def test_the_accuser_and_repeats_are_not_independent_confirmations() -> None:
    t = SuspicionTimer("a", k=3, min_s=4.0, max_s=24.0, now=0.0)
    assert not t.confirm("a")
    assert t.confirm("b")
    assert not t.confirm("b")
    assert t.confirmations == 1


def test_no_expected_confirmations_means_the_full_max_timeout() -> None:
    t = SuspicionTimer("a", k=0, min_s=4.0, max_s=24.0, now=0.0)
    assert not t.confirm("b")
    assert t.deadline == 24.0


@given(st.integers(0, 10), st.integers(0, 10), st.floats(0.1, 100), st.floats(1, 10))
def test_timeout_is_monotone_and_bounded(n: int, k: int, min_s: float, mult: float) -> None:
    max_s = min_s * mult
    t = suspicion_timeout_s(n, k, min_s, max_s)
    assert min_s <= t <= max_s
    assert suspicion_timeout_s(n + 1, k, min_s, max_s) <= t
