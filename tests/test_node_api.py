"""End-to-end behaviour of one node over real websockets on loopback, through MemoryClient."""

from __future__ import annotations

import pytest
import trio

from crypto.errors import (
    BadSignature,
    Conflict,
    DimensionMismatch,
    Expired,
    Forbidden,
    InvalidArgument,
    NotFound,
)
from crypto.grants import make_grant, make_revocation
from crypto.identity import Identity
from tests.conftest import RunningNode


async def test_store_get_idempotent_and_duplicate(node: RunningNode) -> None:
    me = Identity.generate()
    async with node.client(me) as c:
        r1 = await c.store(me.agent_id, "the sky is blue", id="m1", metadata={"k": 1})
        assert r1.created and r1.id == "m1"
        again = await c.store(me.agent_id, "the sky is blue", id="m1")
        assert not again.created and again.id == "m1"
        dup = await c.store(me.agent_id, "the sky is blue")
        assert dup.duplicate and dup.id == "m1"
        with pytest.raises(Conflict):
            await c.store(me.agent_id, "different text", id="m1")
        m = await c.get(me.agent_id, "m1")
        assert (m.content, m.metadata, m.owner, m.memory_type) == ("the sky is blue", {"k": 1}, me.agent_id, "note")
        await c.delete(me.agent_id, "m1")
        with pytest.raises(NotFound):
            await c.get(me.agent_id, "m1")
        with pytest.raises(Conflict):  # a deleted id never comes back
            await c.store(me.agent_id, "the sky is blue", id="m1")


async def test_concurrent_duplicate_stores_insert_once(node: RunningNode) -> None:
    me = Identity.generate()
    async with node.client(me) as c:
        results = []

        async def one() -> None:
            results.append(await c.store(me.agent_id, "same text from many tasks"))

        async with trio.open_nursery() as n:
            for _ in range(16):
                n.start_soon(one)
        assert sum(r.created for r in results) == 1
        assert len({r.id for r in results}) == 1
        page = await c.list(me.agent_id)
        assert len(page.items) == 1


async def test_search_finds_relevant_and_respects_filters(node: RunningNode) -> None:
    me = Identity.generate()
    ns = me.agent_id
    texts = {
        "q": ("Quorum writes need two of three replicas to acknowledge.", "fact", {"topic": "db", "n": 3}),
        "p": ("Two vegetarian pizzas for the planning meeting.", "event", {"topic": "food", "n": 1}),
        "g": ("Gossip spreads membership changes epidemically.", "fact", {"topic": "net", "n": 2}),
    }
    async with node.client(me) as c:
        for mid, (text, kind, meta) in texts.items():
            await c.store(ns, text, id=mid, memory_type=kind, metadata=meta)
        page = await c.search("how many replicas must acknowledge a quorum write", ns=ns, limit=3)
        assert page.items[0].id == "q"
        assert page.items[0].score is not None and page.items[0].score > page.items[-1].score  # type: ignore[operator]
        only_events = await c.search("replicas quorum", ns=ns, memory_type="event")
        assert [m.id for m in only_events.items] == ["p"]
        meta = await c.search("anything", ns=ns, metadata={"n": {"gt": 1}, "topic": {"in": ["db", "food", "net"]}})
        assert {m.id for m in meta.items} == {"q", "g"}
        ne = await c.search("anything", ns=ns, metadata={"topic": {"ne": "db"}})
        assert {m.id for m in ne.items} == {"p", "g"}
        paged = await c.search("anything", ns=ns, limit=2)
        assert paged.truncated and paged.next_cursor
        rest = await c.search("anything", ns=ns, limit=2, cursor=paged.next_cursor)
        assert not rest.truncated
        assert {m.id for m in paged.items} | {m.id for m in rest.items} == {"q", "p", "g"}
        with pytest.raises(InvalidArgument):
            await c.search("x", ns=ns, metadata={"n": {"like": 1}})


