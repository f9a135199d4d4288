"""Signal kinds that never lose an update: counters (signal.incr) and add-wins sets (signal.add/remove),
from the store on a bare connection up to concurrent agents on a loopback node, plus a version-1 file."""

from __future__ import annotations

import random
import sqlite3
from itertools import permutations
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.errors import Conflict, Forbidden, InvalidArgument, NotFound, TooLarge
from crypto.grants import make_grant
from crypto.identity import Identity
from node import signal_store as s
from node.client import BlockingMemoryClient
from node.database import SCHEMA_V1, SCHEMA_VERSION, connect, init_schema, schema_version
from node.effects import Change
from ring.merge import Versioned
from tests.conftest import RunningNode, start_node

NS = "ns"


def fresh() -> sqlite3.Connection:
    c = connect(Path(":memory:"), fsync="normal")
    init_schema(c)
    return c


@pytest.fixture
def conn() -> sqlite3.Connection:
    return fresh()


def incr(c: sqlite3.Connection, key: str, by: int, hlc: int, *, writer: str = "a", expires: int | None = None,
         now: int = 0) -> s.Applied[dict[str, Any]]:
    return s.signal_incr(c, NS, key, by, hlc=hlc, writer=writer, expires_ms=expires, now_ms=now)


def add(c: sqlite3.Connection, key: str, elements: list[Any], hlc: int, *, node: str = "n1", writer: str = "a",
        expires: int | None = None, now: int = 0) -> s.Applied[dict[str, Any]]:
    return s.signal_add(c, NS, key, elements, tag=f"{node}:{hlc}", hlc=hlc, writer=writer, expires_ms=expires,
                        now_ms=now)


def remove(c: sqlite3.Connection, key: str, elements: list[Any], hlc: int, *, expires: int | None = None,
           now: int = 0) -> s.Applied[dict[str, Any]]:
    return s.signal_remove(c, NS, key, elements, hlc=hlc, writer="a", expires_ms=expires, now_ms=now)


def get(c: sqlite3.Connection, key: str, now: int = 0) -> dict[str, Any]:
    return s.signal_get(c, NS, key, now)


def event(applied: s.Applied[Any]) -> dict[str, Any]:
    (change,) = applied.effects
    assert isinstance(change, Change)
    return change.event


# ---------------------------------------------------------------- store: counters


def test_counter_sums_every_writer_and_versions_each_change(conn: sqlite3.Connection) -> None:
    r = incr(conn, "c", 5, 10, writer="a")
    assert r.value == {"key": "c", "kind": "counter", "value": 5, "version": 10, "writer": "a"}
    assert event(r) == {"op": "incr", "ns": NS, "key": "c", "kind": "counter", "value": 5, "version": 10,
                        "writer": "a", "by": 5}
    incr(conn, "c", -7, 11, writer="b")
    assert get(conn, "c") == {"key": "c", "kind": "counter", "value": -2, "version": 11, "writer": "b"}
    assert incr(conn, "c", 0, 12).effects == ()  # nothing changed: no new version, no event
    assert get(conn, "c")["version"] == 11
    listed = s.signal_list(conn, NS, "", 10, 0)["items"]
    assert listed == [{"key": "c", "kind": "counter", "value": -2, "version": 11, "writer": "b", "expires_ms": None}]


def test_counter_stays_in_64_bits(conn: sqlite3.Connection) -> None:
    incr(conn, "c", 2**63 - 1, 1, writer="a")
    with pytest.raises(InvalidArgument):
        incr(conn, "c", 1, 2, writer="b")  # the value would leave int64
    with pytest.raises(InvalidArgument):
        incr(conn, "c", 1, 2, writer="a")  # a's own total would leave int64
    with pytest.raises(InvalidArgument, match="64-bit"):
        incr(conn, "d", -(2**63), 3)  # one writer's decrements are an int64 total too
    incr(conn, "d", -(2**63 - 1), 3, writer="a")
    incr(conn, "d", -1, 4, writer="b")
    with pytest.raises(InvalidArgument):
        incr(conn, "d", -1, 5, writer="c")
    assert get(conn, "c")["value"] == 2**63 - 1 and get(conn, "d")["value"] == -(2**63)


def test_counter_writers_are_bounded(conn: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s, "COUNTER_WRITERS_MAX", 3)
    for i, w in enumerate("abc"):
        incr(conn, "c", 1, 10 + i, writer=w)
    with pytest.raises(TooLarge) as e:
        incr(conn, "c", 1, 20, writer="d")
    assert e.value.details["limit"] == 3
    assert incr(conn, "c", 1, 21, writer="a").value["value"] == 4  # known writers carry on


