"""The websocket shell around Service: accepts connections, moves frames, runs requests concurrently.

Only bytes and tasks live here: every decision is made by Service. One connection's bad input or
slowness costs that connection only.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

from crypto.errors import MnemonetError
from node.codec import decode_frame, encode_frame
from node.gossip_transport import GOSSIP_PATH
from node.service import Service
from node.session import Session

log = logging.getLogger("mnemonet.server")

GossipHandler = Callable[[WebSocketRequest], Awaitable[None]]


class NodeServer:
    def __init__(self, service: Service, gossip_handler: GossipHandler | None = None,
                 peer_handlers: Mapping[str, GossipHandler] | None = None) -> None:
        self.service = service
        self.gossip_handler = gossip_handler
        # Paths served to peers, not clients (gossip, replica links): each applies its own limits.
        self.peer_handlers: dict[str, GossipHandler] = dict(peer_handlers or {})
        if gossip_handler is not None:
            self.peer_handlers[GOSSIP_PATH] = gossip_handler
        self.connections = 0
        self.port = 0

    async def serve(self, host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen until cancelled; `task_status.started(port)` reports the bound port (port=0 picks one)."""
        cfg = self.service.config

        async def started_port(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
            await serve_websocket(self._accept, host, port, ssl_context=None,
                                  max_message_size=cfg.message_bytes_hard_max, task_status=task_status)

        async with trio.open_nursery() as nursery:
            server = await nursery.start(started_port)
            self.port = server.port
            task_status.started(self.port)

    async def _accept(self, request: WebSocketRequest) -> None:
        peer_handler = self.peer_handlers.get(request.path.split("?", 1)[0])
        if peer_handler is not None:
            try:
                await peer_handler(request)
            except Exception:
                log.exception("peer connection handler for %s failed", request.path[:64])
            return
        if self.connections >= self.service.config.connections_max:
            await request.reject(503, body=b"too many connections")
            return
        ws = await request.accept()
        self.connections += 1
        try:
            await self._connection(ws)
        except Exception:  # one connection's failure must never reach the listener (it would stop the node)
            log.exception("connection handler failed")
        finally:
            self.connections -= 1

    async def _connection(self, ws: WebSocketConnection) -> None:
        svc = self.service
        cfg = svc.config
        session = Session(svc.hub, cfg.push_queue_max)
        inflight = trio.Semaphore(cfg.inflight_per_connection_max)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._sender, ws, session, nursery.cancel_scope)
                try:
                    while True:
                        message = await ws.get_message()
                        binary = not isinstance(message, str)
                        try:
                            frame, binary = decode_frame(message, frame_bytes_max=cfg.frame_bytes_max)
                        except MnemonetError as e:
                            await session.reply(svc.error_reply(None, e), binary)
                            continue
                        await inflight.acquire()
                        nursery.start_soon(self._request, frame, binary, session, inflight)
                except ConnectionClosed:
                    pass
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            session.close()

    async def _request(self, frame: Any, binary: bool, session: Session, inflight: trio.Semaphore) -> None:
        try:
            reply, then = await self.service.handle_frame(frame, binary, session)
            await session.reply(reply, binary)
            if then is not None:
                then()
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass
        finally:
            inflight.release()

    async def _sender(self, ws: WebSocketConnection, session: Session, connection: trio.CancelScope) -> None:
        try:
            async for obj, binary in session.receive:
                await ws.send_message(_encode_safely(obj, binary))
                for notice, nbin in session.take_notices():
                    await ws.send_message(_encode_safely(notice, nbin))
        except ConnectionClosed:
            pass
        finally:
            # Without a sender nothing drains the reply queue: requests blocked on it and the reader
            # blocked on the in-flight limit would wait forever. End the whole connection.
            connection.cancel()


def _encode_safely(obj: Any, binary: bool) -> bytes | str:
    """Encode a reply; if it cannot be (a bug let a non-encodable value through), answer `internal`
    for that request instead of failing the connection or the node."""
    try:
        message = encode_frame(obj, binary=binary)
        if isinstance(message, str):
            message.encode("utf-8")  # what the websocket layer will do; fail here, not there
        return message
    except (TypeError, ValueError, OverflowError) as e:
        log.error("reply not encodable (%s); sent internal instead", type(e).__name__)
        rid = obj.get("rid") if isinstance(obj, dict) else None
        fallback = {"rid": rid if isinstance(rid, int) else None, "ok": False,
                    "error": {"code": "internal", "message": "the reply could not be encoded"}}
        return encode_frame(fallback, binary=binary)


async def run_node(service: Service, host: str, port: int, *, gossip_handler: GossipHandler | None = None,
                   peer_handlers: Mapping[str, GossipHandler] | None = None,
                   task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Start storage and the websocket server; report the bound port; run until cancelled.
    With a gossip_handler, connections to the `/gossip` path go to it instead of the request pipeline."""
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        server = NodeServer(service, gossip_handler, peer_handlers)
        bound = await nursery.start(server.serve, host, port)
        log.info("node %s listening on ws://%s:%d", service.identity.agent_id, host, bound)
        task_status.started(bound)
