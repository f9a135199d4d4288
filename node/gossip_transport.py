"""Moves opaque gossip frames between nodes: the Transport interface, the websocket transport and
an in-memory one for tests. It must not decode frames or know SWIM; every queue here is bounded.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    serve_websocket,
)

from node.isolation import Isolation
from node.peer_socket import ConnectFailed, peer_socket

log = logging.getLogger("mnemonet.gossip_transport")

GOSSIP_PATH = "/gossip"
"""Websocket path on a node's server that carries gossip frames instead of client requests."""


class Transport(Protocol):
    """What the gossip runner needs from a network. The contract is weak on purpose: frames may be
    dropped, delayed or reordered, never corrupted; `send` returns at once (it only enqueues)."""

    local_addr: str

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the transport's background tasks until cancelled; `send` works once started."""
        ...

    async def send(self, addr: str, frame: bytes) -> None: ...

    async def receive(self) -> bytes:
        """The next inbound frame (waits for one)."""
        ...

    def statistics(self) -> dict[str, int]: ...


@dataclass(frozen=True, slots=True)
class GossipTransportConfig:
    """Bounds and timeouts of the websocket transport (node/config.py is another helper's file; this
    can move into NodeConfig later)."""

    peers_max: int = 128
    """Outgoing connections kept open (LRU). SWIM talks to a few random members per period, so a
    large network churns through the pool; 128 sockets per node is cheap and covers clusters of 100+."""
    send_queue_max: int = 64
    """Frames queued per peer. At ~10 frames/s to any one peer, 64 is seconds of backlog: beyond it
    the frames are stale for SWIM anyway."""
    drop_oldest: bool = True
    """On a full per-peer queue drop the oldest frame (newer gossip supersedes older); False drops
    the new frame instead. Either way the drop is counted and `send` never waits."""
    connect_timeout_s: float = 2.0
    """TCP + websocket handshake. A SIGSTOPped peer accepts TCP but never answers the handshake."""
    message_timeout_s: float = 2.0
    """One frame's send; past it the peer is treated as failed (its TCP window is full)."""
    disconnect_timeout_s: float = 0.5
    """Closing handshake; a dead peer should not hold the peer task long."""
    reconnect_backoff_s: float = 0.2
    """After a failure, frames to that peer are dropped (counted) for this long, then the next send
    reconnects. Short, so a restarted peer is reachable within a probe period (1 s)."""
    idle_close_s: float = 60.0
    """An outgoing connection with nothing to send for this long is closed."""
    frame_bytes_max: int = 1024 * 1024
    """Largest frame sent or accepted: a push-pull of 1000 members with metadata fits."""
    inbound_queue_max: int = 1024
    """Frames received but not yet taken by `receive`; beyond it new frames are dropped (counted):
    a node that is behind gains nothing from a longer backlog of stale gossip."""
    inbound_connections_max: int = 512
    """Concurrent inbound gossip connections; more are refused at the handshake (HTTP 503)."""


def gossip_url(addr: str) -> str:
    """"host:port" or "ws://host:port" (no path) -> the peer's gossip endpoint URL."""
    url = addr if "://" in addr else f"ws://{addr}"
    parts = urlsplit(url)
    if parts.path in ("", "/"):
        url = f"{parts.scheme}://{parts.netloc}{GOSSIP_PATH}"
    return url


class _Peer:
    """One outgoing link: its bounded queue and the task that drains it."""

    __slots__ = ("addr", "queue", "scope", "retry_at", "_wakeup")

    def __init__(self, addr: str, queue_max: int) -> None:
        self.addr = addr
        self.queue: deque[bytes] = deque(maxlen=queue_max)
        self.scope = trio.CancelScope()
        self.retry_at = float("-inf")
        self._wakeup = trio.Event()

    def wake(self) -> None:
        self._wakeup.set()

    async def wait_frames(self, idle_s: float) -> bool:
        """True once a frame is queued; False if none came within idle_s."""
        with trio.move_on_after(idle_s):
            while not self.queue:
                self._wakeup = trio.Event()
                await self._wakeup.wait()
            return True
        return False


