"""Quorum bookkeeping: W/R counting, early failure, sloppy stand-ins and hints, read merge and repair targets."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from crypto.errors import InvalidArgument, Unavailable
from ring.config import ReplicationConfig
from ring.merge import Versioned, canonical_encoding, lww_merge, memory_merge
from ring.quorum import Consistency, Outcome, ReadQuorum, WriteQuorum, parse_consistency, required

PENDING, SUCCEEDED, FAILED = Outcome.PENDING, Outcome.SUCCEEDED, Outcome.FAILED


def names(n: int) -> list[str]:
    return [f"n{i}" for i in range(n)]


# ---------------------------------------------------------------- consistency levels


def test_required_levels() -> None:
    assert [required(Consistency.ONE, n) for n in (1, 3, 5)] == [1, 1, 1]
    assert [required(Consistency.QUORUM, n) for n in (1, 2, 3, 4, 5)] == [1, 2, 2, 3, 3]
    assert [required(Consistency.ALL, n) for n in (1, 3, 5)] == [1, 3, 5]
    assert required(2, 3) == 2
    for bad_level, n in ((0, 3), (4, 3), (True, 3), ("quorum", 3), (None, 3)):
        with pytest.raises(InvalidArgument):
            required(bad_level, n)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        required(Consistency.ONE, 0)


def test_parse_consistency() -> None:
    assert parse_consistency("QUORUM") is Consistency.QUORUM
    assert parse_consistency("one") is Consistency.ONE
    assert parse_consistency(2) == 2
    for bad in ("most", 0, -1, True, 1.0, None):
        with pytest.raises(InvalidArgument):
            parse_consistency(bad)


def test_config_defaults_overlap_and_validate() -> None:
    cfg = ReplicationConfig()
    assert (cfg.n_replicas, cfg.w_replicas, cfg.r_replicas, cfg.digest_fanout) == (3, 2, 2, 16)
    assert cfg.quorums_overlap and not cfg.replace(w_replicas=1, r_replicas=1).quorums_overlap
    for bad in ({"w_replicas": 4}, {"r_replicas": 0}, {"digest_fanout": 1}, {"hint_ttl_s": 8 * 86_400.0},
                {"request_timeout_s": 0.0}, {"n_replicas": True}):
        with pytest.raises(InvalidArgument):
            ReplicationConfig(**bad)


def test_config_engine_bounds_validate() -> None:
    cfg = ReplicationConfig()
    assert cfg.replica_timeout_s == cfg.request_timeout_s / 4  # the coordinator's historical default
    assert cfg.replace(request_timeout_s=8.0).replica_timeout_s == 2.0
    for bad in ({"pending_requests_max": 0}, {"stand_ins_per_slot_max": -1}, {"hints_in_flight_per_owner_max": 0},
                {"hint_retry_s": 0.0}, {"replica_timeout_fraction": 0.0}, {"replica_timeout_fraction": 1.5},
                {"ae_sessions_max": 0}, {"ae_message_bytes_max": 1.5}, {"ae_request_timeout_s": -1.0},
                {"ae_interval_jitter_fraction": 1.0}, {"ae_interval_jitter_fraction": -0.1},
                {"ae_session_idle_s": 6.0}, {"rebalance_records_per_page_max": 0},
                {"rebalance_request_timeout_s": 0.0}, {"rebalance_nudge_interval_s": 0.0},
                {"rebalance_partitions_per_nudge_max": False}):
        with pytest.raises(InvalidArgument):
            ReplicationConfig(**bad)


# ---------------------------------------------------------------- quorum intersection


@pytest.mark.parametrize("n", range(1, 8))
def test_quorums_intersect_exactly_when_w_plus_r_exceeds_n(n: int) -> None:
    nodes = range(n)
    for w, r in itertools.product(range(1, n + 1), repeat=2):
        all_meet = all(set(wq) & set(rq) for wq in itertools.combinations(nodes, w)
                       for rq in itertools.combinations(nodes, r))
        assert all_meet == (w + r > n), (n, w, r)


@st.composite
def overlapping_quorum_run(draw: st.DrawFn) -> tuple[int, int, int, list[str], list[str], list[str]]:
    n = draw(st.integers(1, 7))
    w = draw(st.integers(1, n))
    r = draw(st.integers(n - w + 1, n))
    nodes = names(n)
    write_order = draw(st.permutations(nodes))
    read_order = draw(st.permutations(nodes))
    down = draw(st.lists(st.sampled_from(nodes), unique=True, max_size=n))
    return n, w, r, write_order, read_order, down


@given(overlapping_quorum_run())
def test_every_write_quorum_meets_every_read_quorum(run: tuple[int, int, int, list[str], list[str], list[str]]) -> None:
    """With W + R > N (strict), the nodes that acked a successful write and those that answered a
    successful read share a node, whatever the arrival order and whichever replicas are down."""
    n, w, r, write_order, read_order, down = run
    wq = WriteQuorum(names(n), w, deadline=10.0)
    rq: ReadQuorum[int] = ReadQuorum(names(n), r, deadline=10.0, merge=lambda a, b: b if a is None else a)
    for node in write_order:
        _ = wq.fail(node, "unavailable") if node in down else wq.ack(node)
        if wq.outcome is not PENDING:
            break
    for node in read_order:
        _ = rq.fail(node, "unavailable") if node in down else rq.respond(node, 1)
        if rq.outcome is not PENDING:
            break
    if wq.outcome is SUCCEEDED and rq.outcome is SUCCEEDED:
        assert wq.acked & set(rq.answers)
    alive = n - len(down)
    assert wq.outcome is (SUCCEEDED if alive >= w else FAILED)
    assert rq.outcome is (SUCCEEDED if alive >= r else FAILED)


# ---------------------------------------------------------------- write quorum, examples


def test_write_succeeds_at_w_distinct_acks_ignoring_duplicates_and_strangers() -> None:
    q = WriteQuorum(["a", "b", "c"], 2, deadline=5.0)
    assert q.ack("a") is PENDING
    assert q.ack("a") is PENDING
    assert q.ack("zed") is PENDING
    assert q.ack("b") is SUCCEEDED
    assert q.acked == {"a", "b"} and q.error() is None and q.next_deadline() is None


def test_write_fails_as_soon_as_w_is_out_of_reach() -> None:
    q = WriteQuorum(["a", "b", "c"], 2, deadline=5.0)
    assert q.ack("a") is PENDING
    assert q.fail("b", "unavailable") is PENDING
    assert q.fail("c", "expired") is FAILED
    err = q.error()
    assert isinstance(err, Unavailable) and err.code == "unavailable"
    assert err.details == {"acked": 1, "required": 2, "replicas": 3, "timed_out": False,
                           "failed": {"b": "unavailable", "c": "expired"}}


def test_write_fails_at_the_deadline_not_before() -> None:
    q = WriteQuorum(["a", "b", "c"], 2, deadline=5.0)
    q.ack("a")
    assert q.next_deadline() == 5.0
    assert q.expire(4.999) is PENDING
    assert q.expire(5.0) is FAILED
    assert q.ack("b") is FAILED  # late: recorded, outcome kept
    assert q.acked == {"a", "b"}
    err = q.error()
    assert err is not None and err.details["timed_out"] is True


def test_an_ack_wins_over_a_failure_of_the_same_replica() -> None:
    q = WriteQuorum(["a", "b", "c"], 3, deadline=5.0)
    q.fail("a", "unavailable")
    assert q.outcome is FAILED  # 3 - 1 < 3
    q = WriteQuorum(["a", "b", "c"], 2, deadline=5.0)
    q.fail("a", "unavailable")
    q.ack("a")
    assert q.failed == {} and q.ack("b") is SUCCEEDED
    q.fail("b", "unavailable")
    assert q.failed == {} and q.outcome is SUCCEEDED


def test_stand_in_acks_count_only_when_sloppy() -> None:
    strict = WriteQuorum(["a", "b", "c"], 2, deadline=5.0)
    strict.ack("a")
    assert strict.ack("d", stands_in_for="b") is PENDING
    assert strict.hints() == [] and strict.acked == {"a"}

    sloppy = WriteQuorum(["a", "b", "c"], 2, deadline=5.0, sloppy=True)
    sloppy.ack("a")
    assert sloppy.ack("d", stands_in_for="b") is SUCCEEDED
    assert sloppy.hints() == [("d", "b")] and sloppy.acked == {"a", "d"}


def test_a_physical_node_counts_once() -> None:
    q = WriteQuorum(["a", "b", "c"], 2, deadline=5.0, sloppy=True)
    assert q.ack("d", stands_in_for="b") is PENDING
    assert q.ack("d", stands_in_for="c") is PENDING  # d already holds b's copy
    assert q.ack("a", stands_in_for="c") is PENDING  # an owner is not a stand-in
    assert q.ack("e", stands_in_for="b") is PENDING  # b's slot is already filled
    assert q.ack("e", stands_in_for="zed") is PENDING  # not an owner
    assert q.hints() == [("d", "b")] and q.acked == {"d"}
    assert q.ack("e", stands_in_for="c") is SUCCEEDED
    assert q.hints() == [("d", "b"), ("e", "c")]


def test_owner_ack_supersedes_its_hint() -> None:
    q = WriteQuorum(["a", "b", "c"], 3, deadline=5.0, sloppy=True)
    q.ack("d", stands_in_for="b")
    q.ack("b")
    assert q.hints() == [] and q.acked == {"b"}


def test_stand_in_failure_gives_up_the_slot_only_when_sloppy() -> None:
    q = WriteQuorum(["a", "b", "c"], 3, deadline=5.0, sloppy=True)
    assert q.fail("d", "unavailable", stands_in_for="b") is FAILED
    assert q.failed == {"b": "unavailable"}
    strict = WriteQuorum(["a", "b", "c"], 3, deadline=5.0)
    assert strict.fail("d", "unavailable", stands_in_for="b") is PENDING


def test_write_quorum_rejects_bad_construction() -> None:
    for replicas, w in ((["a", "a"], 1), ([], 1), (["a", ""], 1), ("ab", 1), (["a", "b"], 3), (["a"], 0)):
        with pytest.raises(InvalidArgument):
            WriteQuorum(replicas, w, deadline=1.0)
    with pytest.raises(InvalidArgument):
        WriteQuorum(["a"], 1, deadline=float("nan"))
    with pytest.raises(InvalidArgument):
        WriteQuorum(["a"], 1, deadline=1.0).fail("a", "")


# ---------------------------------------------------------------- write quorum, properties

OWNERS = names(4)
STAND_INS = {o: [f"s{o}{k}" for k in range(2)] for o in OWNERS}  # each stand-in serves one owner
DEADLINE = 10.0


class WriteQuorumMachine(RuleBasedStateMachine):
    """WriteQuorum against a model recomputed from the whole event history after every step."""

    @initialize(w=st.integers(1, len(OWNERS)), sloppy=st.booleans())
    def start(self, w: int, sloppy: bool) -> None:
        self.w, self.sloppy = w, sloppy
        self.q = WriteQuorum(OWNERS, w, DEADLINE, sloppy=sloppy)
        self.history: list[tuple[Any, ...]] = []
        self.seen: list[Outcome] = []

    def _step(self, event: tuple[Any, ...], outcome: Outcome) -> None:
        self.history.append(event)
        self.seen.append(outcome)

    @rule(owner=st.sampled_from(OWNERS + ["stranger"]))
    def ack(self, owner: str) -> None:
        self._step(("ack", owner, None), self.q.ack(owner))

    @rule(owner=st.sampled_from(OWNERS), k=st.integers(0, 1))
    def ack_stand_in(self, owner: str, k: int) -> None:
        self._step(("ack", STAND_INS[owner][k], owner), self.q.ack(STAND_INS[owner][k], stands_in_for=owner))

    @rule(owner=st.sampled_from(OWNERS), via_stand_in=st.booleans())
    def fail(self, owner: str, via_stand_in: bool) -> None:
        if via_stand_in:
            self._step(("fail", STAND_INS[owner][0], owner),
                       self.q.fail(STAND_INS[owner][0], "unavailable", stands_in_for=owner))
        else:
            self._step(("fail", owner, None), self.q.fail(owner, "unavailable"))

    @rule(now=st.floats(0.0, 2 * DEADLINE))
    def expire(self, now: float) -> None:
        self._step(("expire", now), self.q.expire(now))

    def _model(self, events: list[tuple[Any, ...]]) -> tuple[dict[str, str], set[str]]:
        filled: dict[str, str] = {}
        for o in OWNERS:
            if ("ack", o, None) in events:
                filled[o] = o
            elif self.sloppy:
                first = next((e[1] for e in events if e[0] == "ack" and e[2] == o), None)
                if first is not None:
                    filled[o] = first
        failed = {o for o in OWNERS if o not in filled and (
            ("fail", o, None) in events or (self.sloppy and ("fail", STAND_INS[o][0], o) in events))}
        return filled, failed

    def _model_outcome(self) -> Outcome:
        for i, event in enumerate(self.history):
            if event[0] == "expire" and event[1] >= DEADLINE:
                return FAILED
            filled, failed = self._model(self.history[: i + 1])
            if len(filled) >= self.w:
                return SUCCEEDED
            if len(OWNERS) - len(failed) < self.w:
                return FAILED
        return PENDING

    @invariant()
    def outcome_matches_the_model(self) -> None:
        assert self.q.outcome is self._model_outcome()
        filled, failed = self._model(self.history)
        assert self.q.acked == set(filled.values())
        assert set(self.q.failed) == failed
        assert self.q.hints() == [(filled[o], o) for o in OWNERS if filled.get(o, o) != o]

    @invariant()
    def outcome_never_changes_once_decided(self) -> None:
        decided = [o for o in self.seen if o is not PENDING]
        assert len(set(decided)) <= 1
        if decided:
            assert self.seen[self.seen.index(decided[0]):] == decided

    @invariant()
    def never_a_success_without_w_distinct_holders(self) -> None:
        if self.q.outcome is SUCCEEDED:
            assert len(self.q.acked) >= self.w
            assert self.sloppy or self.q.acked <= set(OWNERS)


TestWriteQuorumMachine = WriteQuorumMachine.TestCase
TestWriteQuorumMachine.settings = settings(max_examples=150, stateful_step_count=25, deadline=None)


@given(st.integers(1, 5).flatmap(lambda n: st.tuples(
    st.just(n), st.integers(1, n),
    st.lists(st.sampled_from(names(n) + ["x", "y"]), max_size=12), st.randoms(use_true_random=False))))
def test_ack_order_does_not_matter(case: tuple[int, int, list[str], Any]) -> None:
    n, w, acks, rng = case
    shuffled = list(acks)
    rng.shuffle(shuffled)
    results = []
    for order in (acks, shuffled):
        q = WriteQuorum(names(n), w, DEADLINE)
        for a in order:
            q.ack(a)
        results.append((q.outcome, q.acked))
    assert results[0] == results[1]
    assert results[0][0] is (SUCCEEDED if len(set(acks) & set(names(n))) >= w else PENDING)


# ---------------------------------------------------------------- read quorum

versioned = st.builds(Versioned, value=st.integers(0, 3), hlc=st.integers(0, 3),
                      writer=st.sampled_from(["a", "b"]), deleted=st.booleans())
memory_record = st.builds(lambda hlc, deleted, body: {"id": "m1", "ns": "ns", "hlc": hlc, "deleted": deleted,
                                                       "content": body},
                          st.integers(0, 3), st.booleans(), st.sampled_from(["x", "y"]))
MERGES: list[tuple[Any, Any]] = [(lww_merge, versioned), (memory_merge, memory_record)]


def wire(v: Any) -> str:
    return canonical_encoding(v.to_wire() if isinstance(v, Versioned) else v)


@pytest.mark.parametrize(("merge", "value"), MERGES, ids=["lww", "memory"])
def test_read_merge_is_order_independent_and_stale_is_exact(merge: Any, value: Any) -> None:
    @given(st.lists(st.none() | value, min_size=1, max_size=6), st.randoms(use_true_random=False),
           st.data())
    def check(values: list[Any], rng: Any, data: st.DataObject) -> None:
        reps = names(len(values))
        r = data.draw(st.integers(1, len(reps)))
        order = list(zip(reps, values, strict=True))
        results = []
        for arrival in (order, rng.sample(order, len(order))):
            q = ReadQuorum(reps, r, DEADLINE, merge)
            for i, (rep, v) in enumerate(arrival):
                outcome = q.respond(rep, v) if i < r else q.late(rep, v)
                assert outcome is (SUCCEEDED if i + 1 >= r else PENDING)
            results.append((wire(q.result()), q.stale()))
        assert results[0] == results[1]
        merged = q.result()
        # The result is the join: it absorbs every answer, so repairing the stale ones makes all equal.
        assert all(wire(merge(merged, v)) == wire(merged) for v in values)
        assert q.stale() == [rep for rep, v in order if v != merged]
        assert set(q.stale()) == {rep for rep, v in order if wire(v) != wire(merged)}

    check()


def test_read_late_answer_updates_result_and_stale_but_not_outcome() -> None:
    old, new = Versioned("old", 5, "a"), Versioned("new", 9, "a")
    q: ReadQuorum[Versioned] = ReadQuorum(["a", "b", "c"], 2, DEADLINE, lww_merge)
    q.respond("a", old)
    assert q.respond("b", None) is SUCCEEDED
    assert q.result() == old and q.stale() == ["b"]
    assert q.late("c", new) is SUCCEEDED
    assert q.result() == new and q.stale() == ["a", "b"]
    assert q.late("c", old) is SUCCEEDED and q.answers["c"] == new  # first answer of a replica counts


def test_read_all_missing_is_a_successful_none() -> None:
    q: ReadQuorum[Versioned] = ReadQuorum(["a", "b"], 2, DEADLINE, lww_merge)
    q.respond("a", None)
    q.respond("b", None)
    assert q.outcome is SUCCEEDED and q.result() is None and q.stale() == []


def test_read_fails_when_r_is_out_of_reach_or_at_the_deadline() -> None:
    q: ReadQuorum[Versioned] = ReadQuorum(["a", "b", "c"], 2, DEADLINE, lww_merge)
    q.fail("a", "unavailable")
    q.respond("zed", None)
    assert q.fail("b", "unavailable") is FAILED
    err = q.error()
    assert err is not None and err.details["answered"] == 0 and err.details["required"] == 2
    q = ReadQuorum(["a", "b", "c"], 2, DEADLINE, lww_merge)
    q.fail("a", "unavailable")
    q.respond("a", None)  # an answer wins over the earlier failure
    assert q.failed == {} and q.expire(DEADLINE - 1) is PENDING and q.expire(DEADLINE) is FAILED
    assert q.stale() == [] and q.next_deadline() is None


def test_read_repair_targets_with_memory_union_and_tombstones() -> None:
    live = {"id": "m1", "ns": "ns", "hlc": 7, "deleted": False, "content": "x"}
    tomb = {"id": "m1", "ns": "ns", "hlc": 3, "deleted": True}
    q: ReadQuorum[Any] = ReadQuorum(["a", "b", "c"], 3, DEADLINE, memory_merge)
    q.respond("a", live)
    q.respond("b", tomb)
    q.respond("c", None)
    assert q.result() == tomb and q.stale() == ["a", "c"]  # a deleted memory never comes back
