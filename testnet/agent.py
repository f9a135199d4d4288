"""A demo agent process: talks to a node through MemoryClient and prints one JSON line per step.

Roles: "writer" stores, links, signals and publishes; "reader" subscribes, searches and reads.
With --cluster (a cluster-mode node: quorum reads and writes) they skip what that mode does not
replicate yet (links, compare-and-set, subscriptions: the reader polls the writer's state instead)
and every agent bumps a shared counter, which must end at the number of agents (no lost update).
Run by testnet/launch.py; not a library.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import trio

from crypto.errors import NotFound
from crypto.identity import Identity
from node.client import MemoryClient

NOTES = [
    ("The deployment moved to three service nodes after the network grew past six agents.", "event"),
    ("Alice prefers concise summaries with the key numbers first.", "preference"),
    ("The vector index seals its buffer into an annoy segment in a worker thread.", "fact"),
    ("Quorum writes need two of three replicas to acknowledge before success.", "fact"),
    ("Lunch order: two vegetarian pizzas for the planning meeting.", "event"),
]


def say(name: str, step: str, **fields: Any) -> None:
    print(json.dumps({"agent": name, "step": step, **fields}, ensure_ascii=False), flush=True)


async def writer(c: MemoryClient, name: str, peer: str | None) -> None:
    ids = []
    for text, kind in NOTES:
        r = await c.store("public", text, memory_type=kind, metadata={"author": name, "len": len(text)})
        ids.append(r.id)
        say(name, "store", id=r.id, created=r.created, memory_type=kind)
    r = await c.store("public", NOTES[0][0], memory_type="event")
    say(name, "store-duplicate", id=r.id, created=r.created, duplicate=r.duplicate)
    own = await c.store(c.agent_id, "My private scratch note: check the replication lag tomorrow.")
    say(name, "store-private", ns="own", id=own.id)
    await c.link("public", ids[2], ids[3], relation="explains")
    await c.link("public", ids[0], ids[3], relation="caused_by", weight=0.5)
    say(name, "link", pairs=[[ids[2], ids[3], "explains"], [ids[0], ids[3], "caused_by"]])
    v = await c.signal_set("public", "deploy/phase", "rollout", ttl_s=300)
    say(name, "signal-set", key="deploy/phase", version=v)
    sv = await c.state_publish({"status": "writing", "notes": len(ids)})
    say(name, "state-publish", version=sv)
    v2 = await c.signal_set("public", "deploy/phase", "done", if_version=v)  # compare-and-set
    say(name, "signal-cas", key="deploy/phase", value="done", expected=v, version=v2)
    await c.state_publish({"status": "done", "notes": len(ids)})
    say(name, "state-publish", status="done")


async def reader(c: MemoryClient, name: str, peer: str | None) -> None:
    assert peer, "the reader needs the writer's agent id"
    sub = await c.subscribe(peer, since=0)  # from the start: the writer may be ahead
    say(name, "subscribe", peer=peer)
    with trio.fail_after(30):
        async for change in sub:
            say(name, "state-push", seq=change.seq, doc=change.event.get("doc"))
            if (change.event.get("doc") or {}).get("status") == "done":
                break
    await sub.cancel()
    page = await c.search("how do quorum replicas acknowledge writes?", namespaces=["public"], limit=3, expand=True)
    say(name, "search", hits=[{"id": m.id, "score": round(m.score or 0, 3), "content": m.content[:60],
                               "context": [x["id"] for x in m.context]} for m in page.items])
    page = await c.search("pizza", namespaces=["public"], limit=2, memory_type="event",
                          metadata={"author": {"ne": "nobody"}})
    say(name, "search-filtered", hits=[m.content[:50] for m in page.items])
    s = await c.signal_get("public", "deploy/phase")
    say(name, "signal-get", key=s.key, value=s.value, version=s.version)
    st = await c.state_get(peer)
    say(name, "state-get", peer=peer, doc=st["doc"])
    try:
        await c.store(peer, "trying to write into someone else's namespace")
    except Exception as e:
        say(name, "forbidden-check", error=getattr(e, "code", type(e).__name__))
    stats = await c.stats()
    say(name, "stats", counts=stats["counts"], requests=sum(stats["requests"].values()))


async def cluster_writer(c: MemoryClient, name: str, peer: str | None, extra: int = 0) -> None:
    for text, kind in NOTES:
        r = await c.store("public", text, memory_type=kind, metadata={"author": name, "len": len(text)})
        say(name, "store", id=r.id, created=r.created, memory_type=kind)
    started = time.monotonic()

    async def some(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            await c.store("public", f"observation {i}: queue depth {i * 37 % 101}, latency {i * 13 % 89} ms",
                          memory_type="metric", id=f"obs-{i}")
    async with trio.open_nursery() as nursery:  # 8 in flight: quorum writes to ring-placed owners
        for k in range(8):
            nursery.start_soon(some, k * extra // 8, (k + 1) * extra // 8)
    if extra:
        say(name, "store-many", memories=extra, seconds=round(time.monotonic() - started, 3))
    own = await c.store(c.agent_id, "My private scratch note: check the replication lag tomorrow.")
    say(name, "store-private", ns="own", id=own.id)
    v = await c.signal_set("public", "deploy/phase", "rollout", ttl_s=300)
    say(name, "signal-set", key="deploy/phase", version=v)
    s = await c.signal_incr("public", "agents-done")
    say(name, "counter-incr", key="agents-done", value=s.value)
    sv = await c.state_publish({"status": "done", "notes": len(NOTES)})
    say(name, "state-publish", version=sv)


async def cluster_reader(c: MemoryClient, name: str, peer: str | None) -> None:
    assert peer, "the reader needs the writer's agent id"
    with trio.fail_after(60):
        while True:  # no subscriptions in cluster mode yet: poll the writer's state at QUORUM
            try:
                doc = (await c.state_get(peer))["doc"]
            except NotFound:
                doc = None
            if (doc or {}).get("status") == "done":
                break
            await trio.sleep(0.25)
    say(name, "state-get", peer=peer, doc=doc)
    page = await c.search("how do quorum replicas acknowledge writes?", namespaces=["public"], limit=3)
    say(name, "search", partial=page.partial, hits=[{"id": m.id, "score": round(m.score or 0, 3),
                                                     "content": m.content[:60]} for m in page.items])
    sg = await c.signal_get("public", "deploy/phase")
    say(name, "signal-get", key=sg.key, value=sg.value, version=sg.version)
    s = await c.signal_incr("public", "agents-done")
    say(name, "counter-incr", key="agents-done", value=s.value)
    try:
        await c.store(peer, "trying to write into someone else's namespace")
    except Exception as e:
        say(name, "forbidden-check", error=getattr(e, "code", type(e).__name__))
    stats = await c.stats()
    cl = stats.get("cluster", {})
    say(name, "stats", ring_nodes=cl.get("placement_nodes"), alive=cl.get("alive"), store=cl.get("store"))


async def main(args: argparse.Namespace) -> None:
    identity = Identity.load(args.key)
    started = time.monotonic()
    async with MemoryClient(args.url, identity) as c:
        say(args.name, "connected", agent_id=c.agent_id, url=args.url)
        if args.cluster and args.role == "writer":
            await cluster_writer(c, args.name, args.peer, args.memories)
        else:
            roles = {("writer", False): writer, ("reader", False): reader, ("reader", True): cluster_reader}
            await roles[(args.role, args.cluster)](c, args.name, args.peer)
    say(args.name, "finished", seconds=round(time.monotonic() - started, 3))


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--key", type=Path, required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--role", choices=["writer", "reader"], required=True)
    p.add_argument("--peer", default=None)
    p.add_argument("--cluster", action="store_true", help="the node runs in cluster mode")
    p.add_argument("--memories", type=int, default=0, help="cluster writer: also store this many generated memories")
    a = p.parse_args()
    try:
        trio.run(main, a)
    except Exception as e:
        say(a.name, "failed", error=f"{type(e).__name__}: {e}")
        sys.exit(1)
