"""Launch a local mnemonet network on loopback: real node and agent processes, then a summary.

`--nodes N` with N <= 5 (master mode): one memory node serves every agent; it starts that node and
N-1 agent processes (one writer, the rest readers) that store, search, link, signal and publish.
N >= 6 (cluster mode; the service mode of the design is not built yet): N cluster nodes find each
other by gossip and form a consistent-hash ring (3 replicas per key, quorum reads and writes);
agent processes (`--agents`, default min(N-1, 8)) each talk to a different node, and the summary
shows what every node holds and checks a counter every agent bumped.
Every process it starts is stopped by pid before it exits; nothing else is touched.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from crypto.identity import Identity  # noqa: E402

START_TIMEOUT_S = 30.0
AGENT_TIMEOUT_S = 120.0
MASTER_MODE_MAX = 5
CLUSTER_MEMORIES = 200  # the cluster writer's generated memories, spread over the ring
RING_TIMEOUT_S = 240.0  # N nodes start, gossip and settle their placement on 2 cores


class Proc:
    """A child process whose stdout lines are collected by a reader thread."""

    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name = name
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   PYTHONUNBUFFERED="1")
        self.log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.p = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.lines: list[str] = []
        self.first_line = threading.Event()
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.lines.append(line.rstrip("\n"))
            self.first_line.set()
        self.first_line.set()

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self._t.join(timeout=5)
        self.log.close()


def node_argv(run: Path, name: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "node.cli", "node", "--listen", "127.0.0.1:0", "--data", str(run / name),
            "--key", str(run / f"{name}.pem"), "--log-level", "WARNING", *extra]


def listening_url(proc: Proc) -> str | None:
    """The URL a node printed on its first line, or None if it did not start."""
    if not proc.first_line.wait(START_TIMEOUT_S) or not proc.lines or not proc.lines[0].startswith("LISTENING"):
        return None
    return proc.lines[0].split()[1]


def run_agents(run: Path, urls: list[str], count: int, writer_id: str, cluster: bool, as_json: bool,
               procs: list[Proc]) -> bool:
    """Start `count` agents (agent1 writes, the others read), agent i on urls[i % len(urls)]; print
    their step lines; True if every one finished cleanly."""
    agents = []
    for i in range(1, count + 1):
        name = f"agent{i}"
        argv_a = [sys.executable, "-m", "testnet.agent", "--url", urls[i % len(urls)], "--key",
                  str(run / f"{name}.pem"), "--name", name, "--role", "writer" if i == 1 else "reader",
                  "--peer", writer_id, *(["--cluster", "--memories", str(CLUSTER_MEMORIES)] if cluster else [])]
        agents.append(Proc(name, argv_a, run / f"{name}.log"))
    procs += agents
    deadline = time.monotonic() + AGENT_TIMEOUT_S
    for a in agents:
        try:
            a.p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"{a.name} timed out", file=sys.stderr)
    for a in agents:
        a._t.join(timeout=5)
        for line in a.lines:
            if as_json:
                print(line)
                continue
            try:
                rec: dict[str, Any] = json.loads(line)
            except ValueError:
                print(f"{a.name}: {line}")
                continue
            rest = {k: v for k, v in rec.items() if k not in ("agent", "step")}
            print(f"{rec.get('agent', a.name):>7} {rec.get('step', '?'):<16} {json.dumps(rest, ensure_ascii=False)[:160]}")
    return all(a.p.returncode == 0 for a in agents)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=3,
                    help=f"<= {MASTER_MODE_MAX}: 1 memory node + N-1 agents; more: N cluster nodes and --agents agents")
    ap.add_argument("--agents", type=int, default=None, help="agent processes in cluster mode (default min(N-1, 8))")
    ap.add_argument("--dir", type=Path, default=None, help="run directory (default testnet/run/<time>)")
    ap.add_argument("--json", action="store_true", help="print the agents' step lines as JSON only")
    args = ap.parse_args(argv)
    if args.nodes < 2:
        ap.error("--nodes must be at least 2 (a memory node and an agent)")
    cluster = args.nodes > MASTER_MODE_MAX
    n_nodes = args.nodes if cluster else 1
    n_agents = (args.agents or min(args.nodes - 1, 8)) if cluster else args.nodes - 1
    run = args.dir or ROOT / "testnet" / "run" / time.strftime("%Y%m%d-%H%M%S")
    run.mkdir(parents=True, exist_ok=True)
    keys = {}
    for name in [f"node{i}" for i in range(n_nodes)] + [f"agent{i}" for i in range(1, n_agents + 1)] + ["launcher"]:
        ident = Identity.generate()
        ident.save(run / f"{name}.pem", overwrite=True)
        keys[name] = ident
    procs: list[Proc] = []
    t0 = time.monotonic()
    try:
        extra = ["--cluster", "--gossip", "local", "--bootstrap-s", str(RING_TIMEOUT_S)] if cluster else []
        node = Proc("node0", node_argv(run, "node0", *extra), run / "node0.log")
        procs.append(node)
        url = listening_url(node)
        if url is None:
            print(f"node0 did not start; see {run / 'node0.log'}", file=sys.stderr)
            return 1
        print(f"node0 {keys['node0'].agent_id} listening on {url} ({time.monotonic() - t0:.2f}s)")
        urls = [url]
        if cluster:
            others = [Proc(f"node{i}", node_argv(run, f"node{i}", *extra, "--join", url), run / f"node{i}.log")
                      for i in range(1, n_nodes)]
            procs += others
            for p in others:
                u = listening_url(p)
                if u is None:
                    print(f"{p.name} did not start; see {run / (p.name + '.log')}", file=sys.stderr)
                    return 1
                urls.append(u)
            print(f"{n_nodes} cluster nodes listening ({time.monotonic() - t0:.2f}s); waiting for the ring")
            from testnet.cluster_view import wait_for_ring
            if not wait_for_ring(urls, keys["launcher"], RING_TIMEOUT_S):
                print(f"the ring did not form within {RING_TIMEOUT_S:.0f}s; logs in {run}", file=sys.stderr)
                return 1
            print(f"ring of {n_nodes} formed ({time.monotonic() - t0:.2f}s)")
        ok = run_agents(run, urls, n_agents, keys["agent1"].agent_id, cluster, args.json, procs)
        if cluster:
            from testnet.cluster_view import summarise
            ok = summarise(urls, keys["launcher"], n_agents) and ok
        where = f"{n_nodes} cluster nodes" if cluster else "1 node"
        print(f"{'OK' if ok else 'FAILED'}: {n_agents} agents against {where} in {time.monotonic() - t0:.2f}s; "
              f"logs in {run}")
        return 0 if ok else 1
    finally:
        for p in procs:  # all at once, then wait for each
            if p.p.poll() is None:
                p.p.send_signal(signal.SIGTERM)
        for p in reversed(procs):
            p.stop()


if __name__ == "__main__":
    sys.exit(main())