async def test_client_vectors_dimension_checked_and_separate_space(node: RunningNode) -> None:
    me = Identity.generate()
    ns = me.agent_id
    dim = node.service.config.dim
    async with node.client(me) as c:
        with pytest.raises(DimensionMismatch):
            await c.store(ns, "bad", vector=[1.0, 2.0])
        v = [0.0] * dim
        v[3] = 1.0
        await c.store(ns, "vector memory", id="v", vector=v, embedder="mine")
        await c.store(ns, "text memory about vector", id="t")
        hits = await c.search(vector=v, ns=ns, embedder="mine")
        assert [m.id for m in hits.items] == ["v"] and hits.items[0].score == pytest.approx(1.0, abs=1e-5)
        text_hits = await c.search("vector memory", ns=ns)
        assert [m.id for m in text_hits.items] == ["t"]  # never compared across embedders
        with pytest.raises(DimensionMismatch):
            await c.search(vector=[1.0] * (dim + 1), ns=ns)


async def test_expired_memories_are_never_returned(node: RunningNode) -> None:
    me = Identity.generate()
    ns = me.agent_id
    now = [node.service.wall_ms()]
    node.service.wall_ms = lambda: now[0]  # type: ignore[method-assign]
    async with node.client(me) as c:
        await c.store(ns, "short lived fact", id="e", ttl_s=1)
        assert (await c.get(ns, "e")).content == "short lived fact"
        now[0] += 1500
        with pytest.raises(NotFound):
            await c.get(ns, "e")
        assert (await c.search("short lived fact", ns=ns)).items == []
        assert (await c.list(ns)).items == []
        # Its content may be stored again (the expired record is gone for readers).
        assert (await c.store(ns, "short lived fact")).created


async def test_list_pages_cover_everything_once(node: RunningNode) -> None:
    me = Identity.generate()
    async with node.client(me) as c:
        for i in range(25):
            await c.store(me.agent_id, f"note number {i}", id=f"n{i}")
        seen: list[str] = []
        cursor = None
        while True:
            page = await c.list(me.agent_id, limit=7, cursor=cursor)
            seen += [m.id for m in page.items]
            if not page.truncated:
                break
            cursor = page.next_cursor
        assert sorted(seen) == sorted(f"n{i}" for i in range(25)) and len(seen) == 25
        assert seen[0] == "n24"  # newest first


async def test_links_related_and_expand(node: RunningNode) -> None:
    me = Identity.generate()
    ns = me.agent_id
    async with node.client(me) as c:
        for mid in "abcd":
            await c.store(ns, f"memory {mid} about topic {mid}", id=mid)
        await c.link(ns, "a", "b", relation="cites")
        await c.link(ns, "b", "c", relation="cites")
        await c.link(ns, "c", "d", relation="other")
        one = await c.related(ns, "a", depth=1)
        assert [(x["id"], x["depth"]) for x in one] == [("b", 1)]
        two = await c.related(ns, "a", depth=3, relation="cites", direction="out")
        assert [(x["id"], x["depth"]) for x in two] == [("b", 1), ("c", 2)]
        back = await c.related(ns, "c", direction="in")
        assert [x["id"] for x in back] == ["b"]
        hits = await c.search("memory a about topic a", ns=ns, limit=1, expand=True)
        assert hits.items[0].id == "a" and [x["id"] for x in hits.items[0].context] == ["b"]
        with pytest.raises(NotFound):
            await c.link(ns, "a", "missing")