class WebsocketTransport:
    """Gossip over websockets: one outgoing connection per peer (bounded LRU pool), frames inbound
    on the `/gossip` path of a websocket server (the node's, or `listen` standalone)."""

    def __init__(self, local_addr: str = "", config: GossipTransportConfig | None = None) -> None:
        self.local_addr = local_addr
        self.config = config or GossipTransportConfig()
        self._peers: OrderedDict[str, _Peer] = OrderedDict()
        self._nursery: trio.Nursery | None = None
        self._inbound_send, self._inbound_recv = trio.open_memory_channel[bytes](self.config.inbound_queue_max)
        self._inbound_connections = 0
        self.isolation: Isolation | None = None
        """Set by the node for fault tests (node/isolation.py): while on, frames are dropped both ways."""
        self._stats = dict.fromkeys((
            "sent", "send_failed", "dropped_queue_full", "dropped_backoff", "dropped_too_large",
            "dropped_evicted", "dropped_after_failure", "connects", "connect_failed", "evicted", "idle_closed",
            "received", "dropped_inbound_full", "dropped_inbound_bad", "inbound_refused"), 0)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            self._peers.clear()

    async def send(self, addr: str, frame: bytes) -> None:
        if self._nursery is None:
            raise RuntimeError("transport is not running (start run() in a nursery first)")
        if len(frame) > self.config.frame_bytes_max:
            self._stats["dropped_too_large"] += 1
            return
        if self.isolation is not None and self.isolation.drop_sent():
            return
        peer = self._peers.get(addr)
        if peer is None:
            peer = self._add_peer(addr)
        else:
            self._peers.move_to_end(addr)
        if trio.current_time() < peer.retry_at:
            self._stats["dropped_backoff"] += 1
            return
        if len(peer.queue) == peer.queue.maxlen:
            self._stats["dropped_queue_full"] += 1
            if not self.config.drop_oldest:
                return
        peer.queue.append(frame)  # a full deque drops its oldest
        peer.wake()

    async def receive(self) -> bytes:
        return await self._inbound_recv.receive()

    def statistics(self) -> dict[str, int]:
        return {**self._stats, "peers": len(self._peers), "inbound_connections": self._inbound_connections,
                "inbound_queued": self._inbound_recv.statistics().current_buffer_used}

    def _add_peer(self, addr: str) -> _Peer:
        assert self._nursery is not None
        if len(self._peers) >= self.config.peers_max:
            _, victim = self._peers.popitem(last=False)
            self._stats["evicted"] += 1
            self._stats["dropped_evicted"] += len(victim.queue)
            victim.queue.clear()
            victim.scope.cancel()
        peer = _Peer(addr, self.config.send_queue_max)
        self._peers[addr] = peer
        self._nursery.start_soon(self._run_peer, peer)
        return peer

    async def _run_peer(self, peer: _Peer) -> None:
        with peer.scope:
            try:
                while await peer.wait_frames(self.config.idle_close_s):
                    try:
                        await self._connect_and_drain(peer)
                    except* Exception as group:  # a peer's failure stays with that peer, never the node
                        self._stats["send_failed"] += 1
                        self._stats["dropped_after_failure"] += len(peer.queue)
                        peer.queue.clear()
                        peer.retry_at = trio.current_time() + self.config.reconnect_backoff_s
                        log.debug("gossip link to %s failed: %r", peer.addr, group.exceptions)
                    else:
                        break  # idle: close and forget the peer
                self._stats["idle_closed"] += 1
            finally:
                if self._peers.get(peer.addr) is peer:
                    del self._peers[peer.addr]

    async def _connect_and_drain(self, peer: _Peer) -> None:
        cfg = self.config
        try:
            async with peer_socket(gossip_url(peer.addr), connect_timeout_s=cfg.connect_timeout_s,
                                   close_timeout_s=cfg.disconnect_timeout_s, message_bytes_max=cfg.frame_bytes_max) as ws:
                self._stats["connects"] += 1
                await self._drain(peer, ws)
        except* ConnectFailed:
            self._stats["connect_failed"] += 1
            raise

    async def _drain(self, peer: _Peer, ws: WebSocketConnection) -> None:
        while True:
            while peer.queue:
                frame = peer.queue.popleft()
                with trio.fail_after(self.config.message_timeout_s):
                    await ws.send_message(frame)
                self._stats["sent"] += 1
            if not await peer.wait_frames(self.config.idle_close_s):
                return

    # --- inbound ---

    async def handle_request(self, request: WebSocketRequest) -> None:
        """Serve one inbound gossip connection (the node server hands `/gossip` requests here)."""
        if self._inbound_connections >= self.config.inbound_connections_max:
            self._stats["inbound_refused"] += 1
            await request.reject(503, body=b"too many gossip connections")
            return
        ws = await request.accept()
        self._inbound_connections += 1
        try:
            while True:
                message = await ws.get_message()
                if isinstance(message, str) or len(message) > self.config.frame_bytes_max:
                    self._stats["dropped_inbound_bad"] += 1
                    continue
                self._deliver(message)
        except ConnectionClosed:
            pass
        finally:
            self._inbound_connections -= 1

    def _deliver(self, frame: bytes) -> None:
        if self.isolation is not None and self.isolation.drop_received():
            return
        try:
            self._inbound_send.send_nowait(frame)
            self._stats["received"] += 1
        except trio.WouldBlock:
            self._stats["dropped_inbound_full"] += 1

    async def listen(self, host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """A standalone gossip server (for processes without a node server); reports the bound port.
        Sets local_addr to ws://host:port if it was empty."""

        async def accept(request: WebSocketRequest) -> None:
            if request.path.split("?", 1)[0] != GOSSIP_PATH:
                await request.reject(404)
                return
            await self.handle_request(request)

        async def serve(task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED) -> None:
            # Frames a little over the limit are dropped and counted; far over it, the connection closes.
            await serve_websocket(accept, host, port, ssl_context=None, task_status=task_status,
                                  max_message_size=4 * self.config.frame_bytes_max)

        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve)
            bound: int = server.port
            if not self.local_addr:
                self.local_addr = f"ws://{host}:{bound}"
            task_status.started(bound)


