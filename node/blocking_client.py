"""`BlockingMemoryClient`: the client API for code that is not trio (scripts, threads, asyncio).

A trio loop runs in a background thread; each call blocks until its reply.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import trio

from crypto.errors import Unavailable
from crypto.identity import Identity


class BlockingMemoryClient:
    """The same API for code that is not trio (scripts, threads, asyncio apps): a trio loop runs in
    a background thread and each call blocks until its reply. Close it (or use `with`)."""

    def __init__(self, url: str, identity: Identity, **kwargs: Any) -> None:
        from node.client import MemoryClient  # here: node.client re-exports this class

        self._client = MemoryClient(url, identity, **kwargs)
        self._token: trio.lowlevel.TrioToken | None = None
        self._ready = threading.Event()
        self._stop: trio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="mnemonet-client", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        async def main() -> None:
            self._token = trio.lowlevel.current_trio_token()
            self._stop = trio.Event()
            try:
                async with self._client:
                    self._ready.set()
                    await self._stop.wait()
            except BaseException as e:
                self._error = e
                self._ready.set()

        trio.run(main)

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self._token is None or not self._thread.is_alive():
            raise Unavailable("client is closed")

        async def call() -> Any:
            return await fn(*args, **kwargs)

        return trio.from_thread.run(call, trio_token=self._token)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name in ("watch", "subscribe") or not callable(attr):
            if callable(attr):
                raise AttributeError(f"{name} streams pushes: use MemoryClient from trio code")
            return attr
        return lambda *a, **kw: self._call(attr, *a, **kw)

    def close(self) -> None:
        if self._token is not None and self._stop is not None and self._thread.is_alive():
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(timeout=10)

    def __enter__(self) -> BlockingMemoryClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
