"""Real `mnemonet node --cluster` processes on loopback for fault tests: start, SIGKILL/restart on the
same port and data, isolation from every peer (SIGUSR1/SIGUSR2, `--fault-signals`), cluster statistics,
and the replica-convergence check over each node's SQLite file. Test helper only: it must not change node behaviour or stop processes it did not start.

Run as `python -m tests.cluster_procs node ...` it is `mnemonet node ...` with one knob the CLI does not
expose: the anti-entropy interval (env MNEMONET_TEST_AE_INTERVAL_S), so a CI-sized run converges in seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from crypto.identity import Identity
from node.client import MemoryClient
from ring.partition import PARTITION_BITS, Placement, StorageNode

ROOT = Path(__file__).resolve().parent.parent
AE_ENV = "MNEMONET_TEST_AE_INTERVAL_S"

Item = tuple[str, tuple[str, ...]]  # (kind, key) of a replica_items row


@dataclass
class ClusterProc:
    """One node process of the test: its identity, data dir and (after a restart) the same port."""

    name: str
    data: Path
    key: Path
    node_id: str
    args: tuple[str, ...]
    ae_interval_s: float | None = None  # None: `mnemonet node` exactly (node.cli, default 30 s)
    proc: trio.Process | None = None
    url: str = ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self) -> None:
        """Start (or restart) the process; a restart listens on the port it had before."""
        listen = ("--listen", self.url.removeprefix("ws://")) if self.url else ()
        self.proc, url = await spawn(self.data, self.key, (*self.args, *listen), self.ae_interval_s)
        assert not self.url or url == self.url, (url, self.url)
        self.url = url

    async def kill(self) -> None:
        """SIGKILL and reap (no-op if not running)."""
        if self.proc is not None and self.proc.returncode is None:
            os.kill(self.proc.pid, signal.SIGCONT)  # a stopped process dies on SIGKILL too; be explicit
            self.proc.kill()
            await self.proc.wait()

    def isolate(self) -> None:
        """Cut it off from every peer while it keeps running (needs --fault-signals; node/isolation.py)."""
        self._signal(signal.SIGUSR1)

    def heal(self) -> None:
        self._signal(signal.SIGUSR2)

    def _signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None and self.proc.returncode is None
        os.kill(self.proc.pid, sig)


async def spawn(data: Path, key: Path, args: Sequence[str], ae_interval_s: float | None) -> tuple[trio.Process, str]:
    """Start one node process (as tests/test_durability.py does) and wait for its LISTENING line."""
    module = "node.cli" if ae_interval_s is None else "tests.cluster_procs"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if ae_interval_s is not None:
        env[AE_ENV] = str(ae_interval_s)
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", module, "node", "--listen", "127.0.0.1:0", "--data", str(data), "--key", str(key),
         "--log-level", "WARNING", *args], cwd=ROOT, stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    buf = b""
    try:
        with trio.fail_after(60):
            while b"\n" not in buf:
                chunk = await proc.stdout.receive_some(4096)
                if not chunk:
                    raise RuntimeError("node exited before listening")
                buf += chunk
    except BaseException:
        with trio.CancelScope(shield=True):
            proc.kill()
            await proc.wait()
        raise
    line = buf.split(b"\n", 1)[0].decode()
    assert line.startswith("LISTENING"), line
    return proc, line.split()[1]


def make_procs(tmp: Path, count: int, network: str, bootstrap_s: float,
               ae_interval_s: float | None = None) -> list[ClusterProc]:
    out = []
    for i in range(count):
        ident = Identity.generate()
        key = tmp / f"n{i}.pem"
        ident.save(key)
        out.append(ClusterProc(f"n{i}", tmp / f"n{i}", key, ident.agent_id,
                               ("--cluster", "--bootstrap-s", str(bootstrap_s), "--gossip", "local",
                                "--network", network, "--fsync", "normal", "--fault-signals"), ae_interval_s))
    return out


async def start_cluster(procs: Sequence[ClusterProc]) -> None:
    """The first process is the seed; the others join through it, started concurrently."""
    await procs[0].start()
    seed = procs[0].url
    for p in procs[1:]:
        p.args = (*p.args, "--join", seed)
    async with trio.open_nursery() as n:
        for p in procs[1:]:
            n.start_soon(p.start)


async def kill_all(procs: Iterable[ClusterProc]) -> None:
    """SIGKILL every process this test started (never a broad kill): safe in `finally`."""
    with trio.CancelScope(shield=True):
        for p in procs:
            await p.kill()


async def cluster_stats(c: MemoryClient) -> dict[str, Any]:
    """The `cluster` section of a node's stats (node/replication.py statistics())."""
    return dict((await c.stats())["cluster"])