# ---------------------------------------------------------------- store: sets


def test_set_add_remove_and_value_order(conn: sqlite3.Connection) -> None:
    r = add(conn, "s", ["b", 2, None, "a", True, 1.5], 10)
    assert r.value["value"] == [None, True, 1.5, 2, "a", "b"] and r.value["kind"] == "set"
    assert event(r)["elements"] == ["b", 2, None, "a", True, 1.5] and event(r)["op"] == "add"
    r = remove(conn, "s", ["a", 2, "absent"], 11)
    assert r.value["value"] == [None, True, 1.5, "b"] and r.value["version"] == 11 and event(r)["op"] == "remove"
    assert remove(conn, "s", ["absent"], 12).effects == ()  # removing what is not there changes nothing
    assert get(conn, "s")["version"] == 11
    assert add(conn, "s", [1, 1.0, True], 13).value["value"] == [None, True, 1.0, 1, 1.5, "b"]  # typed elements
    with pytest.raises(NotFound):
        remove(conn, "never", ["x"], 14)


def test_set_bounds_and_tombstone_pruning(conn: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s, "SET_ELEMENTS_MAX", 4)
    monkeypatch.setattr(s, "SET_TOMBSTONES_MAX", 3)
    add(conn, "s", [1, 2, 3, 4], 10)
    with pytest.raises(TooLarge) as e:
        add(conn, "s", [5], 11)
    assert e.value.details["limit"] == 4
    add(conn, "s", [4], 12)  # re-adding a present element is fine at the limit
    for hlc in range(20, 30):  # churn: each round re-tags 1 and tombstones its old tag
        add(conn, "s", [1], hlc)
    st_ = s.load_state("set", conn.execute("SELECT state FROM signals").fetchone()[0])
    assert isinstance(st_, s.ORSet)
    assert st_.tombstone_tags() == ["n1:26", "n1:27", "n1:28"]  # bounded: a set does not wear out with churn
    assert st_.tags(1) == {"n1:29"} and get(conn, "s")["value"] == [1, 2, 3, 4]


def test_oldest_tombstones_are_forgotten_first(conn: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s, "SET_TOMBSTONES_MAX", 2)
    for hlc, e in [(10, "a"), (11, "b"), (12, "c")]:
        add(conn, "s", [e], hlc)
    remove(conn, "s", ["c", "a", "b"], 20)
    state = s.load_state("set", conn.execute("SELECT state FROM signals").fetchone()[0])
    assert isinstance(state, s.ORSet) and state.tombstone_tags() == ["n1:12"]  # pruned to 3/4 of the bound


# ---------------------------------------------------------------- store: kinds, delete, TTL


def test_a_key_has_one_kind_until_deleted(conn: sqlite3.Connection) -> None:
    incr(conn, "k", 1, 10)
    with pytest.raises(Conflict) as e:
        add(conn, "k", ["x"], 11)
    assert e.value.details == {"key": "k", "kind": "counter"} and "delete it first" in str(e.value)
    with pytest.raises(Conflict):
        s.signal_put(conn, NS, "k", Versioned("v", 12, "a"), if_version=None, now_ms=0)
    with pytest.raises(Conflict):  # the kind is checked before the version
        s.signal_put(conn, NS, "k", Versioned("v", 12, "a"), if_version=10, now_ms=0)
    with pytest.raises(Conflict):
        s.signal_put(conn, NS, "k", Versioned(None, 12, "a", True), if_version=9, now_ms=0)
    d = s.signal_put(conn, NS, "k", Versioned(None, 13, "a", True), if_version=10, now_ms=0)
    assert d.value["applied"] and event(d)["op"] == "delete"
    with pytest.raises(NotFound):
        get(conn, "k")
    assert add(conn, "k", ["x"], 14).value["value"] == ["x"]  # a fresh set, not the old counter
    with pytest.raises(Conflict):
        incr(conn, "k", 1, 15)
    s.signal_put(conn, NS, "r", Versioned("v", 16, "a"), if_version=None, now_ms=0)
    with pytest.raises(Conflict) as e:
        incr(conn, "r", 1, 17)
    assert e.value.details["kind"] == "register"
    assert get(conn, "r")["kind"] == "register"


