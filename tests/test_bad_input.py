"""Hostile and broken input: each gets its exact error code on a connection that stays usable,
while a well-behaved client on another connection is served throughout."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
import trio
import trio.testing
from trio_websocket import open_websocket_url

from crypto.envelope import REQUEST_DOMAIN, sign_payload, sign_request
from crypto.errors import InvalidArgument, MnemonetError
from crypto.grants import make_grant
from crypto.identity import Identity
from node.config import NodeConfig
from tests.conftest import RunningNode, start_node


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def payload(ident: Identity, action: str, ns: str | None, data: dict[str, Any], **over: Any) -> dict[str, Any]:
    p = {"v": 1, "rid": 7, "action": action, "ns": ns, "data": data, "ts": now_ms(),
         "nonce": __import__("os").urandom(16).hex(), "pk": ident.public_key_hex}
    p.update(over)
    return p


def req(ident: Identity, action: str, ns: str | None, data: dict[str, Any], *, binary: bool = True,
        **kw: Any) -> bytes | str:
    frame = sign_request(ident, action=action, ns=ns, data=data, rid=7, ts_ms=kw.pop("ts_ms", now_ms()),
                         binary=binary, **kw)
    return msgpack.packb(frame) if binary else json.dumps(frame)


def ascii_json_request(ident: Identity, action: str, ns: str | None, data: dict[str, Any], **over: Any) -> str:
    """A text request whose payload JSON uses \\u escapes (so it may carry lone surrogates)."""
    text = json.dumps(payload(ident, action, ns, data, **over))
    sig = ident.sign(REQUEST_DOMAIN + text.encode("ascii"))
    return json.dumps({"p": text, "s": base64.b64encode(sig).decode()})


def tamper_sig(ident: Identity) -> bytes:
    frame = sign_request(ident, action="health", ns=None, data={}, rid=7, ts_ms=now_ms())
    sig = bytearray(frame["s"])
    sig[5] ^= 0x01
    frame["s"] = bytes(sig)
    return msgpack.packb(frame)  # type: ignore[no-any-return]


def forged_pk(alice: Identity, mallory: Identity) -> bytes:
    # Mallory signs, but claims Alice's public key.
    p = payload(alice, "memory.store", alice.agent_id, {"content": "forged"})
    frame = sign_payload(mallory, p)
    return msgpack.packb(frame)  # type: ignore[no-any-return]


def claimed_other_id(alice: Identity, bob: Identity) -> bytes:
    return msgpack.packb(sign_payload(alice, payload(alice, "health", None, {}, aid=bob.agent_id)))  # type: ignore[no-any-return]


def cases(alice: Identity, bob: Identity, frame_max: int) -> list[tuple[str, Callable[[], bytes | str], str]]:
    replayed = req(alice, "health", None, {})
    ok = msgpack.packb(sign_request(alice, action="health", ns=None, data={}, rid=7, ts_ms=now_ms()))
    past = now_ms() - 10_000_000
    expired_grant = make_grant(bob, grantee=alice.agent_id, ns=bob.agent_id, actions=["read"],
                               exp_ms=now_ms() - 1000, now_ms=past)
    return [
        ("garbage bytes", lambda: b"\xc1\xff\x00garbage", "bad_frame"),
        ("garbage text", lambda: "{not json", "bad_frame"),
        ("truncated msgpack", lambda: ok[: len(ok) // 2], "bad_frame"),
        ("frame not a map", lambda: msgpack.packb([1, 2, 3]), "bad_frame"),
        ("payload not msgpack", lambda: msgpack.packb({"p": b"\xc1", "s": b"x" * 64}), "bad_frame"),
        ("bad version", lambda: msgpack.packb(sign_payload(alice, payload(alice, "health", None, {}, v=2))), "bad_frame"),
        ("10 MiB frame", lambda: b"\x00" * (10 * 1024 * 1024), "too_large"),
        ("just over the limit", lambda: msgpack.packb({"p": b"x" * frame_max, "s": b""}), "too_large"),
        ("wrong type", lambda: req(alice, "memory.store", alice.agent_id, {"content": 123}), "invalid_argument"),
        ("wrong type json", lambda: req(alice, "memory.store", alice.agent_id, {"content": ["x"]}, binary=False),
         "invalid_argument"),
        ("data not a map", lambda: msgpack.packb(sign_payload(alice, payload(alice, "health", None, [1]))), "bad_frame"),
        ("unknown action", lambda: req(alice, "memory.explode", alice.agent_id, {}), "unknown_action"),
        ("wrong dimension", lambda: req(alice, "memory.store", alice.agent_id, {"content": "x", "vector": [1.0] * 3}),
         "dimension_mismatch"),
        ("tampered signature", lambda: tamper_sig(alice), "bad_signature"),
        ("forged public key", lambda: forged_pk(alice, bob), "bad_signature"),
        ("claimed another id", lambda: claimed_other_id(alice, bob), "bad_signature"),
        ("stale timestamp", lambda: req(alice, "health", None, {}, ts_ms=now_ms() - 3_600_000), "expired"),
        ("first use", lambda: replayed, None),
        ("replay", lambda: replayed, "replay"),
        ("expired grant", lambda: req(alice, "memory.get", bob.agent_id, {"id": "x"}, grants=[expired_grant]), "expired"),
        ("garbage grant", lambda: req(alice, "memory.get", bob.agent_id, {"id": "x"}, grants=["mg1.x.y"]), "bad_signature"),
        ("other agent's namespace", lambda: req(alice, "memory.store", bob.agent_id, {"content": "x"}), "forbidden"),
        ("missing namespace", lambda: req(alice, "memory.store", None, {"content": "x"}), "invalid_argument"),
        ("lone surrogate in content", lambda: ascii_json_request(alice, "memory.store", alice.agent_id,
                                                                 {"content": "a\ud800b"}), "invalid_argument"),
        ("lone surrogate in metadata", lambda: ascii_json_request(alice, "memory.store", alice.agent_id,
                                                                  {"content": "fine", "metadata": {"\udfff": 1}}),
         "invalid_argument"),
        ("lone surrogate in ns", lambda: ascii_json_request(alice, "memory.get", "x\ud800", {"id": "a"}),
         "invalid_argument"),
        ("lone surrogate in rid, unsigned", lambda: json.dumps({"p": '{"rid":"\\ud800"}', "s": "x"}), "bad_frame"),
        ("lone surrogate in action", lambda: ascii_json_request(alice, "memory.\udc00", alice.agent_id, {}), "bad_frame"),
        ("lone surrogate in search filter", lambda: ascii_json_request(
            alice, "memory.search", alice.agent_id, {"query": "q", "metadata": {"k": "\ud800"}}), "invalid_argument"),
        ("non-hex session key", lambda: req(alice, "session.open", None, {"x25519": "zz" * 32}), "invalid_argument"),
        ("signed record without id", lambda: req(alice, "memory.store", alice.agent_id,
                                                 {"id": None, "content": "c", "sig": "00" * 64}), "invalid_argument"),
        ("lone surrogate in nonce", lambda: ascii_json_request(alice, "health", None, {}, nonce="abcdefgh\ud800"),
         "bad_frame"),
        ("over-long ns", lambda: req(alice, "memory.get", "n" * 10_000, {"id": "a"}), "too_large"),
        ("malformed list cursor", lambda: req(alice, "memory.list", alice.agent_id,
                                              {"cursor": "WyJhIix7fV0"}), "invalid_argument"),
        ("bad limit", lambda: req(alice, "memory.list", alice.agent_id, {"limit": 10**9}), "invalid_argument"),
        ("NaN vector", lambda: req(alice, "memory.store", alice.agent_id, {"content": "x", "vector": [float("nan")] * 384}),
         "invalid_argument"),
    ]


async def good_client_loop(node: RunningNode, stop: trio.Event, counts: dict[str, int]) -> None:
    me = Identity.generate()
    async with node.client(me) as c:
        i = 0
        while not stop.is_set():
            r = await c.store(me.agent_id, f"steady note {i}")
            assert (await c.get(me.agent_id, r.id)).content == f"steady note {i}"
            counts["ok"] += 1
            i += 1
            await trio.sleep(0)


async def test_bad_input_gets_exact_codes_and_others_are_served(nursery: trio.Nursery, tmp_path: Any) -> None:
    node = await start_node(nursery, tmp_path / "n", NodeConfig(sweep_interval_s=3600.0))
    alice, bob = Identity.generate(), Identity.generate()
    stop = trio.Event()
    counts = {"ok": 0}
    nursery.start_soon(good_client_loop, node, stop, counts)
    async with open_websocket_url(node.url, max_message_size=64 * 1024 * 1024) as ws:
        for name, make, code in cases(alice, bob, node.service.config.frame_bytes_max):
            msg = make()
            await ws.send_message(msg)
            with trio.fail_after(10):
                raw = await ws.get_message()
            reply = msgpack.unpackb(raw) if isinstance(raw, bytes) else json.loads(raw)
            assert isinstance(raw, bytes) == isinstance(msg, bytes), name  # reply in the request's form
            if code is None:
                assert reply["ok"], (name, reply)
                continue
            assert not reply["ok"] and reply["error"]["code"] == code, (name, reply)
            if code not in ("bad_frame", "too_large"):
                assert reply["rid"] == 7, name
        # The same connection still serves a good request after all that.
        await ws.send_message(req(alice, "health", None, {}))
        assert msgpack.unpackb(await ws.get_message())["ok"]
    stop.set()
    assert counts["ok"] > 0
    stats = node.service.errors
    assert stats["bad_frame"] >= 5 and stats["bad_signature"] >= 3


async def test_hard_message_limit_closes_only_that_connection(nursery: trio.Nursery, tmp_path: Any) -> None:
    node = await start_node(nursery, tmp_path / "n", NodeConfig(frame_bytes_max=1024, message_bytes_hard_max=64 * 1024))
    me = Identity.generate()
    async with node.client(me) as good:
        async with open_websocket_url(node.url) as ws:
            await ws.send_message(b"\x00" * 100_000)
            with pytest.raises(Exception):  # noqa: B017 - the peer closes: the exact exception is trio-websocket's
                with trio.fail_after(10):
                    await ws.get_message()
        assert (await good.health())["status"] == "ok"


def test_error_codes_are_stable() -> None:
    from crypto.errors import ERROR_CODES

    assert {"bad_frame", "too_large", "bad_signature", "replay", "expired", "forbidden", "not_found",
            "invalid_argument", "dimension_mismatch", "unavailable", "internal"} <= set(ERROR_CODES)
    assert all(issubclass(c, MnemonetError) for c in ERROR_CODES.values())





async def test_session_frames_bad_mac_replay_unknown(node: RunningNode) -> None:
    from crypto.session import ClientHandshake, NodeHello, mac_request

    alice = Identity.generate()

    async def call(ws: Any, msg: bytes) -> dict[str, Any]:
        await ws.send_message(msg)
        with trio.fail_after(10):
            return msgpack.unpackb(await ws.get_message())  # type: ignore[no-any-return]

    def mframe(key: bytes, sid: int, ctr: int, action: str = "health") -> bytes:
        return msgpack.packb(mac_request(key, sid, {"v": 1, "rid": ctr, "action": action, "ns": None, "data": {},
                                                    "ctr": ctr}, binary=True))  # type: ignore[no-any-return]

    async with open_websocket_url(node.url) as ws, open_websocket_url(node.url) as ws2:
        assert (await call(ws, mframe(b"k" * 32, 1, 1)))["error"]["code"] == "bad_signature"  # no session yet
        hs = ClientHandshake(alice)
        res = (await call(ws, req(alice, "session.open", None, {"x25519": hs.public.hex()})))["result"]
        key = hs.finish(NodeHello(bytes.fromhex(res["x25519"]), bytes.fromhex(res["node_pk"]),
                                  bytes.fromhex(res["node_sig"])))
        sid = res["sid"]
        good = mframe(key, sid, 1)
        assert (await call(ws, good))["ok"]
        assert (await call(ws, good))["error"]["code"] == "replay"
        assert (await call(ws, mframe(b"x" * 32, sid, 2)))["error"]["code"] == "bad_signature"
        # A session belongs to its connection: the same frame elsewhere is refused.
        assert (await call(ws2, mframe(key, sid, 3)))["error"]["code"] == "bad_signature"
        # A session cannot open another session.
        assert (await call(ws, mframe(key, sid, 4, "session.open")))["error"]["code"] == "invalid_argument"
        assert (await call(ws, mframe(key, sid, 5)))["ok"]


def _count_tasks(suffix: str) -> int:
    stack = [trio.lowlevel.current_root_task()]
    n = 0
    while stack:
        t = stack.pop()
        n += t.name.endswith(suffix)
        for nursery in t.child_nurseries:
            stack.extend(nursery.child_tasks)
    return n


async def test_flood_then_abort_leaves_no_tasks_behind(node: RunningNode) -> None:
    import socket

    from trio_websocket import connect_websocket_url

    alice = Identity.generate()
    async with node.client(alice) as c:
        await c.signal_set(alice.agent_id, "big", "x" * 60_000)
    frames = [req(alice, "signal.get", alice.agent_id, {"key": "big"}) for _ in range(1200)]
    async with trio.open_nursery() as cn:
        ws = await connect_websocket_url(cn, node.url)
        with trio.move_on_after(10):  # a bound, not a synchronisation: sends stop when buffers fill
            for f in frames:
                await ws.send_message(f)
        # Abort the TCP connection with no close handshake, never having read a reply.
        sock = ws._stream.socket  # type: ignore[attr-defined]
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
        cn.cancel_scope.cancel()
    with trio.fail_after(30):
        while _count_tasks("._request") or _count_tasks("._sender"):
            await trio.testing.wait_all_tasks_blocked(cushion=0.001)  # the node wakes every 10 ms (lag monitor)
            if _count_tasks("._request") or _count_tasks("._sender"):
                await trio.lowlevel.checkpoint()
    async with node.client(alice) as c:
        assert (await c.health())["status"] == "ok"


async def test_values_every_reader_can_decode(node: RunningNode) -> None:
    """A JSON writer must not be able to store what a msgpack reader cannot receive."""
    alice = Identity.generate()
    async with node.client(alice, binary=False) as j, node.client(alice) as m:
        deep: list[object] = []
        for _ in range(70):
            deep = [deep]
        for value in ({"n": 10**30}, {"n": -(2**64)}, deep):
            with pytest.raises(InvalidArgument):
                await j.signal_set(alice.agent_id, "k", value)
            with pytest.raises(InvalidArgument):
                await j.store(alice.agent_id, "text", metadata={"v": value})
        await j.signal_set(alice.agent_id, "k", {"n": 2**63 - 1})
        assert (await m.signal_get(alice.agent_id, "k")).value == {"n": 2**63 - 1}
