"""The storage set behind placement: who is placed, who is alive, and when a dead member's grace ends."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gossip.messages import MemberView, Meta, State
from node.storage_view import storage_set

STORAGE = Meta(roles=("storage",))


def member(i: int, state: State, changed: float, roles: tuple[str, ...] = ("storage",)) -> MemberView:
    return MemberView(f"n{i}", f"ws://n{i}", 1, state, Meta(roles=roles), changed)


def test_the_rule() -> None:
    ms = [member(0, State.ALIVE, 0), member(1, State.SUSPECT, 5), member(2, State.DEAD, 90),
          member(3, State.DEAD, 10), member(4, State.LEFT, 99), member(5, State.ALIVE, 0, roles=("agent",)),
          member(6, State.ALIVE, 0, roles=())]
    s = storage_set("n6", ms, now=100.0, dead_grace_s=50.0)
    # n3 died 90 s ago (> grace): out; n2 died 10 s ago: still placed, not alive; n6 is me (no role needed).
    assert s.members == ("n0", "n1", "n2", "n6")
    assert s.alive == frozenset({"n0", "n1", "n6"})
    assert s.expires_at == 140.0


@given(st.lists(st.tuples(st.sampled_from(list(State)), st.floats(0, 1000)), max_size=12), st.floats(0, 1000),
       st.floats(1, 500))
def test_the_set_changes_only_at_expires_at(states: list[tuple[State, float]], now: float, grace: float) -> None:
    """Between now and expires_at the same membership gives the same set; just after, a dead member is gone."""
    ms = [member(i, state, min(changed, now)) for i, (state, changed) in enumerate(states)]
    s = storage_set("me", ms, now, grace)
    assert s.alive <= set(s.members)
    dead_in = [m for m in ms if m.state is State.DEAD and m.id in s.members]
    if not dead_in:
        assert s.expires_at == float("inf")
        return
    assert s.expires_at == min(m.state_changed_at + grace for m in dead_in) > now
    before = storage_set("me", ms, (now + s.expires_at) / 2, grace)
    assert before.members == s.members or (now + s.expires_at) / 2 == s.expires_at
    after = storage_set("me", ms, s.expires_at + 1e-6, grace)  # (float rounding at the boundary)
    assert len(after.members) < len(s.members)


def test_remembered_members_not_yet_heard_of_stay_placed_for_the_grace() -> None:
    """A restarted node has heard from n0 only; n1 and n2 of its persisted ring stay placed (not alive)
    until the grace since its start ends, and one gossip reports as left is out at once."""
    heard = [member(9, State.ALIVE, 0), member(0, State.ALIVE, 0), member(3, State.LEFT, 5)]
    ring = ["n0", "n1", "n2", "n3", "n9"]
    s = storage_set("n9", heard, now=10.0, dead_grace_s=50.0, remembered=ring, remembered_since=5.0)
    assert s.members == ("n0", "n1", "n2", "n9") and s.alive == frozenset({"n9", "n0"})
    assert s.expires_at == 55.0
    later = storage_set("n9", heard, now=55.0, dead_grace_s=50.0, remembered=ring, remembered_since=5.0)
    assert later.members == ("n0", "n9")
