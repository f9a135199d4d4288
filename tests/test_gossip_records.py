"""MemberRecords (gossip/records.py) on its own: what each record does to the table, the events and
queued news it yields, push-pull merging, refutation, suspicion timers and stale-suspicion corrections."""

from __future__ import annotations

import random

from gossip.awareness import Awareness
from gossip.codec import alive_bytes, meta_bytes
from gossip.config import GossipConfig
from gossip.dissemination import Disseminator
from gossip.members import Member, MemberTable
from gossip.messages import Alive, Dead, EventKind, Gossip, Message, Meta, NodeState, PushPull, State, Suspect
from gossip.records import MemberRecords
from gossip.swim import STAT_NAMES

META = Meta(roles=("storage",))
CFG = GossipConfig.sim()


class Rig:
    def __init__(self) -> None:
        rng = random.Random(1)
        self.me = Member("a", "sim:a", 5, State.ALIVE, META, 0.0, alive_bytes("a", "sim:a", meta_bytes(META)))
        self.table = MemberTable(self.me, rng)
        self.sent: list[tuple[str, Message]] = []
        self.events: list[tuple[EventKind, str]] = []
        self.timers: list[tuple[float, str]] = []
        self.stats = dict.fromkeys(STAT_NAMES, 0)
        self.awareness = Awareness(CFG.awareness_max_multiplier)
        self.diss = Disseminator(CFG, self.table, rng, lambda a, m: self.sent.append((a, m)), self.stats,
                                 "default", "sim:a", 3900, 3700)
        self.records = MemberRecords(self.me, CFG, self.table, self.diss, self.awareness,
                                     lambda k, m: self.events.append((k, m.id)), self.stats,
                                     lambda d, node: self.timers.append((d, node)), 3700)

    def state(self, node: str) -> tuple[int, State] | None:
        m = self.table.get(node)
        return None if m is None else (m.incarnation, m.state)

    def queued(self) -> set[str]:
        return set(self.diss.queue.transmit_counts())


def test_a_new_alive_record_joins_the_member_and_is_passed_on() -> None:
    r = Rig()
    r.records.apply((Alive("b", 1, "sim:b", META),), "sim:c", 0.0)
    assert r.state("b") == (1, State.ALIVE) and r.events == [(EventKind.JOINED, "b")] and "b" in r.queued()
    r.records.apply((Alive("b", 1, "sim:b", META),), "sim:c", 0.0)  # old news: nothing happens
    assert r.events == [(EventKind.JOINED, "b")]
    r.records.apply((Alive("b", 2, "sim:b2", META),), "sim:c", 0.0)
    assert r.events[-1] == (EventKind.UPDATED, "b") and r.table.get("b").addr == "sim:b2"  # type: ignore[union-attr]


def test_a_suspicion_runs_its_timer_and_ends_in_death_unless_refuted() -> None:
    r = Rig()
    r.records.apply((Alive("b", 1, "sim:b", META), Alive("c", 1, "sim:c", META)), "sim:x", 0.0)
    r.records.apply((Suspect("b", 1, "c"), Suspect("c", 1, "b")), "sim:x", 1.0)
    assert r.state("b") == (1, State.SUSPECT) and len(r.timers) == 2
    r.records.apply((Alive("c", 2, "sim:c", META),), "sim:x", 2.0)  # c refuted
    for deadline, node in r.timers:
        r.records.suspicion_expired(node, deadline)
    assert r.state("b") == (1, State.DEAD) and r.state("c") == (2, State.ALIVE)
    assert (EventKind.ALIVE, "c") in r.events and (EventKind.DEAD, "b") in r.events
    assert r.stats["deaths_declared"] == 1


def test_records_about_ourselves_are_refuted_above_their_incarnation() -> None:
    r = Rig()
    r.records.apply((Suspect("a", 7, "b"),), "sim:b", 0.0)
    assert r.me.incarnation == 8 and r.me.state is State.ALIVE and r.awareness.score == 1
    r.records.apply((Dead("a", 3, "b"),), "sim:b", 0.0)  # older than us: ignored
    assert r.me.incarnation == 8 and r.stats["refutations"] == 1
    assert r.events == []


def test_a_sender_of_a_refuted_suspicion_gets_the_current_record() -> None:
    r = Rig()
    r.records.apply((Alive("b", 4, "sim:b", META),), "sim:c", 0.0)
    r.records.apply((Suspect("b", 3, "c"),), "sim:c", 0.0)
    assert r.sent == [("sim:c", Gossip((Alive("b", 4, "sim:b", META),)))] and r.state("b") == (4, State.ALIVE)


def test_push_pull_merge_turns_remote_deaths_into_suspicions_and_skips_dead_strangers() -> None:
    r = Rig()
    r.records.apply((Alive("b", 1, "sim:b", META),), "sim:c", 0.0)
    r.records.merge(PushPull((NodeState("b", "sim:b", 1, State.DEAD, META),
                              NodeState("z", "sim:z", 1, State.DEAD, META),
                              NodeState("y", "sim:y", 1, State.SUSPECT, META),
                              NodeState("l", "sim:l", 1, State.LEFT, META))), 1.0)
    assert r.state("b") == (1, State.SUSPECT)  # it gets its suspicion timeout to refute
    assert r.state("z") is None and r.state("l") is None
    assert r.state("y") == (1, State.SUSPECT)


def test_members_from_a_join_reply_get_the_small_retransmit_budget() -> None:
    r = Rig()
    for i in range(200):
        r.table.add(Member(f"k{i}", f"sim:k{i}", 1, State.ALIVE, META, 0.0, 60))
    states = tuple(NodeState(f"m{i}", f"sim:m{i}", 1, State.ALIVE, META) for i in range(9))
    r.records.merge(PushPull(states, join=True, reply=True), 0.0)
    r.records.merge(PushPull((NodeState("x", "sim:x", 1, State.ALIVE, META),), join=True), 0.0)
    counts = r.diss.queue.transmit_counts()
    # n > 200: a full budget is 12 sends; a join reply's members count as 8 sent already (4 to go).
    assert counts == {**{f"m{i}": 8 for i in range(9)}, "x": 0}