async def test_signals_cas_ttl_and_watch_resume(node: RunningNode) -> None:
    me = Identity.generate()
    ns = me.agent_id
    async with node.client(me) as c:
        w = await c.watch(ns, prefix="job/")
        v1 = await c.signal_set(ns, "job/1", {"state": "queued"})
        with pytest.raises(Conflict):
            await c.signal_set(ns, "job/1", "x", if_version=v1 - 1)
        v2 = await c.signal_set(ns, "job/1", {"state": "running"}, if_version=v1)
        assert v2 > v1
        await c.signal_set(ns, "other", 1)  # not under the prefix
        got = await c.signal_get(ns, "job/1")
        assert (got.value, got.version, got.writer) == ({"state": "running"}, v2, me.agent_id)
        with pytest.raises(Conflict):
            await c.signal_set(ns, "job/2", "x", if_version=5)
        assert await c.signal_set(ns, "job/2", "new", if_version=0)
        events = []
        with trio.fail_after(5):
            async for ch in w:
                events.append((ch.event["key"], ch.event["op"], ch.event.get("value")))
                if len(events) == 3:
                    break
        assert events == [("job/1", "set", {"state": "queued"}), ("job/1", "set", {"state": "running"}),
                          ("job/2", "set", "new")]
        last = w.last_seq
        await w.cancel()
        # Changes made while nobody watched are replayed to a watch resumed from its last seq.
        await c.signal_delete(ns, "job/1")
        await c.signal_set(ns, "job/3", "later")
        w2 = await c.watch(ns, prefix="job/", since=last)
        with trio.fail_after(5):
            replay = [(ch.event["key"], ch.event["op"]) async for ch in _take(w2, 2)]
        assert replay == [("job/1", "delete"), ("job/3", "set")]
        with pytest.raises(NotFound):
            await c.signal_get(ns, "job/1")


async def _take(w, n):  # type: ignore[no-untyped-def]
    count = 0
    async for ch in w:
        yield ch
        count += 1
        if count == n:
            return


async def test_signal_ttl_expires(node: RunningNode) -> None:
    me = Identity.generate()
    now = [node.service.wall_ms()]
    node.service.wall_ms = lambda: now[0]  # type: ignore[method-assign]
    async with node.client(me) as c:
        await c.signal_set(me.agent_id, "lease", "mine", ttl_s=2)
        assert (await c.signal_get(me.agent_id, "lease")).value == "mine"
        now[0] += 2500
        with pytest.raises(NotFound):
            await c.signal_get(me.agent_id, "lease")
        assert await c.signal_set(me.agent_id, "lease", "yours", if_version=0)  # gone, so CAS on absence works


async def test_state_publish_get_subscribe(node: RunningNode) -> None:
    alice, bob = Identity.generate(), Identity.generate()
    async with node.client(alice) as a, node.client(bob) as b:
        sub = await b.subscribe(alice.agent_id)
        v = await a.state_publish({"status": "thinking"})
        await a.state_publish({"status": "done"})
        st = await b.state_get(alice.agent_id)
        assert st["doc"] == {"status": "done"} and st["version"] > v
        with trio.fail_after(5):
            docs = [ch.event["doc"] async for ch in _take(sub, 2)]
        assert docs == [{"status": "thinking"}, {"status": "done"}]
        with pytest.raises(Forbidden):
            await b.request("state.publish", alice.agent_id, {"doc": {"status": "forged"}})


async def test_permissions_and_grants(node: RunningNode) -> None:
    alice, bob = Identity.generate(), Identity.generate()
    now = node.service.wall_ms()
    async with node.client(alice) as a, node.client(bob) as b:
        await a.store(alice.agent_id, "alice's private note", id="x")
        with pytest.raises(Forbidden):
            await b.get(alice.agent_id, "x")
        with pytest.raises(Forbidden):
            await b.store(alice.agent_id, "intrusion")
        read = make_grant(alice, grantee=bob.agent_id, ns=alice.agent_id, actions=["read"],
                          exp_ms=now + 60_000, now_ms=now)
        assert (await b.request("memory.get", alice.agent_id, {"id": "x"}, grants=[read]))["content"]
        with pytest.raises(Forbidden):  # read grant does not allow writes
            await b.request("memory.store", alice.agent_id, {"content": "no"}, grants=[read])
        expired = make_grant(alice, grantee=bob.agent_id, ns=alice.agent_id, actions=["read"],
                             exp_ms=now - 1, now_ms=now - 10_000)
        with pytest.raises(Expired):
            await b.request("memory.get", alice.agent_id, {"id": "x"}, grants=[expired])
        forged = make_grant(bob, grantee=bob.agent_id, ns=alice.agent_id, actions=["*"],
                            exp_ms=now + 60_000, now_ms=now)
        with pytest.raises(Forbidden):  # bob cannot grant himself alice's namespace
            await b.request("memory.get", alice.agent_id, {"id": "x"}, grants=[forged])
        # A stored grant works without being presented, until revoked.
        write = make_grant(alice, grantee=bob.agent_id, ns=alice.agent_id, actions=["memory.store", "read"],
                           exp_ms=now + 60_000, now_ms=now)
        await b.grant_put(write)
        assert (await b.store(alice.agent_id, "bob was invited")).created
        gid = (await b.grant_put(write))["gid"]
        await a.grant_revoke(make_revocation(alice, gid=gid, ns=alice.agent_id, now_ms=now))
        with pytest.raises(Forbidden):
            await b.store(alice.agent_id, "after revocation")
        # Public namespace: everyone reads and writes, only owners delete.
        r = await a.store("public", "shared fact")
        assert (await b.get("public", r.id)).content == "shared fact"
        with pytest.raises(Forbidden):
            await b.delete("public", r.id)
        await a.delete("public", r.id)


