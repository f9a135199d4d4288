"""Launch a local mnemonet network on loopback: real node and agent processes, then a summary.

Today (master mode): one memory node serves every agent; `--nodes N` starts that node and N-1 agent
processes (one writer, the rest readers) that store, search, link, signal and publish through it.
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=3, help="processes in the network (1 node + N-1 agents)")
    ap.add_argument("--dir", type=Path, default=None, help="run directory (default testnet/run/<time>)")
    ap.add_argument("--json", action="store_true", help="print the agents' step lines as JSON only")
    args = ap.parse_args(argv)
    if args.nodes < 2:
        ap.error("--nodes must be at least 2 (a memory node and an agent)")
    if args.nodes > 5:
        print(f"note: {args.nodes} processes; until gossip and the ring land (issues 3, 4) every agent "
              "uses one memory node (master mode)", file=sys.stderr)
    run = args.dir or ROOT / "testnet" / "run" / time.strftime("%Y%m%d-%H%M%S")
    run.mkdir(parents=True, exist_ok=True)
    keys = {}
    for name in ["node0"] + [f"agent{i}" for i in range(1, args.nodes)]:
        ident = Identity.generate()
        ident.save(run / f"{name}.pem", overwrite=True)
        keys[name] = ident
    procs: list[Proc] = []
    t0 = time.monotonic()
    try:
        node = Proc("node0", [sys.executable, "-m", "node.cli", "node", "--listen", "127.0.0.1:0",
                              "--data", str(run / "node0"), "--key", str(run / "node0.pem"), "--log-level", "WARNING"],
                    run / "node0.log")
        procs.append(node)
        if not node.first_line.wait(START_TIMEOUT_S) or not node.lines or not node.lines[0].startswith("LISTENING"):
            print(f"node0 did not start; see {run / 'node0.log'}", file=sys.stderr)
            return 1
        url = node.lines[0].split()[1]
        print(f"node0 {keys['node0'].agent_id} listening on {url} ({time.monotonic() - t0:.2f}s)")
        writer_id = keys["agent1"].agent_id
        agents = []
        for i in range(1, args.nodes):
            name = f"agent{i}"
            role = "writer" if i == 1 else "reader"
            argv_a = [sys.executable, "-m", "testnet.agent", "--url", url, "--key", str(run / f"{name}.pem"),
                      "--name", name, "--role", role, "--peer", writer_id]
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
        ok = all(a.p.returncode == 0 for a in agents)
        for a in agents:
            for line in a.lines:
                if args.json:
                    print(line)
                    continue
                try:
                    rec: dict[str, Any] = json.loads(line)
                except ValueError:
                    print(f"{a.name}: {line}")
                    continue
                rest = {k: v for k, v in rec.items() if k not in ("agent", "step")}
                print(f"{rec.get('agent', a.name):>7} {rec.get('step', '?'):<16} {json.dumps(rest, ensure_ascii=False)[:160]}")
        print(f"{'OK' if ok else 'FAILED'}: {len(agents)} agents against 1 node in {time.monotonic() - t0:.2f}s; "
              f"logs in {run}")
        return 0 if ok else 1
    finally:
        for p in reversed(procs):
            p.stop()


if __name__ == "__main__":
    sys.exit(main())
