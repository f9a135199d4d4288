"""Gossip transports: the in-memory hub, and the websocket transport over real loopback sockets
(standalone and behind the node server's `/gossip` hook): delivery, bounds, eviction, reconnection."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, open_websocket_url

from crypto.identity import Identity
from node.client import MemoryClient
from node.config import NodeConfig
from node.gossip_transport import (
    GossipTransportConfig,
    InMemoryTransport,
    MemoryHub,
    WebsocketTransport,
    gossip_url,
)
from node.server import run_node
from node.service import Service

FAST = GossipTransportConfig(connect_timeout_s=0.5, message_timeout_s=0.5, reconnect_backoff_s=0.0)


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait for a condition the transport exposes no event for (counters); fails loudly on timeout."""
    with trio.fail_after(timeout_s):
        while not predicate():
            await trio.sleep(0.005)


async def receive_n(t: WebsocketTransport | InMemoryTransport, n: int, timeout_s: float = 5.0) -> list[bytes]:
    with trio.fail_after(timeout_s):
        return [await t.receive() for _ in range(n)]


async def listening(nursery: trio.Nursery, config: GossipTransportConfig = FAST) -> WebsocketTransport:
    t = WebsocketTransport(config=config)
    await nursery.start(t.run)
    await nursery.start(t.listen, "127.0.0.1", 0)
    return t


def test_gossip_url_forms() -> None:
    assert gossip_url("127.0.0.1:7000") == "ws://127.0.0.1:7000/gossip"
    assert gossip_url("ws://h:1") == "ws://h:1/gossip"
    assert gossip_url("ws://h:1/") == "ws://h:1/gossip"
    assert gossip_url("ws://h:1/custom") == "ws://h:1/custom"


# --- in-memory ------------------------------------------------------------------------------------