def test_ttl_as_for_registers(conn: sqlite3.Connection) -> None:
    incr(conn, "c", 3, 10, expires=100)
    assert get(conn, "c", now=99)["expires_ms"] == 100
    with pytest.raises(NotFound):
        get(conn, "c", now=100)
    assert incr(conn, "c", 1, 11, now=100).value["value"] == 1  # expired counts as absent: a fresh counter
    add(conn, "s", ["x"], 12, expires=200)
    r = remove(conn, "s", ["nothing"], 13, now=150)  # no state change, but a write without ttl clears expiry
    assert r.value["version"] == 13 and "expires_ms" not in r.value
    add(conn, "t", ["y"], 14, expires=300)
    swept = s.signal_sweep(conn, now_ms=300, hlc=15)
    assert swept.value == 1 and [c.event["op"] for c in swept.effects] == ["expire"]
    assert conn.execute("SELECT kind, state, deleted FROM signals WHERE key='t'").fetchone() == ("register", None, 1)
    assert incr(conn, "t", 2, 16, now=300).value["value"] == 2  # an expired set may come back as a counter


# ---------------------------------------------------------------- store: replica join (the CRDT guarantee)


def replica_copy(src: sqlite3.Connection) -> sqlite3.Connection:
    dst = connect(Path(":memory:"), fsync="normal")
    src.backup(dst)
    return dst


def join(dst: sqlite3.Connection, src: sqlite3.Connection, key: str, now: int = 0) -> bool:
    remote = s.replica_state(src, NS, key, now)
    assert remote is not None
    return s.signal_join(dst, NS, key, remote, now).value


def test_concurrent_add_and_remove_add_wins() -> None:
    a = fresh()
    add(a, "s", ["x", "y"], 10, node="A")
    b = replica_copy(a)
    remove(a, "s", ["x", "y"], 11)  # A removes what it has seen ...
    add(b, "s", ["x"], 12, node="B")  # ... while B, concurrently, adds x again
    assert join(a, b, "s") and join(b, a, "s")
    assert get(a, "s")["value"] == get(b, "s")["value"] == ["x"]  # x's new add wins; y stays removed
    assert s.replica_state(a, NS, "s", 0) == s.replica_state(b, NS, "s", 0)  # converged, version included
    assert not join(a, b, "s")  # idempotent: no change, no event
    remove(a, "s", ["x"], 13)  # a remove that has seen the add does remove it
    assert join(b, a, "s") and get(b, "s")["value"] == []


def test_concurrent_increments_on_replicas_all_count() -> None:
    a = fresh()
    incr(a, "c", 5, 10, writer="w1")
    b = replica_copy(a)
    incr(a, "c", 2, 11, writer="w1")
    incr(b, "c", -4, 12, writer="w2")
    incr(b, "c", 1, 13, writer="w3")
    join(a, b, "c")
    r = get(a, "c")
    assert (r["value"], r["version"], r["writer"]) == (5 + 2 - 4 + 1, 13, "w3")


def test_join_against_tombstones_and_other_kinds() -> None:
    a = fresh()
    incr(a, "c", 1, 10)
    b = replica_copy(a)
    s.signal_put(a, NS, "c", Versioned(None, 20, "a", True), if_version=None, now_ms=0)
    assert not join(a, b, "c")  # the delete is newer than everything b's state has seen
    incr(b, "c", 1, 30)
    assert join(a, b, "c") and get(a, "c")["value"] == 2  # a later update brings it back (with b's history)
    add(b, "k", ["x"], 40)
    incr(a, "k", 1, 41)
    assert not join(a, b, "k") and get(a, "k")["kind"] == "counter"  # other kind: newer version wins whole
    assert join(b, a, "k") and get(b, "k") == get(a, "k")


# ---------------------------------------------------------------- properties: order never matters

agents = st.sampled_from(["a", "b", "c", "d"])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(agents, st.integers(-(2**40), 2**40)), min_size=1, max_size=8),
       st.randoms(use_true_random=False))
def test_counter_ops_in_any_order_give_the_same_counter(ops: list[tuple[str, int]], rng: random.Random) -> None:
    shuffled = ops[:]
    rng.shuffle(shuffled)
    results = []
    for order in (ops, shuffled):
        c = fresh()
        for i, (writer, by) in enumerate(order):
            incr(c, "c", by, 100 + i, writer=writer)
        results.append((get(c, "c")["value"], c.execute("SELECT state FROM signals").fetchone()[0]))
    assert results[0] == results[1]  # the same value and byte-identical canonical state
    assert results[0][0] == sum(by for _, by in ops)


elements = st.sampled_from(["x", "y", "z", 1, True, None])
set_ops = st.tuples(st.sampled_from(["add", "remove"]), st.lists(elements, min_size=1, max_size=3, unique=True))


