"""An acknowledged write survives kill -9 of the node process that took it (real subprocess)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from crypto.errors import MnemonetError
from crypto.identity import Identity
from node.client import MemoryClient
from node.config import NodeConfig
from node.server import run_node
from node.service import Service

ROOT = Path(__file__).resolve().parent.parent


async def start_node_process(data: Path, key: Path, *extra: str) -> tuple[trio.Process, str]:
    """Start `mnemonet node` (extra CLI arguments appended) and wait for its LISTENING line."""
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "node.cli", "node", "--listen", "127.0.0.1:0", "--data", str(data), "--key", str(key),
         "--log-level", "WARNING", *extra],
        cwd=ROOT, stdout=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert proc.stdout is not None
    buf = b""
    with trio.fail_after(60):
        while b"\n" not in buf:
            chunk = await proc.stdout.receive_some(4096)
            if not chunk:
                raise RuntimeError("node exited before listening")
            buf += chunk
    line = buf.split(b"\n", 1)[0].decode()
    assert line.startswith("LISTENING"), line
    return proc, line.split()[1]


Step = Callable[[MemoryClient], Awaitable[Any]]


async def node_session(data: Path, node_key: Identity, me: Identity, clock: list[int], step: Step, *,
                       crash: bool = False) -> Any:
    """Run an in-process node on `data` (wall clock read from `clock[0]`) for one client step, then
    stop it; with `crash`, its index files are not saved, as after kill -9."""
    async with trio.open_nursery() as n:
        svc = Service(NodeConfig(sweep_interval_s=3600.0), data, node_key, wall_ms=lambda: clock[0])
        port = await n.start(run_node, svc, "127.0.0.1", 0)
        if crash:
            svc.spaces.save_all = lambda conn: None  # type: ignore[method-assign]
        async with MemoryClient(f"ws://127.0.0.1:{port}", me) as c:
            out = await step(c)
        n.cancel_scope.cancel()
    return out


async def kill9(proc: trio.Process) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    await proc.wait()
    assert proc.returncode == -signal.SIGKILL


async def test_acknowledged_writes_survive_kill_9(tmp_path: Path) -> None:
    key = tmp_path / "node.pem"
    Identity.generate().save(key)
    me = Identity.generate()
    ns = me.agent_id
    acked: dict[str, str] = {}
    signals_acked: dict[str, int] = {}
    proc, url = await start_node_process(tmp_path / "data", key)
    try:
        async with MemoryClient(url, me, timeout_s=10) as c:
            async def writer(w: int) -> None:
                for i in range(10_000):
                    text = f"writer {w} fact {i}: durable across crashes"
                    try:
                        r = await c.store(ns, text, id=f"w{w}-{i}")
                        acked[r.id] = text
                        if i % 10 == 0:
                            signals_acked[f"w{w}"] = await c.signal_set(ns, f"progress/w{w}", i)
                    except MnemonetError:
                        return  # the node died under us: this write was never acknowledged

            async with trio.open_nursery() as n:
                for w in range(8):
                    n.start_soon(writer, w)
                # Kill while writes are in flight, once a fair number were acknowledged.
                while len(acked) < 300:
                    await trio.sleep(0.01)
                await kill9(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert len(acked) >= 300
    proc2, url2 = await start_node_process(tmp_path / "data", key)
    try:
        async with MemoryClient(url2, me, timeout_s=30) as c:
            page_ids: set[str] = set()
            cursor = None
            while True:
                page = await c.list(ns, limit=1000, cursor=cursor)
                page_ids |= {m.id for m in page.items}
                if not page.truncated:
                    break
                cursor = page.next_cursor
            missing = set(acked) - page_ids
            assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {sorted(missing)[:5]}"
            some = sorted(acked)[len(acked) // 2]
            assert (await c.get(ns, some)).content == acked[some]
            hits = await c.search(acked[some], ns=ns, limit=5)
            assert some in {m.id for m in hits.items}  # the index was rebuilt/reloaded too
            for key_name, version in signals_acked.items():
                assert (await c.signal_get(ns, f"progress/{key_name}")).version >= version
    finally:
        proc2.send_signal(signal.SIGTERM)
        with trio.move_on_after(15):
            await proc2.wait()
        if proc2.returncode is None:
            proc2.kill()
            await proc2.wait()


async def test_index_saved_before_a_crash_is_not_trusted(tmp_path: Path) -> None:
    """A crash after writes leaves index files older than SQLite; start-up must notice and rebuild,
    even when the rows' count and max rowid happen to look the same (expired id stored again)."""
    me = Identity.generate()
    node_key = Identity.generate()
    clock = [time.time_ns() // 1_000_000]
    dim = NodeConfig().dim
    v1 = [0.0] * dim
    v1[0] = 1.0
    v2 = [0.0] * dim
    v2[1] = 1.0

    async def session(step: Step, *, crash: bool = False) -> Any:
        return await node_session(tmp_path / "d", node_key, me, clock, step, crash=crash)

    async def first(c: MemoryClient) -> None:
        await c.store(me.agent_id, "first", id="m", vector=v1, ttl_s=1)

    async def second(c: MemoryClient) -> None:
        clock[0] += 2000  # "m" has expired: the id may be stored again (within the replay window)
        await c.store(me.agent_id, "second", id="m", vector=v2)

    async def check(c: MemoryClient) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
        a = await c.search(vector=v2, ns=me.agent_id, limit=1)
        b = await c.search(vector=v1, ns=me.agent_id, limit=1)
        return [(m.content, round(m.score or 0, 3)) for m in a.items], [(m.content, round(m.score or 0, 3)) for m in b.items]

    await session(first)
    await session(second, crash=True)
    by_v2, by_v1 = await session(check)
    assert by_v2 == [("second", 1.0)]
    assert by_v1 == [("second", 0.0)]


async def test_ttl_survives_restart_for_search(tmp_path: Path) -> None:
    """Expiry known before a restart still hides the record from unfiltered searches after it."""
    me, node_key = Identity.generate(), Identity.generate()
    clock = [time.time_ns() // 1_000_000]

    async def session(step: Step) -> Any:
        return await node_session(tmp_path / "d", node_key, me, clock, step)

    async def write(c: MemoryClient) -> None:
        await c.store(me.agent_id, "a short-lived note about the launch window", id="t", ttl_s=1)
        await c.store(me.agent_id, "a lasting note about the launch window", id="p")

    async def read(c: MemoryClient) -> list[str]:
        clock[0] += 1500
        return [m.id for m in (await c.search("note about the launch window", ns=me.agent_id)).items]

    await session(write)
    assert await session(read) == ["p"]
