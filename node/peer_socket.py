"""An outgoing websocket to a peer node (gossip and replica links): bounded connect, bounded polite
close, and a failed connect that never waits on a silent peer. Owns that lifecycle only; it must not
queue, frame or retry (the links do)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import trio
from trio_websocket import WebSocketConnection, connect_websocket_url


class ConnectFailed(Exception):
    """The TCP connect or the websocket handshake failed or timed out."""


@contextlib.asynccontextmanager
async def peer_socket(url: str, *, connect_timeout_s: float, close_timeout_s: float,
                      message_bytes_max: int) -> AsyncIterator[WebSocketConnection]:
    # Our own nursery and timeout rather than open_websocket_url's: when its connect_timeout fires
    # during the handshake, its nursery still waits for the reader task of a silent peer (forever).
    async with trio.open_nursery() as nursery:
        try:
            with trio.fail_after(connect_timeout_s):
                ws = await connect_websocket_url(nursery, url, message_queue_size=1,
                                                 max_message_size=message_bytes_max)
        except Exception as e:
            nursery.cancel_scope.cancel()
            raise ConnectFailed(f"{url}: {type(e).__name__}") from e
        try:
            yield ws
        finally:
            # Polite but bounded; when cancelled (eviction, shutdown) the close is abrupt.
            with trio.move_on_after(close_timeout_s), contextlib.suppress(Exception):
                await ws.aclose()
            nursery.cancel_scope.cancel()