async def test_operator_may_administer(node: RunningNode) -> None:
    agent = Identity.generate()
    async with node.client(agent) as c, node.client(node.operator) as op:
        with pytest.raises(Forbidden):
            await c.request("admin.sweep")
        assert "memories" in await op.request("admin.sweep")
        await c.store(agent.agent_id, "operator can read this")
        assert (await op.list(agent.agent_id)).items[0].content == "operator can read this"


async def test_stats_and_health(node: RunningNode) -> None:
    me = Identity.generate()
    async with node.client(me) as c:
        await c.store(me.agent_id, "counted")
        h = await c.health()
        assert h["status"] == "ok"
        s = await c.stats()
        assert s["counts"]["memories"] == 1 and s["requests"]["memory.store"] == 1
        assert s["uptime_s"] >= 0 and "index" in s
        assert s["embedding"] == {"batches": 1, "texts": 1} and s["storage"]["writes"] >= 1
        assert s["loop_lag_ms"]["max"] >= s["loop_lag_ms"]["max_since_last_stats"] >= 0


async def test_json_text_frames_work_too(node: RunningNode) -> None:
    me = Identity.generate()
    async with node.client(me, binary=False) as c:
        r = await c.store(me.agent_id, "sent as JSON text", metadata={"x": [1, 2]})
        assert (await c.get(me.agent_id, r.id)).metadata == {"x": [1, 2]}
        assert (await c.search("sent as JSON", ns=me.agent_id)).items[0].id == r.id


async def test_revocation_binds_to_its_namespace(node: RunningNode) -> None:
    alice, bob, mallory = Identity.generate(), Identity.generate(), Identity.generate()
    now = node.service.wall_ms()
    async with node.client(alice) as a, node.client(bob) as b, node.client(mallory) as m:
        await a.store(alice.agent_id, "shared with bob", id="s")
        grant = make_grant(alice, grantee=bob.agent_id, ns=alice.agent_id, actions=["read"], exp_ms=now + 60_000,
                           now_ms=now)
        gid = (await b.grant_put(grant))["gid"]
        # Mallory signs a revocation of the same gid in her own namespace: it must not touch Alice's grant.
        await m.grant_revoke(make_revocation(mallory, gid=gid, ns=mallory.agent_id, now_ms=now))
        assert (await b.get(alice.agent_id, "s")).content == "shared with bob"
        assert (await b.request("memory.get", alice.agent_id, {"id": "s"}, grants=[grant]))["id"] == "s"


