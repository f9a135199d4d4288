"""The `mnemonet` command and the testnet launcher, as a person would run them (real processes)."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import trio

from tests.test_durability import start_node_process

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONPATH=str(ROOT))


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node.cli", *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=60, check=check)


def test_keygen_writes_private_key_file(tmp_path: Path) -> None:
    out = json.loads(cli("keygen", "--out", str(tmp_path / "me.pem")).stdout)
    assert len(out["agent_id"]) == 32
    assert stat.S_IMODE((tmp_path / "me.pem").stat().st_mode) == 0o600
    again = cli("keygen", "--out", str(tmp_path / "me.pem"), check=False)
    assert again.returncode == 1 and "invalid_argument" in again.stderr  # never overwrites silently
    os.chmod(tmp_path / "me.pem", 0o644)
    loose = cli("stats", "--key", str(tmp_path / "me.pem"), "--url", "ws://127.0.0.1:9", check=False)
    assert loose.returncode == 1 and "chmod" in loose.stderr  # refuses a readable key


async def test_client_verbs_against_a_node(tmp_path: Path) -> None:
    cli("keygen", "--out", str(tmp_path / "node.pem"))
    me = json.loads(cli("keygen", "--out", str(tmp_path / "me.pem")).stdout)["agent_id"]
    proc, url = await start_node_process(tmp_path / "data", tmp_path / "node.pem")
    try:
        def run(*args: str) -> dict:  # type: ignore[type-arg]
            return json.loads(cli(*args, "--url", url, "--key", str(tmp_path / "me.pem")).stdout)

        def session() -> list[dict]:  # type: ignore[type-arg]
            return [
                run("store", "public", "Quorum writes need two of three replicas.", "--type", "fact",
                    "--meta", '{"topic": "db"}'),
                run("search", "how many replicas acknowledge a write", "--ns", "public"),
                run("signal", "set", "public", "deploy/phase", '"rollout"', "--ttl", "60"),
                run("signal", "get", "public", "deploy/phase"),
                run("state", "publish", '{"status": "busy"}'),
                run("state", "get", me),
                run("stats"),
                run("members"),
            ]

        stored, found, sset, sget, _pub, state, stats, members = await trio.to_thread.run_sync(session)
        assert [(m["id"], m["state"], m["endpoint"]) for m in members] == [(stats["node"], "alive", url)]
        assert stored["created"] and found["hits"][0]["id"] == stored["id"]
        assert sget["value"] == "rollout" and sget["version"] == sset["version"]
        assert state["doc"] == {"status": "busy"}
        assert stats["counts"]["memories"] == 1
    finally:
        proc.terminate()
        with trio.move_on_after(15):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_admit_prints_a_grant_the_network_key_admits(tmp_path: Path) -> None:
    from gossip.admission import AdmissionCheck

    cli("keygen", "--out", str(tmp_path / "network.pem"))
    node = json.loads(cli("keygen", "--out", str(tmp_path / "node.pem")).stdout)["agent_id"]
    r = cli("admit", "--network-key", str(tmp_path / "network.pem"), "--node", node, "--network", "prod",
            "--days", "2")
    token = r.stdout.strip()
    info = json.loads(r.stderr)
    check = AdmissionCheck(bytes.fromhex(info["network_key_pub"]), "prod")
    now_ms = int(time.time() * 1000)
    grant = check.verify(token, node, now_ms)
    assert grant.exp_ms == info["expires_ms"] and 1.9 * 86_400_000 < grant.exp_ms - now_ms <= 2 * 86_400_000
    assert not check.admits(node, token, grant.exp_ms)  # it ends when the days are up
    bad = cli("admit", "--network-key", str(tmp_path / "network.pem"), "--node", "not-an-id", check=False)
    assert bad.returncode == 1 and "invalid_argument" in bad.stderr
    # A node that requires admission refuses to start without its token, before it listens.
    refused = cli("node", "--data", str(tmp_path / "data"), "--key", str(tmp_path / "node.pem"), "--listen",
                  "127.0.0.1:0", "--network", "prod", "--network-key-pub", info["network_key_pub"], check=False)
    assert refused.returncode == 1 and "--admission" in refused.stderr


def test_testnet_launch_three(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "testnet/launch.py", "--nodes", "3", "--dir", str(tmp_path / "run")],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OK: 2 agents against 1 node" in r.stdout
    for step in ("store-duplicate", "signal-cas", "state-push", "search", "forbidden-check"):
        assert step in r.stdout


def test_testnet_launch_cluster(tmp_path: Path) -> None:
    """Six nodes: cluster mode. The ring forms, agents on different nodes read each other's quorum
    writes, and the counter every agent bumped once ends at the number of agents."""
    r = subprocess.run([sys.executable, "testnet/launch.py", "--nodes", "6", "--agents", "3",
                        "--dir", str(tmp_path / "run")], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ring of 6 formed" in r.stdout and "OK: 3 agents against 6 cluster nodes" in r.stdout
    assert "counter public/agents-done = 3, expected 3: ok" in r.stdout
    held = re.search(r"items held over all nodes: (\d+)", r.stdout)
    assert held and int(held.group(1)) == 3 * (5 + 1 + 200 + 3)  # notes, private, generated, signal+counter+state
    for step in ("store-many", "state-get", "search", "counter-incr", "forbidden-check"):
        assert step in r.stdout
