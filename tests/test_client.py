"""Client behaviour: reconnect on demand, watches resuming after a lost connection, the blocking wrapper."""

from __future__ import annotations

import trio

from crypto.errors import NotFound
from crypto.identity import Identity
from node.client import BlockingMemoryClient
from tests.conftest import RunningNode


async def test_reconnect_and_watch_resumes_without_loss(node: RunningNode) -> None:
    watcher_id, writer_id = Identity.generate(), Identity.generate()
    ns = "public"
    async with node.client(watcher_id) as w, node.client(writer_id) as writer:
        watch = await w.watch(ns, prefix="k/")
        await writer.signal_set(ns, "k/1", 1)
        with trio.fail_after(5):
            first = await watch.__anext__()
        assert first.event["value"] == 1
        # Drop the watcher's connection; changes made meanwhile must still arrive, once, in order.
        assert w._ws is not None
        await w._ws.aclose()
        for i in range(2, 6):
            await writer.signal_set(ns, f"k/{i}", i)
        assert (await w.health())["status"] == "ok"  # reconnects on demand
        assert w.reconnects == 1
        got = []
        with trio.fail_after(5):
            async for ch in watch:
                got.append(ch.event["value"])
                if len(got) == 4:
                    break
        assert got == [2, 3, 4, 5]
        await writer.signal_set(ns, "k/6", 6)
        with trio.fail_after(5):
            assert (await watch.__anext__()).event["value"] == 6


async def test_blocking_client_round_trip(node: RunningNode) -> None:
    me = Identity.generate()

    def work() -> tuple[str, str]:
        with BlockingMemoryClient(node.url, me) as c:
            r = c.store(me.agent_id, "stored from ordinary synchronous code")
            hits = c.search("synchronous code", ns=me.agent_id)
            try:
                c.get(me.agent_id, "missing")
            except NotFound:
                pass
            else:
                raise AssertionError("expected NotFound")
            return r.id, hits.items[0].id

    stored, found = await trio.to_thread.run_sync(work)
    assert stored == found
