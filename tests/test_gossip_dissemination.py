"""Disseminator (gossip/dissemination.py) on its own: piggyback budgets, the gossip fan-out, push-pull
state and its bound, the push-pull interval's growth, seed joins and retries, corrections."""

from __future__ import annotations

import random

from gossip.codec import alive_bytes, meta_bytes
from gossip.config import GossipConfig
from gossip.dissemination import Disseminator
from gossip.members import Member, MemberTable
from gossip.messages import Alive, Gossip, Message, Meta, PushPull, State, Suspect
from gossip.swim import STAT_NAMES

META = Meta(roles=("storage",))
SIZE = alive_bytes("b", "sim:b", meta_bytes(META))


def rig(others: int = 3, config: GossipConfig | None = None) -> tuple[Disseminator, MemberTable, list[tuple[str, Message]],
                                                                     dict[str, int]]:
    rng = random.Random(1)
    table = MemberTable(Member("a", "sim:a", 1, State.ALIVE, META, 0.0, SIZE), rng)
    for i in range(others):
        table.add(Member(f"m{i}", f"sim:m{i}", 1, State.ALIVE, META, 0.0, SIZE))
    sent: list[tuple[str, Message]] = []
    stats = dict.fromkeys(STAT_NAMES, 0)
    d = Disseminator(config or GossipConfig.sim(), table, rng, lambda a, m: sent.append((a, m)), stats,
                     "default", "sim:a", 3900, 3700)
    return d, table, sent, stats


def test_gossip_sends_queued_news_to_gossip_nodes_members_and_nothing_when_idle() -> None:
    d, _, sent, _ = rig(others=5)
    d.gossip(0.0)
    assert sent == []
    d.enqueue(Suspect("m1", 1, "a"))
    d.gossip(0.0)
    assert len(sent) == GossipConfig.sim().gossip_nodes
    assert all(m == Gossip((Suspect("m1", 1, "a"),)) for _, m in sent)
    assert len({a for a, _ in sent}) == len(sent)


def test_piggyback_respects_the_budget_and_the_retransmit_limit() -> None:
    d, _, _, stats = rig(others=3)
    records = [Alive(f"x{i}", 1, f"sim:x{i}", META) for i in range(10)]
    for r in records:
        d.enqueue(r)
    size = alive_bytes("x0", "sim:x0", meta_bytes(META))
    assert len(d.piggyback(3 * size + 5)) == 3
    sends = 0
    while d.queue:
        sends += len(d.piggyback(10_000))
    # 4 members: each update goes out retransmit_mult * ceil(log10(5)) = 4 times in all.
    assert sends + 3 == 10 * 4 and stats["updates_sent"] == 40


def test_likely_old_news_gets_only_retransmit_mult_sends() -> None:
    d, _, _, _ = rig(others=99)  # n = 100: a full budget is 4 * 3 = 12 sends
    d.enqueue_alive(Alive("x", 1, "sim:x", META), SIZE, news=False)
    d.enqueue_alive(Alive("y", 1, "sim:y", META), SIZE, news=True)
    counts = {"x": 0, "y": 0}
    while d.queue:
        for u in d.piggyback(10_000):
            counts[u.node] += 1
    assert counts == {"x": 4, "y": 12}


def test_push_pull_state_puts_self_first_and_stops_at_the_frame_bound() -> None:
    cfg = GossipConfig.sim().replace(push_pull_bytes_max=4096)
    d, _, _, stats = rig(others=100, config=cfg)
    states = d.states()
    assert states[0].node == "a"
    assert 10 < len(states) < 101 and stats["push_pull_truncated"] == 1
    assert sum(SIZE for _ in states) <= 4096


def test_push_pull_interval_grows_with_log2_n_above_the_threshold() -> None:
    cfg = GossipConfig.sim()
    assert rig(others=31)[0].push_pull_interval() == cfg.push_pull_interval_s  # n = 32
    assert rig(others=32)[0].push_pull_interval() == 2 * cfg.push_pull_interval_s
    assert rig(others=127)[0].push_pull_interval() == 3 * cfg.push_pull_interval_s  # n = 128 = 4 x 32


def test_a_push_pull_is_answered_once_and_a_reply_is_not() -> None:
    d, _, sent, stats = rig(others=1)
    d.answer("sim:z", PushPull((), join=True))
    d.answer("sim:z", PushPull((), join=True, reply=True))
    [(addr, reply)] = sent
    assert addr == "sim:z" and isinstance(reply, PushPull) and reply.reply and reply.join
    assert stats["push_pulls_received"] == 2


def test_seeds_are_retried_while_none_is_live() -> None:
    d, table, sent, stats = rig(others=0)
    d.join(["sim:a", "sim:s1", "sim:s2", "sim:s1"], 0.0)  # ourselves and duplicates are dropped
    assert [a for a, _ in sent] == ["sim:s1", "sim:s2"] and d.seeds == ("sim:s1", "sim:s2")
    sent.clear()
    d.retry_seeds(1.0)  # alone: every round
    assert len(sent) == 1 and isinstance(sent[0][1], PushPull) and sent[0][1].join
    table.add(Member("s1", "sim:s1", 1, State.ALIVE, META, 1.0, SIZE))
    sent.clear()
    d.retry_seeds(1000.0)  # a seed is live: nothing to do
    assert sent == [] and stats["seed_retries"] == 1
    s1 = table.get("s1")
    assert s1 is not None
    table.add(Member("o", "sim:o", 1, State.ALIVE, META, 1.0, SIZE))
    table.set_state(s1, State.DEAD, 2.0)  # not alone, but no seed live: once per push-pull interval
    interval = GossipConfig.sim().push_pull_interval_s
    d.retry_seeds(2.0)  # the last try (at 1.0) is too recent
    d.retry_seeds(1.0 + interval)
    d.retry_seeds(2.0 + interval)
    assert len(sent) == 1 and stats["seed_retries"] == 2


def test_a_correction_carries_current_alive_records_within_one_frame() -> None:
    d, table, sent, stats = rig(others=3)
    members = [m for m in table if m.id != "a"]
    d.correct(members + members[:1], "sim:z")
    [(addr, msg)] = sent
    assert addr == "sim:z" and msg == Gossip(tuple(Alive(m.id, m.incarnation, m.addr, m.meta) for m in members))
    assert stats["corrections_sent"] == 1
