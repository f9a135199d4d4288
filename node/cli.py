"""The `mnemonet` command: keygen, node (serve), and small client verbs for a person at a terminal.

Argument parsing and printing only; everything real lives in crypto/, node/service.py, node/client.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from crypto.errors import InvalidArgument, MnemonetError
from crypto.identity import Identity

DEFAULT_KEY = Path(os.environ.get("MNEMONET_KEY", str(Path.home() / ".mnemonet" / "identity.pem")))
DEFAULT_URL = os.environ.get("MNEMONET_URL", "ws://127.0.0.1:7700")
__version__ = "0.1.0"


def _gossip_profiles() -> dict[str, Callable[[], Any]]:
    from gossip.config import GossipConfig
    return {"lan": GossipConfig.lan, "local": GossipConfig.local, "wan": GossipConfig.wan}


def _hostport(s: str) -> tuple[str, int]:
    host, _, port = s.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError("expected HOST:PORT, e.g. 127.0.0.1:7700")
    return host.strip("[]"), int(port)


def _public_key_hex(s: str) -> bytes:
    if not re.fullmatch(r"[0-9a-fA-F]{64}", s):
        raise argparse.ArgumentTypeError("expected the 64 hex characters of an Ed25519 public key")
    return bytes.fromhex(s)


def _json_arg(s: str) -> Any:
    try:
        return json.loads(s)
    except ValueError:
        return s  # a bare word is taken as a string


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mnemonet", description="Shared memory for networks of AI agents.")
    sub = p.add_subparsers(dest="cmd", required=True)

    k = sub.add_parser("keygen", help="create an identity (Ed25519 key, file mode 0600)")
    k.add_argument("--out", type=Path, default=DEFAULT_KEY)
    k.add_argument("--force", action="store_true", help="overwrite an existing key file")

    n = sub.add_parser("node", help="run a node")
    n.add_argument("--listen", type=_hostport, default=("127.0.0.1", 7700), metavar="HOST:PORT")
    n.add_argument("--data", type=Path, required=True, help="data directory (SQLite, indexes)")
    n.add_argument("--key", type=Path, default=DEFAULT_KEY, help="the node's identity file")
    n.add_argument("--operator", action="append", default=[], metavar="AGENT_ID",
                   help="agent id allowed to administer this node (repeatable; the node's own id always is)")
    n.add_argument("--fsync", choices=["full", "normal"], default="full")
    n.add_argument("--frame-bytes-max", type=int, default=None)
    n.add_argument("--embedder", default="hash")
    n.add_argument("--log-level", default="INFO")
    n.add_argument("--join", action="append", default=[], metavar="URL",
                   help="a member's ws:// URL to join through (repeatable; any live member suffices)")
    n.add_argument("--network", default="default", help="gossip network name: frames of other networks are dropped")
    n.add_argument("--gossip", choices=["lan", "local", "wan", "off"], default="lan",
                   help="gossip timing profile (gossip/config.py); `local` for loopback tests; `off`: no membership")
    n.add_argument("--capability", type=float, default=1.0, help="advertised capability score (placement prefers higher)")
    n.add_argument("--network-key-pub", type=_public_key_hex, default=None, metavar="HEX",
                   help="require network admission: members must present a grant signed by this key")
    n.add_argument("--admission", type=Path, default=None, metavar="FILE",
                   help="this node's admission token (from `mnemonet admit`)")
    n.add_argument("--cluster", action="store_true",
                   help="cluster mode: data is partitioned over the storage members on a consistent-hash ring, "
                        "3 replicas per key, quorum reads and writes (needs gossip)")
    n.add_argument("--fault-signals", action="store_true",
                   help="fault tests: SIGUSR1 cuts this node off from every peer (gossip and replica frames are "
                        "dropped both ways; clients are still served), SIGUSR2 heals it")
    n.add_argument("--bootstrap-s", type=float, default=0.0, metavar="SECONDS",
                   help="founding member of a new cluster: adopt placement changes without pulling data for this "
                        "long after start (a node joining an existing cluster leaves it at 0 and pulls its share)")

    a = sub.add_parser("admit", help="sign a network admission grant for a node; prints the token")
    a.add_argument("--network-key", type=Path, required=True, metavar="KEYFILE",
                   help="the network's identity file: its key signs admissions, its public key is --network-key-pub")
    a.add_argument("--node", required=True, metavar="NODE_ID", help="the node's agent id (32 hex characters)")
    a.add_argument("--network", default="default", metavar="NAME", help="the gossip network name (node --network)")
    a.add_argument("--days", type=float, default=30.0, help="validity; renew before it ends")

    def client_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--url", default=DEFAULT_URL)
        sp.add_argument("--key", type=Path, default=DEFAULT_KEY)

    s = sub.add_parser("store", help="store a memory")
    client_opts(s)
    s.add_argument("ns")
    s.add_argument("content")
    s.add_argument("--type", default="note", dest="memory_type")
    s.add_argument("--meta", type=json.loads, default=None, help="metadata as JSON")
    s.add_argument("--id", default=None)
    s.add_argument("--ttl", type=float, default=None, help="seconds until it expires")

    q = sub.add_parser("search", help="semantic search")
    client_opts(q)
    q.add_argument("query")
    q.add_argument("--ns", action="append", default=None, help="namespace to search (repeatable)")
    q.add_argument("--limit", type=int, default=10)
    q.add_argument("--type", default=None, dest="memory_type")
    q.add_argument("--expand", action="store_true", help="attach linked context to each hit")

    sg = sub.add_parser("signal", help="signals: set/get")
    sgs = sg.add_subparsers(dest="verb", required=True)
    ss = sgs.add_parser("set")
    client_opts(ss)
    ss.add_argument("ns")
    ss.add_argument("signal_key", metavar="KEY")
    ss.add_argument("value", type=_json_arg)
    ss.add_argument("--ttl", type=float, default=None)
    ss.add_argument("--if-version", type=int, default=None)
    sgg = sgs.add_parser("get")
    client_opts(sgg)
    sgg.add_argument("ns")
    sgg.add_argument("signal_key", metavar="KEY")

    st = sub.add_parser("state", help="agent state: publish/get")
    sts = st.add_subparsers(dest="verb", required=True)
    sp = sts.add_parser("publish")
    client_opts(sp)
    sp.add_argument("doc", type=_json_arg)
    sgt = sts.add_parser("get")
    client_opts(sgt)
    sgt.add_argument("agent")

    stats = sub.add_parser("stats", help="node statistics")
    client_opts(stats)

    members = sub.add_parser("members", help="the cluster's members as this node's gossip sees them")
    client_opts(members)
    return p


async def _serve(args: argparse.Namespace) -> None:
    # One BLAS thread: with two, a search next to an index build stalled 100-200 ms (measured);
    # with one, 6 ms. Must be set before numpy loads.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    from gossip.messages import Meta
    from node.config import NodeConfig
    from node.gossip_transport import WebsocketTransport
    from node.isolation import Isolation
    from node.membership import Membership
    from node.server import run_node
    from node.service import Service

    identity = Identity.load(args.key)
    admission = _node_admission(args, identity)
    kw: dict[str, Any] = {"fsync": args.fsync, "embedder": args.embedder}
    if args.frame_bytes_max:
        kw["frame_bytes_max"] = args.frame_bytes_max
    service = Service(NodeConfig(**kw), args.data, identity, operator_ids=frozenset(args.operator))
    host, port = args.listen
    transport = None if args.gossip == "off" else WebsocketTransport()
    cluster = None
    peer_handlers = {}
    if args.cluster:
        if transport is None:
            raise SystemExit("--cluster needs gossip (not --gossip off)")
        from node.cluster import ClusterNode
        from node.replication import ClusterConfig
        cluster = ClusterNode(service, network=args.network,
                              config=ClusterConfig(bootstrap_s=args.bootstrap_s) if args.bootstrap_s else None)
        peer_handlers = cluster.peer_handlers
    isolation = Isolation()
    if transport is not None:
        transport.isolation = isolation
    if cluster is not None:
        cluster.replication.links.isolation = isolation
    fault_signals = (signal.SIGUSR1, signal.SIGUSR2) if args.fault_signals else ()
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, *fault_signals) as signals:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(functools.partial(
                run_node, service, host, port, gossip_handler=transport.handle_request if transport else None,
                peer_handlers=peer_handlers))
            url = f"ws://{host}:{bound}"
            if transport is not None:
                transport.local_addr = url
                meta = Meta(roles=("storage",), capability=args.capability,
                            storage_bytes=shutil.disk_usage(args.data).free, endpoint=url, version=__version__)
                # A push-pull larger than the transport carries would be dropped whole: cap it there.
                gossip_config = _gossip_profiles()[args.gossip]()
                gossip_config = dataclasses.replace(gossip_config, push_pull_bytes_max=min(
                    gossip_config.push_pull_bytes_max, transport.config.frame_bytes_max))
                service.membership = Membership(identity, url, meta, transport, config=gossip_config,
                                                network=args.network, seeds=args.join, data_dir=args.data,
                                                admission_token=admission, network_key=args.network_key_pub,
                                                frame_bytes_max=transport.config.frame_bytes_max)
                await nursery.start(service.membership.run)
                if cluster is not None:
                    await nursery.start(cluster.run)
            # One machine-readable line: launchers wait for it instead of polling the port.
            print(f"LISTENING {url} {identity.agent_id}", flush=True)
            async for signum in signals:
                if signum in fault_signals:
                    isolation.on = signum == signal.SIGUSR1
                    logging.getLogger("mnemonet.node").warning(
                        "fault: %s", "isolated from every peer" if isolation.on else "healed")
                    continue
                if service.membership is not None:
                    with trio.move_on_after(2):
                        await service.membership.leave()
                nursery.cancel_scope.cancel()
                break


def _node_admission(args: argparse.Namespace, identity: Identity) -> str:
    """This node's admission token, checked before anything starts (a bad one is a clear error, not a
    node that silently never joins)."""
    token = args.admission.read_text().strip() if args.admission else ""
    if args.network_key_pub is not None:
        from gossip.admission import AdmissionCheck
        if not token:
            raise InvalidArgument("--network-key-pub requires --admission FILE (see mnemonet admit)")
        AdmissionCheck(args.network_key_pub, args.network).verify(token, identity.agent_id, int(time.time() * 1000))
    return token


def _admit(args: argparse.Namespace) -> str:
    from gossip.admission import make_admission

    if not re.fullmatch(r"[0-9a-f]{32}", args.node):
        raise InvalidArgument("--node must be an agent id: 32 lowercase hex characters")
    if not args.days > 0:
        raise InvalidArgument("--days must be positive")
    key = Identity.load(args.network_key)
    now_ms = int(time.time() * 1000)
    exp_ms = now_ms + int(args.days * 86_400_000)
    token = make_admission(key, args.node, args.network, exp_ms=exp_ms, now_ms=now_ms)
    print(json.dumps({"node": args.node, "network": args.network, "network_key_pub": key.public_key_hex,
                      "expires_ms": exp_ms}), file=sys.stderr)
    return token


async def _client_cmd(args: argparse.Namespace) -> Any:
    from node.client import MemoryClient

    identity = Identity.load(args.key)
    async with MemoryClient(args.url, identity) as c:
        if args.cmd == "store":
            r = await c.store(args.ns, args.content, memory_type=args.memory_type, metadata=args.meta, id=args.id,
                              ttl_s=args.ttl)
            return {"id": r.id, "created": r.created, "duplicate": r.duplicate}
        if args.cmd == "search":
            filters: dict[str, Any] = {"expand": args.expand}
            if args.memory_type:
                filters["memory_type"] = args.memory_type
            page = await c.search(args.query, namespaces=args.ns, limit=args.limit, **filters)
            return {"hits": [{"id": m.id, "ns": m.ns, "score": round(m.score or 0.0, 4), "content": m.content,
                              **({"context": m.context} if m.context else {})} for m in page.items],
                    "truncated": page.truncated}
        if args.cmd == "signal" and args.verb == "set":
            return {"version": await c.signal_set(args.ns, args.signal_key, args.value, ttl_s=args.ttl,
                                                  if_version=args.if_version)}
        if args.cmd == "signal":
            s = await c.signal_get(args.ns, args.signal_key)
            return {"key": s.key, "value": s.value, "version": s.version, "writer": s.writer}
        if args.cmd == "state" and args.verb == "publish":
            return {"agent": c.agent_id, "version": await c.state_publish(args.doc)}
        if args.cmd == "state":
            return await c.state_get(args.agent)
        if args.cmd == "members":
            return [{"id": m["id"], "state": m["state"], "endpoint": m["meta"]["endpoint"],
                     "incarnation": m["incarnation"]} for m in await c.members()]
        return await c.stats()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.cmd == "keygen":
            ident = Identity.generate()
            args.out.parent.mkdir(parents=True, exist_ok=True)
            ident.save(args.out, overwrite=args.force)
            print(json.dumps({"agent_id": ident.agent_id, "key": str(args.out)}))
            return 0
        if args.cmd == "admit":
            print(_admit(args))
            return 0
        if args.cmd == "node":
            logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
            trio.run(_serve, args)
            return 0
        out = trio.run(_client_cmd, args)
        print(json.dumps(out, indent=2, ensure_ascii=False))
        return 0
    except MnemonetError as e:
        print(json.dumps({"error": e.to_wire()}), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