@settings(max_examples=40, deadline=None)
@given(st.lists(elements, max_size=4, unique=True), st.lists(set_ops, min_size=1, max_size=4))
def test_concurrent_set_ops_joined_in_any_order_give_the_add_wins_value(
    base: list[Any], ops: list[tuple[str, list[Any]]]
) -> None:
    """Each op runs on its own replica of a common base (all pairwise concurrent); joining the
    replicas into a target in every order yields one value: base + adds - (removes not re-added)."""
    origin = fresh()
    add(origin, "s", base, 10, node="origin")
    replicas = []
    for i, (op, es) in enumerate(ops):
        r = replica_copy(origin)
        (add(r, "s", es, 20 + i, node=f"r{i}") if op == "add" else remove(r, "s", es, 20 + i))
        replicas.append(r)
    added = {repr(e) for op, es in ops if op == "add" for e in es}
    removed = {repr(e) for op, es in ops if op == "remove" for e in es}
    expected = sorted(({repr(e) for e in base} - removed) | added)
    values = set()
    for order in permutations(range(len(replicas))):
        target = replica_copy(origin)
        for i in order:
            join(target, replicas[i], "s")
        got = get(target, "s")
        assert sorted(repr(e) for e in got["value"]) == expected
        values.add((repr(got["value"]), s.replica_state(target, NS, "s", 0)))
    assert len(values) == 1


# ---------------------------------------------------------------- through a node


async def test_many_agents_incr_concurrently_and_the_sum_is_exact(node: RunningNode) -> None:
    rng = random.Random(7)
    agents_ = [Identity.generate() for _ in range(4)]
    plan = {a.agent_id: [rng.choice([-1, 1]) * rng.randint(1, 1000) for _ in range(40)] for a in agents_}
    versions: list[int] = []

    async def run(identity: Identity) -> None:
        async with node.client(identity) as c, trio.open_nursery() as n:
            for by in plan[identity.agent_id]:
                async def one(by: int = by) -> None:
                    versions.append((await c.signal_incr("public", "hits", by)).version)
                n.start_soon(one)

    async with trio.open_nursery() as n:
        for a in agents_:
            n.start_soon(run, a)
    async with node.client(agents_[0]) as c:
        got = await c.request("signal.get", "public", {"key": "hits"})
    assert got["kind"] == "counter" and got["value"] == sum(sum(v) for v in plan.values())
    assert got["version"] == max(versions) and len(set(versions)) == len(versions) == 160
    state = s.load_state("counter", node.service.db.writer_sync().execute(
        "SELECT state FROM signals WHERE key='hits'").fetchone()[0])
    assert isinstance(state, s.PNCounter) and state.writers() == set(plan)  # one entry per agent


async def test_concurrent_adds_from_many_agents_all_land(node: RunningNode) -> None:
    agents_ = [Identity.generate() for _ in range(3)]

    async def run(i: int, identity: Identity) -> None:
        async with node.client(identity) as c, trio.open_nursery() as n:
            for j in range(10):
                n.start_soon(c.signal_add, "public", "seen", [f"{i}-{j}", "common"])

    async with trio.open_nursery() as n:
        for i, a in enumerate(agents_):
            n.start_soon(run, i, a)
    async with node.client(agents_[0]) as c:
        got = await c.signal_remove("public", "seen", ["common"])
    assert got.value == sorted(f"{i}-{j}" for i in range(3) for j in range(10))


async def test_watch_kind_conflicts_and_delete_through_the_api(node: RunningNode) -> None:
    me = Identity.generate()
    ns = me.agent_id
    async with node.client(me) as c:
        w = await c.watch(ns, prefix="")
        v1 = (await c.signal_incr(ns, "n", 5, ttl_s=60)).version
        assert (await c.signal_incr(ns, "n", -2)).value == 3
        assert (await c.signal_get(ns, "n")).kind == "counter"
        assert (await c.signal_add(ns, "tags", ["b", "a", "b"])).kind == "set"
        await c.signal_remove(ns, "tags", ["b"])
        await c.signal_set(ns, "reg", {"x": 1})
        with pytest.raises(Conflict):
            await c.signal_set(ns, "n", 1)
        with pytest.raises(Conflict):
            await c.signal_add(ns, "reg", ["x"])
        listed = await c.request("signal.list", ns, {})
        assert [(i["key"], i["kind"], i["value"]) for i in listed["items"]] == [
            ("n", "counter", 3), ("reg", "register", {"x": 1}), ("tags", "set", ["a"])]
        await c.signal_delete(ns, "n")
        assert (await c.signal_add(ns, "n", [1])).value == [1]  # deleted, so reusable as a set
        seen = []
        with trio.fail_after(5):
            async for ch in w:
                e = ch.event
                seen.append((e["op"], e["key"], e.get("kind"), e.get("value")))
                if len(seen) == 7:
                    break
        assert seen == [("incr", "n", "counter", 5), ("incr", "n", "counter", 3), ("add", "tags", "set", ["a", "b"]),
                        ("remove", "tags", "set", ["a"]), ("set", "reg", "register", {"x": 1}),
                        ("delete", "n", None, None), ("add", "n", "set", [1])]
        got = await c.request("signal.get", ns, {"key": "n"})
        assert got["kind"] == "set" and got["version"] > v1