class MemoryHub:
    """An in-process network for trio tests: addresses map to InMemoryTransports; delivery is
    immediate (add delay and loss with node/faults.py)."""

    def __init__(self) -> None:
        self.transports: dict[str, InMemoryTransport] = {}

    def transport(self, addr: str, inbound_queue_max: int = 1024) -> InMemoryTransport:
        return InMemoryTransport(self, addr, inbound_queue_max)


class InMemoryTransport:
    """A Transport on a MemoryHub. Reachable while `run` is running; cancelling `run` is a crash."""

    def __init__(self, hub: MemoryHub, addr: str, inbound_queue_max: int = 1024) -> None:
        self.hub = hub
        self.local_addr = addr
        self._inbound_send, self._inbound_recv = trio.open_memory_channel[bytes](inbound_queue_max)
        self._stats = dict.fromkeys(("sent", "dropped_unreachable", "received", "dropped_inbound_full"), 0)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self.local_addr in self.hub.transports:
            raise RuntimeError(f"address {self.local_addr!r} is already in use on this hub")
        self.hub.transports[self.local_addr] = self
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            del self.hub.transports[self.local_addr]

    async def send(self, addr: str, frame: bytes) -> None:
        dest = self.hub.transports.get(addr)
        if dest is None:
            self._stats["dropped_unreachable"] += 1
            return
        self._stats["sent"] += 1
        try:
            dest._inbound_send.send_nowait(frame)
            dest._stats["received"] += 1
        except trio.WouldBlock:
            dest._stats["dropped_inbound_full"] += 1

    async def receive(self) -> bytes:
        return await self._inbound_recv.receive()

    def statistics(self) -> dict[str, int]:
        return {**self._stats, "inbound_queued": self._inbound_recv.statistics().current_buffer_used}
