"""Transmit-limited queue: retransmit bound, fewest-sent first, per-member invalidation, byte budget."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from gossip.broadcast import BroadcastQueue, retransmit_limit
from gossip.messages import Alive, Dead, Meta, Suspect

META = Meta()


def alive(node: str, inc: int = 0) -> Alive:
    return Alive(node, inc, f"sim:{node}", META)


def test_retransmit_limit_is_mult_times_ceil_log10() -> None:
    assert retransmit_limit(4, 1) == 4
    assert retransmit_limit(4, 9) == 4
    assert retransmit_limit(4, 10) == 8
    assert retransmit_limit(4, 1000) == 16
    assert retransmit_limit(4, 0) == 4  # never zero: an update is always sent at least mult times


def test_an_update_leaves_after_its_limit() -> None:
    q = BroadcastQueue(retransmit_mult=2, items_max=100)
    q.push(alive("a"), 50)
    sent = 0
    while q:
        ups, _ = q.take(1000, n=5)
        sent += len(ups)
    assert sent == retransmit_limit(2, 5) == 2


def test_a_newer_update_about_a_member_replaces_the_queued_one() -> None:
    q = BroadcastQueue(4, 100)
    q.push(Suspect("a", 1, "x"), 30)
    q.take(1000, n=3)
    q.push(alive("a", 2), 50)
    assert len(q) == 1
    ups, _ = q.take(1000, n=3)
    assert ups == [alive("a", 2)]
    assert q.transmit_counts() == {"a": 1}  # the replacement starts from zero transmits


def test_fewest_sent_first_and_newest_first_among_equals() -> None:
    q = BroadcastQueue(4, 100)
    q.push(alive("old"), 50)
    q.take(1000, n=3)
    q.push(alive("a"), 50)
    q.push(alive("b"), 50)
    ups, used = q.take(110, n=3)
    assert [u.node for u in ups] == ["b", "a"] and used == 100


def test_budget_is_respected_and_small_records_fill_the_gap() -> None:
    q = BroadcastQueue(4, 100)
    q.push(Dead("small", 0, "x"), 20)
    q.push(alive("big"), 500)
    ups, used = q.take(100, n=3)
    assert [u.node for u in ups] == ["small"] and used == 20


def test_skip_node_leaves_that_update_queued() -> None:
    q = BroadcastQueue(4, 100)
    q.push(Suspect("a", 0, "x"), 20)
    ups, _ = q.take(100, n=3, skip_node="a")
    assert ups == [] and q.transmit_counts() == {"a": 0}


def test_queue_bound_evicts_the_most_transmitted() -> None:
    q = BroadcastQueue(4, 2)
    q.push(alive("a"), 10)
    q.take(1000, n=3)
    q.push(alive("b"), 10)
    q.push(alive("c"), 10)
    assert len(q) == 2 and set(q.transmit_counts()) == {"b", "c"} and q.dropped == 1


ops = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.sampled_from("abcdefgh"), st.integers(10, 300)),
        st.tuples(st.just("take"), st.integers(0, 2000), st.integers(1, 2000)),
    ),
    max_size=200,
)


@given(ops, st.integers(1, 5))
def test_retransmit_bound_holds_for_any_interleaving(script: list[tuple[str, object, int]], mult: int) -> None:
    """No pushed update is ever handed out more than RetransmitMult * ceil(log10(n + 1)) times."""
    q = BroadcastQueue(mult, 1000)
    sent: Counter[int] = Counter()
    limits: dict[int, int] = {}
    version = 0
    for op, a, b in script:
        if op == "push":
            version += 1
            q.push(Alive(str(a), version, "x", META), b)
        else:
            budget, n = int(a), b  # type: ignore[call-overload]
            ups, used = q.take(budget, n)
            assert used <= budget
            for u in ups:
                sent[u.incarnation] += 1
                limits[u.incarnation] = max(limits.get(u.incarnation, 0), retransmit_limit(mult, n))
                assert sent[u.incarnation] <= limits[u.incarnation]


def test_likely_old_news_can_start_with_a_smaller_budget() -> None:
    q = BroadcastQueue(4, 100)
    q.push(alive("old-news"), 50, sent=retransmit_limit(4, 1000) - 4)
    q.push(alive("news"), 50)
    sends: Counter[str] = Counter()
    while q:
        ups, _ = q.take(1000, n=1000)
        sends.update(u.node for u in ups)
    assert sends == {"old-news": 4, "news": 16}
