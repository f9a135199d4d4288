"""Node-to-node links for replication: batches of replica messages in signed frames over websockets
(`/replica` path of each node's server), one outgoing connection per peer, every queue bounded.

Owns connections, batching, signing/verification (node/replica_codec.py) and the member check on
inbound frames; it must not interpret messages (node/replication.py does) or retry them: the
replication cores retry on their own timers, so a dropped message costs time, never correctness.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest

from crypto.errors import MnemonetError
from crypto.identity import Identity, PublicKeyCache
from node.isolation import Isolation
from node.peer_socket import ConnectFailed, peer_socket
from node.replica_codec import FRAME_OVERHEAD_BYTES, decode_frame, encode_frame, message_bytes

log = logging.getLogger("mnemonet.peer_links")

REPLICA_PATH = "/replica"
"""Websocket path on a node's server that carries replica frames instead of client requests."""


@dataclass(frozen=True, slots=True)
class PeerLinkConfig:
    queue_max: int = 4096
    """Messages queued per peer. A coordinator at a few thousand writes/s fills this in about a second
    of a dead peer; beyond it new messages are dropped (counted) and the cores' retries take over."""
    batch_messages_max: int = 256
    """Messages per frame (the codec allows 4096): one Ed25519 signature (~20 us) and one verify (~120 us) per frame instead
    of per message is what makes per-peer authentication affordable."""
    frame_bytes_max: int = 8 * 1024 * 1024
    """Largest frame sent or accepted (a rebalance page is bounded well below this)."""
    skew_ms: int = 60_000
    """Frames stamped outside now ± this are refused (`expired`): bounds how old a replayed frame can be."""
    connect_timeout_s: float = 2.0
    """TCP + websocket handshake; a SIGSTOPped peer accepts TCP but never answers it."""
    close_timeout_s: float = 0.5
    """Polite websocket close; a dead peer must not hold the link task long."""
    message_timeout_s: float = 5.0
    """One frame's send; past it the link is treated as failed and its queue dropped."""
    reconnect_backoff_s: float = 0.25
    """After a failure, messages to that peer are dropped for this long, then the next send reconnects."""
    idle_close_s: float = 60.0
    """An outgoing connection with nothing to send for this long is closed."""
    inbound_connections_max: int = 256
    """Concurrent inbound replica connections; more are refused at the handshake (HTTP 503)."""
    key_cache_size: int = 1024


def replica_url(addr: str) -> str:
    """A member's gossip address ("ws://host:port/gossip" or "host:port") -> its replica endpoint."""
    url = addr if "://" in addr else f"ws://{addr}"
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{REPLICA_PATH}"


class _Peer:
    __slots__ = ("node_id", "queue", "retry_at", "wakeup", "running")

    def __init__(self, node_id: str, queue_max: int) -> None:
        self.node_id = node_id
        self.queue: deque[object] = deque()
        self.retry_at = float("-inf")
        self.wakeup = trio.Event()
        self.running = False


Deliver = Callable[[str, list[object]], None]