async def test_related_needs_only_the_related_grant(node: RunningNode) -> None:
    alice, bob = Identity.generate(), Identity.generate()
    now = node.service.wall_ms()
    async with node.client(alice) as a, node.client(bob) as b:
        await a.store(alice.agent_id, "root", id="r")
        await a.store(alice.agent_id, "leaf", id="l")
        await a.link(alice.agent_id, "r", "l")
        g = make_grant(alice, grantee=bob.agent_id, ns=alice.agent_id, actions=["memory.related"],
                       exp_ms=now + 60_000, now_ms=now)
        items = (await b.request("memory.related", alice.agent_id, {"id": "r"}, grants=[g]))["items"]
        assert [x["id"] for x in items] == ["l"]


async def test_oversized_request_fails_fast_in_client(node: RunningNode) -> None:
    from crypto.errors import TooLarge

    me = Identity.generate()
    async with node.client(me) as c:
        with pytest.raises(TooLarge):
            await c.store(me.agent_id, "x" * (2 * 1024 * 1024))
        # And a node-side too_large (null rid) reaches the single waiting request, not a timeout.
        c.frame_bytes_max = 64 * 1024 * 1024
        with pytest.raises(TooLarge), trio.fail_after(10):
            await c.store(me.agent_id, "x" * (2 * 1024 * 1024))


async def test_session_and_signed_clients_interoperate(node: RunningNode) -> None:
    me = Identity.generate()
    async with node.client(me, session=True) as s, node.client(me, session=False) as p:
        assert s._auth is not None and p._auth is None
        r = await s.store(me.agent_id, "written in a session")
        assert (await p.get(me.agent_id, r.id)).owner == me.agent_id  # same identity either way
        pinned = node.client(me, node_public_key=Identity.generate().public_key)
        with pytest.raises(BadSignature):
            async with pinned:
                pass


@pytest.mark.parametrize("binary", [True, False])
async def test_record_signatures_give_provenance(node: RunningNode, binary: bool) -> None:
    from crypto.provenance import sign_record

    me, other = Identity.generate(), Identity.generate()
    async with node.client(me, binary=binary) as c:
        r = await c.store(me.agent_id, "signed by its author", memory_type="fact")
        m = await c.get(me.agent_id, r.id)
        assert m.provenance is not None and m.verify_provenance()
        unsigned = await c.store(me.agent_id, "no signature", sign=False)
        assert not (await c.get(me.agent_id, unsigned.id)).verify_provenance()
        # A signature by someone else, or over other content, is refused and nothing is stored.
        bad = sign_record(other, me.agent_id, "x1", "note", "claimed text")
        with pytest.raises(BadSignature):
            await c.request("memory.store", me.agent_id, {"id": "x1", "content": "claimed text",
                                                          "sig": bad if binary else bad.hex()})
        with pytest.raises(NotFound):
            await c.get(me.agent_id, "x1")
        with pytest.raises(InvalidArgument):  # the signature covers the id: it must be the client's
            await c.request("memory.store", me.agent_id, {"content": "t", "sig": "00" * 64})


async def test_resume_from_compacted_history_is_resync(nursery: trio.Nursery, tmp_path: object) -> None:
    from pathlib import Path

    from crypto.errors import Resync
    from node.config import NodeConfig
    from tests.conftest import start_node

    node = await start_node(nursery, Path(str(tmp_path)) / "n", NodeConfig(changes_retained=3, sweep_interval_s=3600))
    me = Identity.generate()
    async with node.client(me) as c, node.client(node.operator) as op:
        for i in range(10):
            await c.signal_set(me.agent_id, "k", i)
        await op.request("admin.sweep")  # compacts the change log to the last 3 entries
        with pytest.raises(Resync):
            await c.watch(me.agent_id, key="k", since=1)
        w = await c.watch(me.agent_id, key="k", since=8)  # still retained: replayed
        with trio.fail_after(5):
            assert [ch.event["value"] async for ch in _take(w, 2)] == [8, 9]


