"""Client API for agents: `MemoryClient` (trio) and `BlockingMemoryClient` (any thread, any framework).

Signs every request with the agent's identity, multiplexes many requests on one websocket,
routes watch pushes, reconnects on demand and resumes watches from their last sequence number.
"""

from __future__ import annotations

import builtins
import itertools
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import trio
from trio_websocket import ConnectionClosed, HandshakeError, WebSocketConnection, connect_websocket_url

from crypto.envelope import sign_request
from crypto.errors import MnemonetError, TooLarge, Unavailable, UnknownAction, error_from_wire
from crypto.identity import Identity
from crypto.provenance import sign_record
from crypto.session import ClientHandshake, NodeHello, mac_request
from node.client_types import Memory, Page, Signal, StoreResult
from node.codec import decode_frame, encode_frame
from node.watch import Watch

FRAME_BYTES_MAX = 64 * 1024 * 1024  # replies can be larger than requests (search pages)


class MemoryClient:
    """Async client for one node. Use `async with MemoryClient(url, identity) as c:`.

    Requests are signed with `identity`; `grants` are presented with every request. Connection
    loss fails the requests in flight with `unavailable` (a store with an explicit id is safe to
    retry: it is idempotent) and the next request reconnects; open watches resume automatically.
    """

    def __init__(self, url: str, identity: Identity, *, binary: bool = True, timeout_s: float = 30.0,
                 grants: Iterable[str] = (), connect_timeout_s: float = 10.0, watch_buffer_max: int = 1024,
                 frame_bytes_max: int = 1024 * 1024, session: bool = True, sign_records: bool = True,
                 node_public_key: bytes | None = None) -> None:
        self.url = url
        self.identity = identity
        self.binary = binary
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.grants = list(grants)
        self.watch_buffer_max = watch_buffer_max
        # The node's limit (NodeConfig.frame_bytes_max): larger requests fail here, before sending.
        self.frame_bytes_max = frame_bytes_max
        # session=True: one signed handshake per connection, then HMAC'd requests (~50x cheaper to
        # check than a signature). node_public_key, if given, pins the node's identity.
        self.session = session
        self.sign_records = sign_records
        self.node_public_key = node_public_key
        self._auth: tuple[WebSocketConnection, int, bytes] | None = None
        self._ctr = 0
        self._ws: WebSocketConnection | None = None
        self._rids = itertools.count(1)
        self._pending: dict[int, trio.MemorySendChannel[dict[str, Any]]] = {}
        self._watches: dict[int, Watch] = {}
        self._by_sub: dict[int, Watch] = {}
        self._nursery: trio.Nursery | None = None
        self._conn_scope: trio.CancelScope | None = None
        self._connect_lock = trio.Lock()
        self.reconnects = 0
        self._connected_once = False

    @property
    def agent_id(self) -> str:
        return self.identity.agent_id

    async def __aenter__(self) -> MemoryClient:
        self._nursery_cm = trio.open_nursery()
        self._nursery = await self._nursery_cm.__aenter__()
        try:
            await self._ensure_connected()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._nursery is None:
            return
        if self._ws is not None:  # close first: the connection's reader (in our nursery) gets the reply
            with trio.move_on_after(1) as cs:
                cs.shield = True
                await self._ws.aclose()
        self._nursery.cancel_scope.cancel()
        self._fail_pending(Unavailable("client closed"))
        self._nursery = None
        await self._nursery_cm.__aexit__(None, None, None)

    def _nursery_start(self, fn: Callable[[], Any]) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(fn)

    # ---- connection ----
    async def _ensure_connected(self) -> WebSocketConnection:
        async with self._connect_lock:
            if self._ws is not None and not self._ws.closed:
                return self._ws
            assert self._nursery is not None, "use the client inside `async with`"
            try:
                with trio.fail_after(self.connect_timeout_s):
                    ws = await connect_websocket_url(self._nursery, self.url, max_message_size=FRAME_BYTES_MAX)
            except (OSError, HandshakeError, trio.TooSlowError, ConnectionClosed) as e:
                raise Unavailable(f"cannot connect to {self.url}: {type(e).__name__}: {e}") from None
            if self._connected_once:
                self.reconnects += 1
            self._connected_once = True
            self._ws = ws
            self._nursery.start_soon(self._reader, ws)
            if self.session:
                try:
                    await self._open_session(ws)
                except MnemonetError:
                    await ws.aclose()
                    self._ws = None
                    raise
            if self._watches:
                for w in list(self._watches.values()):
                    w.sub_id = None
                    self._nursery.start_soon(w._resume)
            return ws

    async def _reader(self, ws: WebSocketConnection) -> None:
        try:
            while True:
                message = await ws.get_message()
                try:
                    obj, _ = decode_frame(message, frame_bytes_max=FRAME_BYTES_MAX)
                except MnemonetError:
                    continue
                if not isinstance(obj, dict):
                    continue
                if "push" in obj:
                    w = self._by_sub.get(int(obj.get("sub") or 0))
                    if w is not None:
                        w._deliver(obj)
                    continue
                rid = obj.get("rid")
                if rid is None and len(self._pending) == 1:
                    # An error for a frame the node could not decode far enough to read its rid:
                    # with one request in flight it can only be that one's.
                    rid = next(iter(self._pending))
                ch = self._pending.pop(rid, None)  # type: ignore[arg-type]
                if ch is not None:
                    ch.send_nowait(obj)
        except ConnectionClosed:
            pass
        finally:
            if self._ws is ws:
                self._ws = None
            self._by_sub.clear()
            self._fail_pending(Unavailable("connection to the node was lost"))

    def _fail_pending(self, err: MnemonetError) -> None:
        pending, self._pending = self._pending, {}
        for ch in pending.values():
            ch.send_nowait({"ok": False, "error": err.to_wire()})

    # ---- requests ----
    async def request(self, action: str, ns: str | None = None, data: dict[str, Any] | None = None, *,
                      grants: Iterable[str] | None = None, timeout_s: float | None = None,
                      _watch: Watch | None = None) -> Any:
        """Send one authenticated request and return its `result`; raise the node's error as a typed
        exception. Inside a session the request is MAC'd, otherwise Ed25519-signed."""
        ws = await self._ensure_connected()
        rid = next(self._rids)
        grant_list = self.grants if grants is None else list(grants)
        if self._auth is not None and self._auth[0] is ws:
            _, sid, key = self._auth
            self._ctr += 1
            payload: dict[str, Any] = {"v": 1, "rid": rid, "action": action, "ns": ns, "data": data or {},
                                       "ctr": self._ctr}
            if grant_list:
                payload["grants"] = grant_list
            frame = mac_request(key, sid, payload, binary=self.binary)
        else:
            frame = self._signed(action, ns, data or {}, rid, grant_list)
        result = await self._roundtrip(ws, rid, frame, action, timeout_s)
        if _watch is not None and isinstance(result, dict):
            _watch.sub_id = int(result["sub"])
            self._by_sub[_watch.sub_id] = _watch
            self._watches[id(_watch)] = _watch
        return result

    def _signed(self, action: str, ns: str | None, data: dict[str, Any], rid: int, grants: list[str]) -> dict[str, Any]:
        return sign_request(self.identity, action=action, ns=ns, data=data, rid=rid,
                            ts_ms=time.time_ns() // 1_000_000, grants=grants, binary=self.binary)

    async def _roundtrip(self, ws: WebSocketConnection, rid: int, frame: dict[str, Any], action: str,
                         timeout_s: float | None) -> Any:
        message = encode_frame(frame, binary=self.binary)
        size = len(message) if isinstance(message, bytes) else len(message.encode("utf-8"))
        if size > self.frame_bytes_max:
            raise TooLarge(f"request of {size} bytes exceeds the frame limit of {self.frame_bytes_max}",
                           limit=self.frame_bytes_max)
        send, recv = trio.open_memory_channel[dict[str, Any]](1)
        self._pending[rid] = send
        try:
            with trio.fail_after(self.timeout_s if timeout_s is None else timeout_s):
                try:
                    await ws.send_message(message)
                except ConnectionClosed:
                    raise Unavailable("connection to the node was lost") from None
                reply = await recv.receive()
        except trio.TooSlowError:
            raise Unavailable(f"no reply to {action} within the timeout", action=action) from None
        finally:
            self._pending.pop(rid, None)
        if not reply.get("ok"):
            raise error_from_wire(reply.get("error") or {})
        return reply.get("result")

    async def _open_session(self, ws: WebSocketConnection) -> None:
        """The signed handshake that lets later requests on this connection carry a MAC instead of a
        signature (crypto/session.py). A node without sessions answers unknown_action: stay signed."""
        hs = ClientHandshake(self.identity)
        rid = next(self._rids)
        try:
            res = await self._roundtrip(ws, rid, self._signed("session.open", None, {"x25519": hs.public.hex()},
                                                               rid, []), "session.open", self.connect_timeout_s)
        except UnknownAction:
            self._auth = None
            return
        hello = NodeHello(bytes.fromhex(res["x25519"]), bytes.fromhex(res["node_pk"]), bytes.fromhex(res["node_sig"]))
        key = hs.finish(hello, self.node_public_key)
        self._auth = (ws, int(res["sid"]), key)
        self._ctr = 0

    # ---- memories ----
    async def store(self, ns: str, content: str, *, memory_type: str = "note", metadata: dict[str, Any] | None = None,
                    id: str | None = None, vector: builtins.list[float] | None = None, embedder: str | None = None,
                    ttl_s: float | None = None, sign: bool | None = None) -> StoreResult:
        """Store a memory. With `sign` (default: the client's `sign_records`) the record carries the
        author's signature over (ns, id, memory_type, content), which any reader can check."""
        data: dict[str, Any] = {"content": content, "memory_type": memory_type, "metadata": metadata or {}}
        if self.sign_records if sign is None else sign:
            id = id or uuid.uuid4().hex
            sig = sign_record(self.identity, ns, id, memory_type, content)
            data["sig"] = sig if self.binary else sig.hex()
        for k, val in (("id", id), ("vector", vector), ("embedder", embedder), ("ttl_s", ttl_s)):
            if val is not None:
                data[k] = val
        r = await self.request("memory.store", ns, data)
        return StoreResult(r["id"], bool(r["created"]), bool(r.get("duplicate", False)))

    async def get(self, ns: str, id: str, *, include_vector: bool = False) -> Memory:
        return Memory.from_wire(await self.request("memory.get", ns, {"id": id, "include_vector": include_vector}))

    async def delete(self, ns: str, id: str) -> None:
        await self.request("memory.delete", ns, {"id": id})

    async def list(self, ns: str, *, limit: int = 100, cursor: str | None = None,
                   memory_type: str | None = None) -> Page:
        data: dict[str, Any] = {"limit": limit}
        if cursor:
            data["cursor"] = cursor
        if memory_type:
            data["memory_type"] = memory_type
        r = await self.request("memory.list", ns, data)
        return Page([Memory.from_wire(m) for m in r["items"]], r["truncated"], r.get("next_cursor"))

    async def search(self, query: str | None = None, *, vector: builtins.list[float] | None = None,
                     namespaces: builtins.list[str] | None = None, ns: str | None = None, limit: int = 10,
                     **filters: Any) -> Page:
        """Semantic search. `filters`: memory_type, metadata, created_after_ms, created_before_ms,
        expand, embedder, cursor (see docs/protocol.md)."""
        data: dict[str, Any] = {"limit": limit, **filters}
        if query is not None:
            data["query"] = query
        if vector is not None:
            data["vector"] = vector
        if namespaces is not None:
            data["namespaces"] = namespaces
        r = await self.request("memory.search", ns, data)
        return Page([Memory.from_wire(m) for m in r["hits"]], r["truncated"], r.get("next_cursor"), r["exhaustive"],
                    bool(r.get("partial", False)), int(r.get("missing_partitions", 0)),
                    tuple((int(a), int(b)) for a, b in r.get("missing_ranges", ())))

    async def link(self, ns: str, from_id: str, to_id: str, *, relation: str = "related", weight: float = 1.0,
                   to_ns: str | None = None) -> None:
        data: dict[str, Any] = {"from": from_id, "to": to_id, "relation": relation, "weight": weight}
        if to_ns:
            data["to_ns"] = to_ns
        await self.request("memory.link", ns, data)

    async def related(self, ns: str, id: str, *, depth: int = 1, relation: str | None = None,
                      direction: str = "both", limit: int = 50) -> builtins.list[dict[str, Any]]:
        data: dict[str, Any] = {"id": id, "depth": depth, "direction": direction, "limit": limit}
        if relation:
            data["relation"] = relation
        return list((await self.request("memory.related", ns, data))["items"])

    # ---- signals and state ----
    async def signal_set(self, ns: str, key: str, value: Any, *, ttl_s: float | None = None,
                         if_version: int | None = None) -> int:
        data: dict[str, Any] = {"key": key, "value": value}
        if ttl_s is not None:
            data["ttl_s"] = ttl_s
        if if_version is not None:
            data["if_version"] = if_version
        return int((await self.request("signal.set", ns, data))["version"])

    async def signal_get(self, ns: str, key: str) -> Signal:
        r = await self.request("signal.get", ns, {"key": key})
        return _signal(r)

    async def signal_incr(self, ns: str, key: str, by: int = 1, *, ttl_s: float | None = None) -> Signal:
        """Add `by` (may be negative) to the counter at `key`; returns its new value and version."""
        return await self._signal_update("signal.incr", ns, {"key": key, "by": by}, ttl_s)

    async def signal_add(self, ns: str, key: str, elements: Iterable[Any], *, ttl_s: float | None = None) -> Signal:
        """Add JSON scalars to the set at `key` (add wins over a concurrent remove); value = sorted list."""
        return await self._signal_update("signal.add", ns, {"key": key, "elements": builtins.list(elements)}, ttl_s)

    async def signal_remove(self, ns: str, key: str, elements: Iterable[Any], *,
                            ttl_s: float | None = None) -> Signal:
        return await self._signal_update("signal.remove", ns, {"key": key, "elements": builtins.list(elements)},
                                         ttl_s)

    async def _signal_update(self, action: str, ns: str, data: dict[str, Any], ttl_s: float | None) -> Signal:
        if ttl_s is not None:
            data["ttl_s"] = ttl_s
        r = await self.request(action, ns, data)
        return _signal(r)

    async def signal_delete(self, ns: str, key: str, *, if_version: int | None = None) -> None:
        data: dict[str, Any] = {"key": key}
        if if_version is not None:
            data["if_version"] = if_version
        await self.request("signal.delete", ns, data)

    async def watch(self, ns: str, *, key: str | None = None, prefix: str | None = None,
                    since: int | None = None) -> Watch:
        """Watch one key or a key prefix. `since` resumes after a known seq (Resync if compacted)."""
        data: dict[str, Any] = {"key": key} if key is not None else {"prefix": prefix or ""}
        w = Watch(self, "signal.watch", ns, data, self.watch_buffer_max)
        if since is not None:
            w.last_seq, w.resume = since, True
        await w._open()
        return w

    async def state_publish(self, doc: Any) -> int:
        return int((await self.request("state.publish", self.agent_id, {"doc": doc}))["version"])

    async def state_get(self, agent: str) -> dict[str, Any]:
        return dict(await self.request("state.get", None, {"agent": agent}))

    async def subscribe(self, agent: str, *, since: int | None = None) -> Watch:
        w = Watch(self, "state.subscribe", None, {"agent": agent}, self.watch_buffer_max)
        if since is not None:
            w.last_seq, w.resume = since, True
        await w._open()
        return w

    # ---- node ----
    async def health(self) -> dict[str, Any]:
        return dict(await self.request("health"))

    async def stats(self) -> dict[str, Any]:
        return dict(await self.request("stats"))

    async def members(self) -> Sequence[dict[str, Any]]:
        """The cluster's members as this node's gossip sees them (docs/protocol.md, cluster.members)."""
        return tuple((await self.request("cluster.members"))["members"])

    async def grant_put(self, token: str) -> dict[str, Any]:
        return dict(await self.request("grant.put", None, {"grant": token}))

    async def grant_revoke(self, token: str) -> dict[str, Any]:
        return dict(await self.request("grant.revoke", None, {"revocation": token}))


# At the end: node/blocking_client.py imports MemoryClient from this (by now complete) module.
from node.blocking_client import BlockingMemoryClient  # noqa: E402

__all__ = ["BlockingMemoryClient", "Memory", "MemoryClient", "Page", "Signal", "StoreResult", "Watch"]


def _signal(r: dict[str, Any]) -> Signal:
    return Signal(r["key"], r["value"], r["version"], r["writer"], r.get("expires_ms"), r.get("kind", "register"))
