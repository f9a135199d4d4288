"""Issue 3 on real sockets: five `mnemonet node` processes on loopback join through one seed over
websockets, converge, and all detect a SIGKILLed member; a network that requires admission keeps out
a process without its own grant. The tests stop only the processes they started, by pid."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import trio

from crypto.identity import Identity
from gossip.admission import make_admission
from node.client import MemoryClient
from tests.test_durability import start_node_process


async def start(tmp: Path, name: str, network: str, join: list[str], identity: Identity | None = None,
                extra: Sequence[str] = ()) -> tuple[trio.Process, str, str]:
    key = tmp / f"{name}.pem"
    identity = identity or Identity.generate()
    identity.save(key)
    args = ["--gossip", "local", "--network", network, *extra]
    for url in join:
        args += ["--join", url]
    proc, url = await start_node_process(tmp / name, key, *args)
    return proc, url, identity.agent_id


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    """Poll an external condition (other processes: there is no event to wait on) until a deadline."""
    with trio.move_on_after(timeout_s):
        while not await check():
            await trio.sleep(0.25)
        return
    raise AssertionError(f"not within {timeout_s} s: {what}")


async def test_five_processes_converge_and_detect_a_sigkill(tmp_path: Path) -> None:
    network = f"test-{os.getpid()}"
    procs: list[trio.Process] = []
    try:
        first = await start(tmp_path, "n0", network, [])
        procs.append(first[0])
        rest = []
        async with trio.open_nursery() as n:
            async def one(i: int) -> None:
                r = await start(tmp_path, f"n{i}", network, [first[1]])
                procs.append(r[0])
                rest.append(r)
            for i in range(1, 5):
                n.start_soon(one, i)
        nodes = [first, *rest]
        ids = {node_id for _, _, node_id in nodes}
        me = Identity.generate()
        async with contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(MemoryClient(url, me, timeout_s=10)) for _, url, _ in nodes]

            async def view(c: MemoryClient) -> dict[str, str]:
                return {m["id"]: m["state"] for m in await c.members()}

            async def converged() -> bool:
                views = [await view(c) for c in clients]
                return all({k for k, s in v.items() if s == "alive"} == ids for v in views)

            await eventually(converged, 30, "all five see five alive members")
            for c in clients:
                assert {m["meta"]["endpoint"] for m in await c.members()} == {url for _, url, _ in nodes}

            victim_proc, _, victim_id = nodes[3]
            os.kill(victim_proc.pid, signal.SIGKILL)
            await victim_proc.wait()
            survivors = clients[:3] + clients[4:]

            async def detected() -> bool:
                views = [await view(c) for c in survivors]
                return all(v.get(victim_id) == "dead" for v in views)

            await eventually(detected, 60, "every survivor declares the killed node dead")
            for c in survivors:  # and nobody else was harmed
                v = await view(c)
                assert {k for k, s in v.items() if s == "alive"} == ids - {victim_id}
            stats = (await survivors[0].stats())["gossip"]
            assert stats["dropped"].get("bad_signature", 0) == 0
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()


async def test_admission_keeps_a_process_without_its_own_grant_out(tmp_path: Path) -> None:
    network = f"adm-{os.getpid()}"
    network_key = Identity.generate()
    now_ms = int(time.time() * 1000)

    def grant(ident: Identity) -> list[str]:
        path = tmp_path / f"{ident.agent_id}.token"
        path.write_text(make_admission(network_key, ident.agent_id, network, exp_ms=now_ms + 3_600_000,
                                       now_ms=now_ms) + "\n")
        return ["--admission", str(path), "--network-key-pub", network_key.public_key_hex]

    a, b = Identity.generate(), Identity.generate()
    procs: list[trio.Process] = []
    try:
        first = await start(tmp_path, "a", network, [], a, grant(a))
        procs.append(first[0])
        second = await start(tmp_path, "b", network, [first[1]], b, grant(b))
        procs.append(second[0])
        # The intruder shows b's grant (it cannot sign as b) and checks nobody.
        stolen = grant(b)[:2]
        intruder = await start(tmp_path, "x", network, [first[1]], extra=stolen)
        procs.append(intruder[0])
        async with contextlib.AsyncExitStack() as stack:
            me = Identity.generate()
            clients = [await stack.enter_async_context(MemoryClient(url, me, timeout_s=10))
                       for url in (first[1], second[1])]

            async def both_see_both() -> bool:
                views = [{m["id"]: m["state"] for m in await c.members()} for c in clients]
                return all({k for k, s in v.items() if s == "alive"} == {a.agent_id, b.agent_id} for v in views)

            await eventually(both_see_both, 30, "the two admitted nodes see each other")

            async def refused_twice() -> bool:  # the intruder's join, then at least one of its retries
                return (await clients[0].stats())["gossip"]["swim"]["dropped_sender_not_admitted"] >= 2

            await eventually(refused_twice, 30, "the seed refuses the intruder's join push-pulls")
            for c in clients:
                assert intruder[2] not in {m["id"] for m in await c.members()}
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()