async def test_watch_ends_when_its_grant_is_revoked(node: RunningNode) -> None:
    alice, bob = Identity.generate(), Identity.generate()
    now = node.service.wall_ms()
    async with node.client(alice) as a, node.client(bob) as b:
        grant = make_grant(alice, grantee=bob.agent_id, ns=alice.agent_id, actions=["read"], exp_ms=now + 60_000,
                           now_ms=now)
        gid = (await b.grant_put(grant))["gid"]
        w = await b.watch(alice.agent_id, prefix="")
        await a.signal_set(alice.agent_id, "public-ish", 1)
        with trio.fail_after(5):
            assert (await w.__anext__()).event["value"] == 1
        await a.grant_revoke(make_revocation(alice, gid=gid, ns=alice.agent_id, now_ms=now))
        await a.signal_set(alice.agent_id, "secret", "launch codes")
        with trio.fail_after(5), pytest.raises(Forbidden):
            await w.__anext__()


async def test_watch_limits(nursery: trio.Nursery, tmp_path: object) -> None:
    from pathlib import Path

    from crypto.errors import TooLarge
    from node.config import NodeConfig
    from tests.conftest import start_node

    node = await start_node(nursery, Path(str(tmp_path)) / "n", NodeConfig(watches_per_connection_max=3))
    me = Identity.generate()
    async with node.client(me) as c:
        with pytest.raises(InvalidArgument):  # resuming from the future would hide changes
            await c.request("signal.watch", me.agent_id, {"key": "x", "since": 10**9})
        for i in range(3):
            await c.watch(me.agent_id, key=f"k{i}")
        with pytest.raises(TooLarge):
            await c.watch(me.agent_id, key="one too many")


async def test_ended_watch_frees_its_slot_and_replaced_grant_is_gone(nursery: trio.Nursery, tmp_path: object) -> None:
    from pathlib import Path

    from node.config import NodeConfig
    from tests.conftest import start_node

    node = await start_node(nursery, Path(str(tmp_path)) / "n", NodeConfig(watches_per_connection_max=1))
    alice, bob, carol = Identity.generate(), Identity.generate(), Identity.generate()
    now = node.service.wall_ms()
    async with node.client(alice) as a, node.client(bob) as b, node.client(carol) as c:
        g = make_grant(alice, grantee=bob.agent_id, ns=alice.agent_id, actions=["read"], exp_ms=now + 60_000,
                       now_ms=now, gid="same")
        await b.grant_put(g)
        w = await b.watch(alice.agent_id, prefix="")
        # Alice re-issues gid "same" to carol: the grant to bob is replaced, so bob's watch ends.
        await c.grant_put(make_grant(alice, grantee=carol.agent_id, ns=alice.agent_id, actions=["read"],
                                     exp_ms=now + 60_000, now_ms=now, gid="same"))
        await a.signal_set(alice.agent_id, "k", 1)
        with trio.fail_after(5), pytest.raises(Forbidden):
            await w.__anext__()
        with pytest.raises(Forbidden):
            await b.signal_get(alice.agent_id, "k")
        assert (await c.signal_get(alice.agent_id, "k")).value == 1
        # The ended watch no longer counts against bob's cap of one.
        await b.watch(bob.agent_id, key="own")


async def test_slow_watch_consumer_loses_nothing(node: RunningNode) -> None:
    me = Identity.generate()
    async with node.client(me, watch_buffer_max=4) as c, node.client(me) as writer:
        w = await c.watch(me.agent_id, prefix="n/")
        for i in range(40):
            await writer.signal_set(me.agent_id, f"n/{i}", i)
        got = []
        with trio.fail_after(10):
            async for ch in w:
                got.append(ch.event["value"])
                if len(got) == 40:
                    break
        assert got == list(range(40))
        assert (await c.stats())["watches"] <= 1  # the stalled watch was cancelled, not leaked


async def test_huge_vector_components_are_normalised_not_zeroed(node: RunningNode) -> None:
    me = Identity.generate()
    dim = node.service.config.dim
    big = [1e20] * dim
    async with node.client(me) as c:
        await c.store(me.agent_id, "huge components", id="h", vector=big, embedder="mine")
        hits = await c.search(vector=[1.0] * dim, ns=me.agent_id, embedder="mine")
        assert hits.items[0].id == "h" and hits.items[0].score == pytest.approx(1.0, abs=1e-4)