class PeerLinks:
    """Send replica messages to members by node id; hand inbound batches to `deliver(src, msgs)`.

    `resolve(node_id)` gives a member's address (None: unknown); `is_member(node_id)` gates inbound
    frames: only nodes of our network's membership may write to our replicas.
    """

    def __init__(self, identity: Identity, network: str, resolve: Callable[[str], str | None],
                 is_member: Callable[[str], bool], deliver: Deliver, config: PeerLinkConfig | None = None,
                 wall_ms: Callable[[], int] | None = None) -> None:
        self.identity, self.network = identity, network
        self.config = config or PeerLinkConfig()
        self._resolve, self._is_member, self._deliver = resolve, is_member, deliver
        self._wall_ms = wall_ms or (lambda: time.time_ns() // 1_000_000)
        self._keys = PublicKeyCache(self.config.key_cache_size)
        self._peers: dict[str, _Peer] = {}
        self._nursery: trio.Nursery | None = None
        self._inbound = 0
        self.isolation: Isolation | None = None
        """Set by the node for fault tests (node/isolation.py): while on, frames are dropped both ways."""
        self.stats = dict.fromkeys((
            "messages_sent", "frames_sent", "bytes_sent", "dropped_queue_full", "dropped_unknown_peer",
            "dropped_after_failure", "dropped_backoff", "connects", "connect_failed", "send_failed",
            "frames_received", "messages_received", "bytes_received", "refused_frames", "refused_non_member",
            "inbound_refused"), 0)

    @property
    def me(self) -> str:
        return self.identity.agent_id

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    def send(self, to: str, msg: object) -> None:
        """Queue `msg` for node `to`; never waits. Messages to ourselves go straight to `deliver`
        (which only queues them), so they take the same path as remote ones."""
        if to == self.me:
            self._deliver(to, [msg])
            return
        if self.isolation is not None and self.isolation.drop_sent():
            return
        peer = self._peers.get(to)
        if peer is None:
            peer = self._peers[to] = _Peer(to, self.config.queue_max)
        if trio.current_time() < peer.retry_at:
            self.stats["dropped_backoff"] += 1
            return
        if len(peer.queue) >= self.config.queue_max:
            self.stats["dropped_queue_full"] += 1
            return
        peer.queue.append(msg)
        peer.wakeup.set()
        if not peer.running and self._nursery is not None:
            peer.running = True
            self._nursery.start_soon(self._run_peer, peer)

    def queued(self) -> int:
        return sum(len(p.queue) for p in self._peers.values())

    def statistics(self) -> dict[str, int]:
        return {**self.stats, "peers": len(self._peers), "queued": self.queued()}

    # --- outbound ---
    async def _run_peer(self, peer: _Peer) -> None:
        try:
            while peer.queue:
                addr = self._resolve(peer.node_id)
                if addr is None:
                    self.stats["dropped_unknown_peer"] += len(peer.queue)
                    peer.queue.clear()
                    break
                try:
                    await self._connect_and_drain(peer, addr)
                except* Exception as group:  # a peer's failure stays with that peer
                    self.stats["send_failed"] += 1
                    self.stats["dropped_after_failure"] += len(peer.queue)
                    peer.queue.clear()
                    peer.retry_at = trio.current_time() + self.config.reconnect_backoff_s
                    log.debug("replica link to %s failed: %r", peer.node_id[:12], group.exceptions)
        finally:
            peer.running = False

    async def _connect_and_drain(self, peer: _Peer, addr: str) -> None:
        cfg = self.config
        try:
            async with peer_socket(replica_url(addr), connect_timeout_s=cfg.connect_timeout_s, close_timeout_s=cfg.close_timeout_s,
                                   message_bytes_max=cfg.frame_bytes_max) as ws:
                self.stats["connects"] += 1
                await self._drain(peer, ws)
        except* ConnectFailed:
            self.stats["connect_failed"] += 1
            raise

    async def _drain(self, peer: _Peer, ws: WebSocketConnection) -> None:
        cfg = self.config
        while True:
            while peer.queue:
                batch: list[object] = []
                size = FRAME_OVERHEAD_BYTES
                while peer.queue and len(batch) < cfg.batch_messages_max:
                    b = message_bytes(peer.queue[0])
                    if batch and size + b > cfg.frame_bytes_max:
                        break
                    batch.append(peer.queue.popleft())
                    size += b
                frame = encode_frame(self.identity, self.network, self._wall_ms(), batch)
                with trio.fail_after(cfg.message_timeout_s):
                    await ws.send_message(frame)
                self.stats["frames_sent"] += 1
                self.stats["messages_sent"] += len(batch)
                self.stats["bytes_sent"] += len(frame)
            peer.wakeup = trio.Event()
            with trio.move_on_after(cfg.idle_close_s):
                await peer.wakeup.wait()
            if not peer.queue:
                return

    # --- inbound ---
    async def handle_request(self, request: WebSocketRequest) -> None:
        """Serve one inbound replica connection (the node server hands `/replica` requests here)."""
        if self._inbound >= self.config.inbound_connections_max:
            self.stats["inbound_refused"] += 1
            await request.reject(503, body=b"too many replica connections")
            return
        ws = await request.accept()
        self._inbound += 1
        try:
            while True:
                data = await ws.get_message()
                if isinstance(data, str):
                    self.stats["refused_frames"] += 1
                    continue
                self.receive_frame(data)
        except ConnectionClosed:
            pass
        finally:
            self._inbound -= 1

    def receive_frame(self, data: bytes) -> None:
        """Verify one frame and deliver its messages; refuse (count, drop) anything else."""
        if self.isolation is not None and self.isolation.drop_received():
            return
        try:
            src, msgs = decode_frame(data, network=self.network, now_ms=self._wall_ms(), skew_ms=self.config.skew_ms,
                                     keys=self._keys, bytes_max=self.config.frame_bytes_max)
        except MnemonetError as e:
            self.stats["refused_frames"] += 1
            log.debug("refused replica frame: %s", e)
            return
        if src == self.me or not self._is_member(src):
            self.stats["refused_non_member"] += 1
            return
        self.stats["frames_received"] += 1
        self.stats["messages_received"] += len(msgs)
        self.stats["bytes_received"] += len(data)
        self._deliver(src, msgs)
