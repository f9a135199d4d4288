"""Lifeguard local health: bounded score, scaled timeouts."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gossip.awareness import Awareness


def test_healthy_node_uses_configured_timeouts() -> None:
    assert Awareness(8).scale(0.5) == 0.5


def test_missed_acks_stretch_timeouts_and_successes_shrink_them() -> None:
    a = Awareness(8)
    a.apply_delta(3)
    assert a.scale(1.0) == 4.0
    a.apply_delta(-1)
    assert a.scale(1.0) == 3.0


def test_disabled_awareness_never_scales() -> None:
    a = Awareness(1)
    a.apply_delta(5)
    assert a.score == 0 and a.scale(2.0) == 2.0


@given(st.lists(st.integers(-10, 10), max_size=50), st.integers(1, 10))
def test_score_stays_within_bounds(deltas: list[int], max_mult: int) -> None:
    a = Awareness(max_mult)
    for d in deltas:
        a.apply_delta(d)
        assert 0 <= a.score <= max_mult - 1
        assert 1.0 <= a.scale(1.0) <= max_mult
