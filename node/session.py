"""Per-connection state: the ordered outgoing queue (replies and pushes) and open watches.

Replies wait for queue space (back-pressure on that one client); pushes never wait: when the
queue is full the watch is dropped with a `resync` notice. Knows nothing of websockets.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import trio

from crypto.session import SessionState
from node.changefeed import ChangeHub, Subscription

SESSIONS_PER_CONNECTION_MAX = 16

Outgoing = tuple[dict[str, Any], bool]  # (frame object, binary form?)


class Session:
    def __init__(self, hub: ChangeHub, queue_max: int) -> None:
        self.hub = hub
        self.send, self.receive = trio.open_memory_channel[Outgoing](queue_max)
        self.subscriptions: dict[int, Subscription] = {}
        # Overflow notices bypass the bound: at most one per subscription, so still bounded.
        self.notices: deque[Outgoing] = deque()
        self.auth: dict[int, SessionState] = {}  # authenticated sessions opened on this connection
        self._next_sid = 1

    def open_auth(self, key: bytes, agent_public_key: bytes) -> SessionState:
        if len(self.auth) >= SESSIONS_PER_CONNECTION_MAX:
            self.auth.pop(next(iter(self.auth)))  # the oldest gives way: clients need few
        state = SessionState(self._next_sid, key, agent_public_key)
        self.auth[state.sid] = state
        self._next_sid += 1
        return state

    async def reply(self, obj: dict[str, Any], binary: bool) -> None:
        await self.send.send((obj, binary))

    def pusher(self, binary: bool) -> Any:
        def deliver(push: dict[str, Any]) -> bool:
            if "error" in push:  # the hub ended this watch: it no longer counts against the cap
                self.subscriptions.pop(int(push.get("sub", 0)), None)
            try:
                self.send.send_nowait((push, binary))
            except trio.WouldBlock:
                if "error" in push:
                    # The queue is full, so the sender is busy and will pick this up next round.
                    self.notices.append((push, binary))
                    return True
                return False
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                return True  # connection is going away; close() removes the watch
            return True

        return deliver

    def add(self, sub: Subscription) -> None:
        self.subscriptions[sub.sub_id] = sub

    def remove(self, sub_id: int) -> bool:
        sub = self.subscriptions.pop(sub_id, None)
        if sub is None:
            return False
        self.hub.close(sub)
        return True

    def take_notices(self) -> list[Outgoing]:
        out = list(self.notices)
        self.notices.clear()
        return out

    def close(self) -> None:
        for sub in list(self.subscriptions.values()):
            self.hub.close(sub)
        self.subscriptions.clear()
        self.send.close()