async def test_bad_arguments_and_permissions(node: RunningNode) -> None:
    alice, bob = Identity.generate(), Identity.generate()
    ns = alice.agent_id
    async with node.client(alice) as a, node.client(bob) as b:
        bad: list[dict[str, Any]] = [{"key": "c", "by": 2**63}, {"key": "c", "by": 1.5}, {"key": "c", "by": True}, {"by": 1}]
        for data in bad:
            with pytest.raises(InvalidArgument):
                await a.request("signal.incr", ns, data)
        for elems in [[[1]], [{"a": 1}], "x", None, [float("inf")]]:
            with pytest.raises(InvalidArgument):
                await a.request("signal.add", ns, {"key": "s", "elements": elems})
        with pytest.raises(TooLarge):
            await a.signal_add(ns, "s", ["x" * 300])
        with pytest.raises(TooLarge):
            await a.signal_add(ns, "s", list(range(257)))
        with pytest.raises(NotFound):
            await a.signal_remove(ns, "s", ["x"])
        with pytest.raises(Forbidden):
            await b.signal_incr(ns, "c")
        now = node.service.wall_ms()
        await b.grant_put(make_grant(alice, grantee=bob.agent_id, ns=ns, actions=["read"], exp_ms=now + 60_000,
                                     now_ms=now))
        with pytest.raises(Forbidden):  # incr/add/remove are writes
            await b.signal_add(ns, "s", ["x"])
        await b.grant_put(make_grant(alice, grantee=bob.agent_id, ns=ns, actions=["write"], exp_ms=now + 60_000,
                                     now_ms=now))
        assert (await b.signal_incr(ns, "c", 2)).value == 2


async def test_ttl_through_the_node(node: RunningNode) -> None:
    me = Identity.generate()
    now = [node.service.wall_ms()]
    node.service.wall_ms = lambda: now[0]
    async with node.client(me) as c:
        r = await c.signal_incr(me.agent_id, "lease", 1, ttl_s=2)
        assert r.expires_ms == now[0] + 2000
        now[0] += 2500
        with pytest.raises(NotFound):
            await c.signal_get(me.agent_id, "lease")
        assert (await c.signal_add(me.agent_id, "lease", ["fresh"])).value == ["fresh"]


async def test_blocking_client_mirrors_the_new_methods(node: RunningNode) -> None:
    me = Identity.generate()

    def work() -> tuple[Any, Any, Any]:
        with BlockingMemoryClient(node.url, me) as c:
            return (c.signal_incr(me.agent_id, "c", 4).value, c.signal_add(me.agent_id, "s", ["q", "p"]).value,
                    c.signal_remove(me.agent_id, "s", ["q"]).value)

    assert await trio.to_thread.run_sync(work) == (4, ["p", "q"], ["p"])


# ---------------------------------------------------------------- a version-1 database file


async def test_a_version_1_data_directory_upgrades_and_serves_every_kind(nursery: trio.Nursery,
                                                                         tmp_path: Path) -> None:
    data = tmp_path / "node"
    data.mkdir()
    old = connect(data / "mnemonet.sqlite3", fsync="normal")
    old.executescript(SCHEMA_V1)
    old.execute("INSERT INTO meta(k, v) VALUES('schema_version', '1')")
    me = Identity.generate()
    old.execute("INSERT INTO signals(ns, key, value, version, writer) VALUES(?, 'old', '\"kept\"', ?, ?)",
                (me.agent_id, 123 << 16, me.agent_id))
    old.close()
    node = await start_node(nursery, data)
    assert schema_version(node.service.db.writer_sync()) == SCHEMA_VERSION
    async with node.client(me) as c:
        got = await c.request("signal.get", me.agent_id, {"key": "old"})
        assert (got["kind"], got["value"], got["version"]) == ("register", "kept", 123 << 16)
        with pytest.raises(Conflict):
            await c.signal_incr(me.agent_id, "old")
        assert (await c.signal_incr(me.agent_id, "new", 3)).version > 123 << 16
        assert (await c.signal_add(me.agent_id, "set", ["a"])).value == ["a"]
