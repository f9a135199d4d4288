"""Hybrid logical clock: packing, monotonicity under any wall clock, the drift bound, the paper's rules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crypto.errors import InvalidArgument, MnemonetError
from ring.hlc import (
    HLC_MAX,
    LOGICAL_MAX,
    MAX_DRIFT_MS_DEFAULT,
    PHYSICAL_MS_MAX,
    HybridClock,
    hlc_logical,
    hlc_pack,
    hlc_physical_ms,
)

physical = st.integers(0, PHYSICAL_MS_MAX)
logical = st.integers(0, LOGICAL_MAX)
# Small wall range so that sequences revisit the same millisecond and exercise the logical counter.
wall = st.integers(1_000, 1_200)
DRIFT_MS = 50


def reference_clock() -> tuple[list[int], object, object]:
    """Kulkarni et al. 2014, Fig. 5, on an explicit (l, c) pair, plus our documented overflow carry."""
    state = [0, 0]

    def carry() -> None:
        if state[1] > LOGICAL_MAX:
            state[0], state[1] = state[0] + 1, 0

    def send(pt: int) -> int:
        l_old = state[0]
        state[0] = max(l_old, pt)
        state[1] = state[1] + 1 if state[0] == l_old else 0
        carry()
        return hlc_pack(state[0], state[1])

    def recv(lm: int, cm: int, pt: int) -> int:
        l_old, c_old = state
        state[0] = max(l_old, lm, pt)
        if state[0] == l_old == lm:
            state[1] = max(c_old, cm) + 1
        elif state[0] == l_old:
            state[1] = c_old + 1
        elif state[0] == lm:
            state[1] = cm + 1
        else:
            state[1] = 0
        carry()
        return hlc_pack(state[0], state[1])

    return state, send, recv


@st.composite
def operations(draw: st.DrawFn) -> list[tuple[str, int, int]]:
    """("now", 0, wall) or ("observe", remote, wall); remotes sometimes beyond the drift bound."""
    ops = []
    for _ in range(draw(st.integers(1, 60))):
        w = draw(wall)
        if draw(st.booleans()):
            ops.append(("now", 0, w))
        else:
            remote_ms = draw(st.integers(max(0, w - 300), w + DRIFT_MS + 20))
            lg = draw(st.one_of(logical, st.sampled_from([0, 1, LOGICAL_MAX - 1, LOGICAL_MAX])))
            ops.append(("observe", hlc_pack(remote_ms, lg), w))
    return ops


@given(physical, logical)
def test_pack_round_trips(p: int, lg: int) -> None:
    ts = hlc_pack(p, lg)
    assert (hlc_physical_ms(ts), hlc_logical(ts)) == (p, lg)
    assert 0 <= ts <= HLC_MAX


@given(physical, logical, physical, logical)
def test_packed_order_is_pair_order(p1: int, l1: int, p2: int, l2: int) -> None:
    assert (hlc_pack(p1, l1) < hlc_pack(p2, l2)) == ((p1, l1) < (p2, l2))


@pytest.mark.parametrize("args", [(-1, 0), (0, -1), (0, LOGICAL_MAX + 1), (PHYSICAL_MS_MAX + 1, 0),
                                  (True, 0), (0, 1.0), ("1", 0)])
def test_pack_rejects_out_of_range(args: tuple[object, object]) -> None:
    with pytest.raises(InvalidArgument):
        hlc_pack(*args)  # type: ignore[arg-type]


@given(operations())
def test_stamps_strictly_increase_whatever_the_wall_clock(ops: list[tuple[str, int, int]]) -> None:
    clock = HybridClock(max_drift_ms=DRIFT_MS)
    prev = clock.last
    for kind, remote, w in ops:
        if kind == "now":
            ts = clock.now(w)
        else:
            if hlc_physical_ms(remote) > w + DRIFT_MS:
                with pytest.raises(InvalidArgument):
                    clock.observe(remote, w)
                assert clock.last == prev  # a rejected stamp leaves no trace
                continue
            ts = clock.observe(remote, w)
            assert ts > remote
        assert ts > prev
        assert hlc_physical_ms(ts) >= w  # never behind the wall clock
        assert clock.last == ts
        prev = ts


@given(operations())
def test_matches_the_papers_algorithm(ops: list[tuple[str, int, int]]) -> None:
    clock = HybridClock(max_drift_ms=DRIFT_MS)
    _, send, recv = reference_clock()
    for kind, remote, w in ops:
        if kind == "now":
            assert clock.now(w) == send(w)  # type: ignore[operator]
        elif hlc_physical_ms(remote) <= w + DRIFT_MS:
            assert clock.observe(remote, w) == recv(hlc_physical_ms(remote), hlc_logical(remote), w)  # type: ignore[operator]


@given(st.integers(0, 10**12), st.integers(0, 10_000), st.integers(1, 10**6), logical)
def test_drift_bound_is_enforced(w: int, drift: int, beyond: int, lg: int) -> None:
    clock = HybridClock(max_drift_ms=drift)
    before = clock.now(w)
    with pytest.raises(InvalidArgument) as info:
        clock.observe(hlc_pack(w + drift + beyond, lg), w)
    assert info.value.code == "invalid_argument"
    assert clock.last == before
    # exactly at the bound is still accepted
    assert clock.observe(hlc_pack(w + drift, lg), w) > hlc_pack(w + drift, lg)


def test_one_fast_peer_cannot_drag_the_clock_beyond_the_bound() -> None:
    clock = HybridClock()
    w = 1_700_000_000_000
    clock.observe(hlc_pack(w + MAX_DRIFT_MS_DEFAULT, 0), w)
    with pytest.raises(InvalidArgument):
        clock.observe(hlc_pack(w + MAX_DRIFT_MS_DEFAULT + 1, 0), w)
    assert hlc_physical_ms(clock.last) == w + MAX_DRIFT_MS_DEFAULT


def test_logical_overflow_carries_into_physical() -> None:
    clock = HybridClock(last=hlc_pack(5, LOGICAL_MAX))
    assert clock.now(5) == hlc_pack(6, 0)
    assert clock.now(0) == hlc_pack(6, 1)
    assert clock.observe(hlc_pack(7, LOGICAL_MAX), 6) == hlc_pack(8, 0)


def test_wall_clock_going_back_keeps_physical_and_counts_logically() -> None:
    clock = HybridClock()
    assert clock.now(1_000) == hlc_pack(1_000, 0)
    assert clock.now(400) == hlc_pack(1_000, 1)
    assert clock.now(999) == hlc_pack(1_000, 2)
    assert clock.now(1_001) == hlc_pack(1_001, 0)


def test_same_millisecond_counts_logically_and_receive_jumps_past_remote() -> None:
    clock = HybridClock()
    assert clock.now(10) == hlc_pack(10, 0)
    assert clock.now(10) == hlc_pack(10, 1)
    assert clock.observe(hlc_pack(10, 7), 10) == hlc_pack(10, 8)
    assert clock.observe(hlc_pack(3, 99), 10) == hlc_pack(10, 9)
    assert clock.observe(hlc_pack(12, 4), 11) == hlc_pack(12, 5)


@given(st.integers(0, HLC_MAX - 2**20), wall)
def test_restored_clock_continues_after_last(last: int, w: int) -> None:
    clock = HybridClock(last=last)
    assert clock.now(w) > last


@pytest.mark.parametrize("bad", [-1, True, 1.5, PHYSICAL_MS_MAX + 1, None])
def test_rejects_bad_wall_time(bad: object) -> None:
    clock = HybridClock()
    with pytest.raises(InvalidArgument):
        clock.now(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        clock.observe(0, bad)  # type: ignore[arg-type]
    assert clock.last == 0


@pytest.mark.parametrize("bad", [-1, True, HLC_MAX + 1, "5"])
def test_rejects_bad_stamps(bad: object) -> None:
    with pytest.raises(InvalidArgument):
        HybridClock().observe(bad, 0)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        HybridClock(last=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        HybridClock(max_drift_ms=-1)


def test_exhausted_clock_refuses_instead_of_wrapping() -> None:
    clock = HybridClock(last=HLC_MAX)
    with pytest.raises(MnemonetError) as info:
        clock.now(0)
    assert info.value.code == "internal"
    assert clock.last == HLC_MAX


def test_module_is_pure() -> None:
    tree = ast.parse(Path(__file__).parent.parent.joinpath("ring", "hlc.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"time", "datetime", "random", "trio", "socket", "sqlite3", "asyncio"}
