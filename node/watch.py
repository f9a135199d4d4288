"""A client-side watch: an async iterator of pushed changes that resumes from its last seq.

Owned by a MemoryClient, which routes pushes to it and reopens it after a reconnect.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import trio

from crypto.errors import MnemonetError, error_from_wire
from node.client_types import Change

if TYPE_CHECKING:
    from node.client import MemoryClient


class Watch:
    """An open watch: iterate it for changes. Survives reconnects by resuming from `last_seq`."""

    def __init__(self, client: MemoryClient, action: str, ns: str | None, data: dict[str, Any],
                 buffer_max: int) -> None:
        self.client = client
        self.action, self.ns, self.data = action, ns, data
        self.sub_id: int | None = None
        self.last_seq = 0
        self.resume = False  # True once last_seq is meaningful: reopen with `since`
        self._stalled = False  # our buffer overflowed: the node's watch was cancelled until we drain
        self._send, self._recv = trio.open_memory_channel[Change | MnemonetError](buffer_max)

    def _deliver(self, push: dict[str, Any]) -> None:
        if "error" in push:
            self.sub_id = None
            err = error_from_wire(push["error"])
            if err.code == "resync":
                # The node dropped us (we read too slowly): resume from the last seq we processed.
                self.client._nursery_start(self._resume)
            else:  # e.g. forbidden: the grant behind this watch was revoked or expired
                self.client._watches.pop(id(self), None)
                with contextlib.suppress(trio.WouldBlock, trio.ClosedResourceError):
                    self._send.send_nowait(err)
            return
        seq = int(push.get("seq", 0))
        if seq <= self.last_seq:
            return
        try:
            self._send.send_nowait(Change(seq, push.get("event") or {}))
            self.last_seq = seq
            self.resume = True
        except trio.WouldBlock:
            # The consumer is behind: stop the node's watch (it would only pile up) and resume from
            # last_seq once the consumer has drained what it has (see __anext__).
            self._stalled = True
            self._drop_remote()

    async def _open(self) -> None:
        data = dict(self.data)
        if self.resume:
            data["since"] = self.last_seq
        res = await self.client.request(self.action, self.ns, data, _watch=self)
        if not self.resume:
            self.last_seq = int(res["seq"])
            self.resume = True

    async def _resume(self) -> None:
        try:
            await self._open()
        except MnemonetError as e:
            await self._send.send(e)

    def __aiter__(self) -> AsyncIterator[Change]:
        return self

    async def __anext__(self) -> Change:
        item = await self._recv.receive()
        if isinstance(item, MnemonetError):
            raise item
        if self._stalled and self._recv.statistics().current_buffer_used == 0:
            self._stalled = False
            self.client._nursery_start(self._resume)
        return item

    def _drop_remote(self) -> None:
        old, self.sub_id = self.sub_id, None
        if old is None:
            return
        self.client._by_sub.pop(old, None)

        async def cancel_old() -> None:
            with contextlib.suppress(MnemonetError):
                await self.client.request("watch.cancel", None, {"sub": old})

        self.client._nursery_start(cancel_old)

    async def cancel(self) -> None:
        self.client._watches.pop(id(self), None)
        if self.sub_id is not None and self.client._ws is not None:
            sub, self.sub_id = self.sub_id, None
            self.client._by_sub.pop(sub, None)
            with contextlib.suppress(MnemonetError):
                await self.client.request("watch.cancel", None, {"sub": sub})
        self._send.close()
