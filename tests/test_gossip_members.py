"""Member table: precedence rules, live index, round-robin probe order, random choice."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from gossip.members import Member, MemberTable, alive_wins, dead_state, dead_wins, suspect_wins
from gossip.messages import Alive, Dead, Meta, State, Suspect

META = Meta()


def member(i: str, inc: int = 0, state: State = State.ALIVE) -> Member:
    return Member(i, f"sim:{i}", inc, state, META, 0.0)


def table(n: int, seed: int = 1) -> MemberTable:
    t = MemberTable(member("me"), random.Random(seed))
    for i in range(n):
        t.add(member(f"m{i}"))
    return t


def test_alive_needs_a_strictly_newer_incarnation() -> None:
    assert alive_wins(None, Alive("x", 0, "a", META))
    assert not alive_wins(member("x", 3), Alive("x", 3, "a", META))
    assert alive_wins(member("x", 3, State.DEAD), Alive("x", 4, "a", META))
    assert not alive_wins(member("x", 3, State.SUSPECT), Alive("x", 3, "a", META))


def test_suspect_beats_alive_at_equal_incarnation_but_never_dead() -> None:
    assert suspect_wins(member("x", 3), Suspect("x", 3, "b"))
    assert not suspect_wins(member("x", 3), Suspect("x", 2, "b"))
    assert not suspect_wins(member("x", 3, State.DEAD), Suspect("x", 9, "b"))
    assert not suspect_wins(None, Suspect("x", 0, "b"))


def test_dead_beats_live_states_at_equal_incarnation_and_self_declared_dead_is_left() -> None:
    assert dead_wins(member("x", 3, State.SUSPECT), Dead("x", 3, "b"))
    assert not dead_wins(member("x", 3), Dead("x", 2, "b"))
    assert not dead_wins(member("x", 3, State.LEFT), Dead("x", 5, "b"))
    assert dead_state(Dead("x", 1, "x")) is State.LEFT and dead_state(Dead("x", 1, "b")) is State.DEAD


def test_probe_order_visits_every_live_member_once_per_round() -> None:
    t = table(10)
    t.set_state(t.get("m3"), State.DEAD, 1.0)  # type: ignore[arg-type]
    t.set_state(t.get("m4"), State.SUSPECT, 1.0)  # type: ignore[arg-type]
    for _ in range(3):
        seen = [t.next_probe_target() for _ in range(9)]
        assert sorted(m.id for m in seen if m) == sorted(f"m{i}" for i in range(10) if i != 3)


def test_empty_table_has_no_probe_target() -> None:
    assert table(0).next_probe_target() is None


def test_random_live_is_distinct_excludes_and_filters() -> None:
    for n in (2, 5, 50):
        t = table(n)
        t.set_state(t.get("m1"), State.SUSPECT, 0.0)  # type: ignore[arg-type]
        for _ in range(50):
            got = t.random_live(3, exclude="m0", alive_only=True)
            ids = [m.id for m in got]
            assert len(ids) == len(set(ids)) and "m0" not in ids and "m1" not in ids
            assert len(ids) == min(3, n - 2)


def test_random_live_is_roughly_uniform() -> None:
    t = table(40)
    counts = Counter(m.id for _ in range(4000) for m in t.random_live(3))
    assert len(counts) == 40 and max(counts.values()) < 2 * min(counts.values())


def test_gossip_targets_include_recently_dead_members_only_for_a_while() -> None:
    t = table(3)
    t.set_state(t.get("m0"), State.DEAD, 10.0)  # type: ignore[arg-type]
    picked = {m.id for _ in range(200) for m in t.gossip_targets(3, 11.0, 30.0)}
    assert "m0" in picked
    picked_later = {m.id for _ in range(200) for m in t.gossip_targets(3, 100.0, 30.0)}
    assert "m0" not in picked_later


def test_remove_forgets_a_member_everywhere() -> None:
    t = table(3)
    t.set_state(t.get("m1"), State.DEAD, 0.0)  # type: ignore[arg-type]
    assert t.dead_ids() == ["m1"] and t.gone_ids() == ["m1"]
    t.remove("m1")
    assert t.get("m1") is None and t.dead_ids() == [] and t.live_count() == 2


@given(st.lists(st.tuples(st.integers(0, 7), st.sampled_from(list(State))), max_size=60), st.integers(0, 99))
def test_indexes_match_the_states_after_any_changes(changes: list[tuple[int, State]], seed: int) -> None:
    t = table(8, seed)
    for i, state in changes:
        m = t.get(f"m{i}")
        assert m is not None
        t.set_state(m, state, 0.0)
        live = {m.id for m in t if m.id != "me" and m.state in (State.ALIVE, State.SUSPECT)}
        assert t.live_count() == len(live)
        assert {m.id for m in t.random_live(20)} == live
        assert set(t.dead_ids()) == {m.id for m in t if m.state is State.DEAD}
        assert set(t.gone_ids()) == {m.id for m in t if m.state in (State.DEAD, State.LEFT)}