async def eventually(check: Any, timeout_s: float, what: str) -> float:
    """Poll `await check()` (other processes: there is no event to wait on) until true; returns the
    seconds it took. Raises AssertionError with `what` past the deadline."""
    start = trio.current_time()
    with trio.move_on_after(timeout_s):
        while not await check():
            await trio.sleep(0.5)
        return trio.current_time() - start
    raise AssertionError(f"not within {timeout_s} s: {what}")


# ---- convergence over the nodes' SQLite files ----

def read_replicas(data: Path) -> dict[Item, tuple[int, int]]:
    """(kind, key) -> (partition, digest hash) of every replica item in one node's store. Opened
    read-only (query_only) and closed again; works on a live WAL database and after a kill."""
    conn = sqlite3.connect(str(data / "mnemonet.sqlite3"), timeout=30.0)
    try:
        conn.execute("PRAGMA query_only=ON")
        rows = conn.execute("SELECT kind, key, part, dhash FROM replica_items").fetchall()
    finally:
        conn.close()
    return {(kind, tuple(json.loads(key))): (int(part), int(dhash)) for kind, key, part, dhash in rows}


def divergence(stores: dict[str, dict[Item, tuple[int, int]]], placement: Placement) -> tuple[list[str], list[str]]:
    """How the stores differ from "each item held by its 3 owners in one version": (unconverged: an
    owner lacks the item or holds another version; strays: a copy on a node that does not own it).
    Both empty: converged and placed exactly."""
    unconverged: list[str] = []
    strays: list[str] = []
    items: set[Item] = set().union(*(s.keys() for s in stores.values()))
    for item in sorted(items):
        copies = {node: s[item] for node, s in stores.items() if item in s}
        part = next(iter(copies.values()))[0]
        owners = set(placement.preference(part))
        versions = {copies[o][1] for o in owners if o in copies}
        held = {n[:8]: f"{v[1] & 0xffff:04x}" for n, v in copies.items()}
        if not owners <= set(copies) or len(versions) != 1:
            unconverged.append(f"{item}: owners {sorted(o[:8] for o in owners)}, copies {held}")
        if set(copies) - owners:
            strays.append(f"{item}: owners {sorted(o[:8] for o in owners)}, copies {held}")
    return unconverged, strays


def placement_of(procs: Sequence[ClusterProc]) -> Placement:
    """The placement every node computes over these members (equal weights, N=3, as node/replication.py)."""
    return Placement([StorageNode(p.node_id) for p in procs], 3, PARTITION_BITS)


async def read_all(procs: Sequence[ClusterProc]) -> dict[str, dict[Item, tuple[int, int]]]:
    def read() -> dict[str, dict[Item, tuple[int, int]]]:
        return {p.node_id: read_replicas(p.data) for p in procs}
    return await trio.to_thread.run_sync(read)


@contextlib.asynccontextmanager
async def clients(urls: Sequence[str], agent: Identity, timeout_s: float) -> AsyncIterator[list[MemoryClient]]:
    """One client per url, each held open by its own task so that all close at once (closing a
    MemoryClient waits up to a second; one after another, 8 clients took 8 s)."""
    done = trio.Event()

    async def hold(url: str, task_status: trio.TaskStatus[MemoryClient]) -> None:
        async with MemoryClient(url, agent, timeout_s=timeout_s, sign_records=False) as c:
            task_status.started(c)
            await done.wait()
    async with trio.open_nursery() as n:
        try:
            yield [await n.start(hold, u) for u in urls]
        finally:
            done.set()


def _main() -> int:
    """`mnemonet` with ClusterConfig's anti-entropy interval taken from the environment."""
    import dataclasses

    import node.replication
    from node.cli import main

    base = node.replication.ClusterConfig
    interval = float(os.environ[AE_ENV])

    def tuned(**kw: Any) -> node.replication.ClusterConfig:
        c = base(**kw)
        return dataclasses.replace(c, replication=c.replication.replace(anti_entropy_interval_s=interval))
    node.replication.ClusterConfig = tuned  # type: ignore[assignment,misc]
    return main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(_main())