async def test_memory_hub_delivers_and_counts_unreachable(nursery: trio.Nursery) -> None:
    hub = MemoryHub()
    a, b = hub.transport("a"), hub.transport("b", inbound_queue_max=2)
    await nursery.start(a.run)
    b_scope = trio.CancelScope()

    async def run_b(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with b_scope:
            await b.run(task_status=task_status)

    await nursery.start(run_b)
    for i in range(3):
        await a.send("b", b"%d" % i)
    await a.send("nobody", b"x")
    assert await receive_n(b, 2) == [b"0", b"1"]
    assert b.statistics()["dropped_inbound_full"] == 1
    assert a.statistics()["dropped_unreachable"] == 1
    b_scope.cancel()  # a crash: b leaves the hub
    await wait_until(lambda: "b" not in hub.transports)
    await a.send("b", b"lost")
    assert a.statistics()["dropped_unreachable"] == 2


async def test_memory_hub_refuses_duplicate_address(nursery: trio.Nursery) -> None:
    hub = MemoryHub()
    await nursery.start(hub.transport("a").run)
    with pytest.raises(RuntimeError):
        await nursery.start(hub.transport("a").run)


# --- websocket, standalone listener -----------------------------------------------------------------

async def test_ws_frames_arrive_in_order(nursery: trio.Nursery) -> None:
    a, b = await listening(nursery), await listening(nursery)
    assert b.local_addr.startswith("ws://127.0.0.1:")
    frames = [bytes([i]) * (i + 1) for i in range(50)]
    for f in frames:
        await a.send(b.local_addr, f)
    assert await receive_n(b, 50) == frames
    s = a.statistics()
    assert (s["sent"], s["connects"], s["peers"]) == (50, 1, 1)
    assert b.statistics()["received"] == 50


async def test_ws_send_requires_run() -> None:
    with pytest.raises(RuntimeError):
        await WebsocketTransport("x").send("127.0.0.1:1", b"x")


@pytest.mark.parametrize("drop_oldest", [True, False])
async def test_ws_full_send_queue_drops_without_waiting(nursery: trio.Nursery, drop_oldest: bool) -> None:
    cfg = GossipTransportConfig(send_queue_max=10, drop_oldest=drop_oldest)
    a, b = await listening(nursery, cfg), await listening(nursery)
    for i in range(100):  # send never checkpoints: the peer task cannot drain in between
        await a.send(b.local_addr, b"%d" % i)
    expected = range(90, 100) if drop_oldest else range(10)
    assert await receive_n(b, 10) == [b"%d" % i for i in expected]
    assert a.statistics()["dropped_queue_full"] == 90


async def test_ws_unresponsive_peer_never_stalls_sender(nursery: trio.Nursery) -> None:
    """A peer that accepts TCP but never answers the handshake (a stopped process): sends return at
    once, the queue stays bounded, the connect times out and the queued frames are dropped, counted."""
    listeners = await nursery.start(trio.serve_tcp, lambda stream: trio.sleep_forever(), 0)
    port = listeners[0].socket.getsockname()[1]
    cfg = GossipTransportConfig(send_queue_max=8, connect_timeout_s=0.3, reconnect_backoff_s=10.0)
    a = WebsocketTransport("me", cfg)
    await nursery.start(a.run)
    with trio.fail_after(0.2):
        for _ in range(1000):
            await a.send(f"127.0.0.1:{port}", b"x" * 100)
    await wait_until(lambda: a.statistics()["send_failed"] == 1)  # the failure handled, not just seen
    await a.send(f"127.0.0.1:{port}", b"during backoff")
    s = a.statistics()
    assert s["dropped_queue_full"] == 1000 - 8, s
    assert s["dropped_after_failure"] == 8
    assert s["dropped_backoff"] == 1
    assert (s["sent"], s["connect_failed"]) == (0, 1)


async def test_ws_reconnects_on_next_send_after_peer_restart(nursery: trio.Nursery) -> None:
    a = await listening(nursery)
    b = WebsocketTransport(config=FAST)
    await nursery.start(b.run)
    scope = trio.CancelScope()

    async def serve_b(port: int, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await b.listen("127.0.0.1", port, task_status=task_status)

    port = await nursery.start(serve_b, 0)
    await a.send(b.local_addr, b"one")
    assert await receive_n(b, 1) == [b"one"]
    scope.cancel()  # b's listener and its connections go away
    await wait_until(lambda: b.statistics()["inbound_connections"] == 0)
    with trio.fail_after(5):  # a write may still succeed until the close or reset reaches `a`
        while a.statistics()["send_failed"] == 0:
            await a.send(b.local_addr, b"lost")
            await trio.sleep(0.005)
    scope = trio.CancelScope()
    await nursery.start(serve_b, port)  # same port: trio listeners set SO_REUSEADDR
    await a.send(b.local_addr, b"two")
    assert await receive_n(b, 1) == [b"two"]
    assert a.statistics()["connects"] == 2


async def test_ws_pool_evicts_least_recently_used(nursery: trio.Nursery) -> None:
    a = await listening(nursery, GossipTransportConfig(peers_max=2))
    b, c, d = [await listening(nursery) for _ in range(3)]
    for peer in (b, c):
        await a.send(peer.local_addr, b"hi")
        assert await receive_n(peer, 1) == [b"hi"]
    await a.send(b.local_addr, b"again")  # b is now the most recently used
    assert await receive_n(b, 1) == [b"again"]
    await a.send(d.local_addr, b"hi")  # evicts c
    assert await receive_n(d, 1) == [b"hi"]
    s = a.statistics()
    assert (s["peers"], s["evicted"], s["connects"]) == (2, 1, 3)
    await wait_until(lambda: c.statistics()["inbound_connections"] == 0)
    await a.send(c.local_addr, b"back")  # reconnects, evicting b
    assert await receive_n(c, 1) == [b"back"]
    assert a.statistics()["evicted"] == 2


async def test_ws_idle_connection_closes(nursery: trio.Nursery) -> None:
    a = await listening(nursery, GossipTransportConfig(idle_close_s=0.05))
    b = await listening(nursery)
    await a.send(b.local_addr, b"x")
    assert await receive_n(b, 1) == [b"x"]
    await wait_until(lambda: a.statistics()["peers"] == 0)
    assert a.statistics()["idle_closed"] == 1
    await wait_until(lambda: b.statistics()["inbound_connections"] == 0)


async def test_ws_inbound_bounds(nursery: trio.Nursery) -> None:
    cfg = GossipTransportConfig(frame_bytes_max=1000, inbound_queue_max=3, inbound_connections_max=1)
    b = await listening(nursery, cfg)
    async with open_websocket_url(gossip_url(b.local_addr)) as ws:
        await ws.send_message("text is not a gossip frame")
        await ws.send_message(b"y" * 1001)
        for i in range(5):
            await ws.send_message(b"%d" % i)
        await wait_until(lambda: b.statistics()["dropped_inbound_full"] == 2)
        with pytest.raises(Exception, match="503"):  # a second connection is over the limit
            async with open_websocket_url(gossip_url(b.local_addr)):
                pass
    assert await receive_n(b, 3) == [b"0", b"1", b"2"]
    s = b.statistics()
    assert (s["dropped_inbound_bad"], s["inbound_refused"], s["received"]) == (2, 1, 3)
    with pytest.raises(Exception, match="404"):
        async with open_websocket_url(b.local_addr + "/elsewhere"):
            pass


async def test_ws_oversize_frame_not_sent(nursery: trio.Nursery) -> None:
    a = await listening(nursery, GossipTransportConfig(frame_bytes_max=10))
    b = await listening(nursery)
    await a.send(b.local_addr, b"z" * 11)
    await a.send(b.local_addr, b"ok")
    assert await receive_n(b, 1) == [b"ok"]
    assert a.statistics()["dropped_too_large"] == 1


# --- the node server's /gossip hook -------------------------------------------------------------------

async def start_node_with(nursery: trio.Nursery, data: Path, handler: object) -> tuple[int, Identity]:
    operator = Identity.generate()
    svc = Service(NodeConfig(sweep_interval_s=3600.0), data, Identity.generate(),
                  operator_ids=frozenset({operator.agent_id}))
    port: int = await nursery.start(lambda task_status: run_node(svc, "127.0.0.1", 0, gossip_handler=handler,  # type: ignore[arg-type]
                                                                 task_status=task_status))
    return port, operator


async def test_node_server_hands_gossip_path_to_transport(nursery: trio.Nursery, tmp_path: Path) -> None:
    gossip = WebsocketTransport(config=FAST)
    await nursery.start(gossip.run)
    port, _ = await start_node_with(nursery, tmp_path / "n", gossip.handle_request)
    sender = await listening(nursery)
    await sender.send(f"ws://127.0.0.1:{port}", b"frame")  # the address of the node itself
    assert await receive_n(gossip, 1) == [b"frame"]
    me = Identity.generate()
    async with MemoryClient(f"ws://127.0.0.1:{port}", me) as c:  # clients still reach the request pipeline
        assert (await c.health())["status"] == "ok"


async def test_node_server_contains_gossip_handler_failure(nursery: trio.Nursery, tmp_path: Path) -> None:
    calls = []

    async def broken(request: WebSocketRequest) -> None:
        calls.append(request)
        await request.accept()
        raise ValueError("bug in the gossip handler")

    port, _ = await start_node_with(nursery, tmp_path / "n", broken)
    async with open_websocket_url(f"ws://127.0.0.1:{port}/gossip") as ws:
        with pytest.raises(ConnectionClosed), trio.fail_after(5):
            await ws.get_message()
    assert len(calls) == 1
    async with MemoryClient(f"ws://127.0.0.1:{port}", Identity.generate()) as c:
        assert (await c.health())["status"] == "ok"
