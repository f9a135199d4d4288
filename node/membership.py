"""The trio shell around this node's SWIM member: frames in and out through a Transport, `tick` at
the core's deadlines, signing and verification, a durable boot incarnation, and the current view.

Every protocol decision is the core's (gossip/swim.py); this module only moves bytes and time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import trio

from crypto.errors import MnemonetError
from crypto.identity import Identity, PublicKeyCache
from gossip.admission import AdmissionCheck
from gossip.codec import decode_frame, encode_frame
from gossip.config import GossipConfig
from gossip.messages import Effect, MemberEvent, MemberView, Meta, Send, State
from gossip.swim import SwimNode
from node.gossip_transport import Transport

log = logging.getLogger("mnemonet.membership")

EPOCH_2020_S = 1_577_836_800  # incarnation floor: whole seconds since 2020-01-01 UTC at boot
SUBSCRIBER_QUEUE_MAX = 1024  # member events buffered per subscriber; a slower one is told to resync
INCARNATION_FILE = "gossip.incarnation"
KEY_CACHE_SIZE = 1024  # parsed member keys kept (one per member; a verify per frame either way)


def boot_incarnation(data_dir: Path | None, wall_s: float) -> int:
    """An incarnation above every one this node id used before: max(last persisted + 1, seconds since
    2020). The file covers refutations that pushed the last life's incarnation past the clock; the
    clock covers a lost data directory. Persisted (fsync + rename) before the node says anything."""
    last = -1
    path = None if data_dir is None else data_dir / INCARNATION_FILE
    if path is not None and path.exists():
        with contextlib.suppress(ValueError, OSError):
            last = int(path.read_text().strip())
    inc = max(last + 1, int(wall_s) - EPOCH_2020_S)
    if path is not None:
        persist_incarnation(path, inc)
    return inc


def persist_incarnation(path: Path, incarnation: int) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        f.write(f"{incarnation}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Membership:
    """Runs one SWIM member until cancelled. `members()` is the current view; `subscribe()` streams
    member events (joined/suspect/alive/dead/left/updated) for placement and clients.

    Admission: with `network_key` (the network's raw Ed25519 public key), only members presenting a
    grant of that key for their id (gossip/admission.py) are admitted, judged by the wall clock;
    `admission_token` is this node's own grant (checked here: an invalid or expired one raises).
    Renew it before it expires with `update_admission`.
    """

    def __init__(
        self, identity: Identity, addr: str, meta: Meta, transport: Transport, *,
        config: GossipConfig | None = None, network: str = "default", seeds: Sequence[str] = (),
        data_dir: Path | None = None, rng_seed: int | None = None, wall_clock: Callable[[], float] = time.time,
        frame_bytes_max: int = 4 * 1024 * 1024, admission_token: str = "", network_key: bytes | None = None,
    ) -> None:
        self.identity = identity
        self.transport = transport
        self.config = config or GossipConfig.lan()
        self.network = network
        self.seeds = tuple(s for s in seeds if s != addr)
        self._data_dir = data_dir
        self._frame_bytes_max = frame_bytes_max
        self._keys = PublicKeyCache(KEY_CACHE_SIZE)
        self._rng = random.Random(rng_seed)
        self._wall_clock = wall_clock
        self.admission: AdmissionCheck | None = None
        admit = None
        if network_key is not None:
            check = self.admission = AdmissionCheck(network_key, network)
            check.verify(admission_token, identity.agent_id, self._wall_ms())  # refuse to start unadmitted

            def admit(node_id: str, meta: Meta) -> bool:
                return check.admits(node_id, meta.admission, int(wall_clock() * 1000))
        if admission_token:
            meta = dataclasses.replace(meta, admission=admission_token)
        self._incarnation_path = None if data_dir is None else data_dir / INCARNATION_FILE
        self._persisted = boot_incarnation(data_dir, wall_clock())
        self.swim = SwimNode(identity.agent_id, addr, meta, self.config, self._rng, trio.current_time(),
                             incarnation=self._persisted, network=network, admit=admit)
        self._rearm = trio.Event()
        self._subscribers: list[trio.MemorySendChannel[MemberEvent]] = []
        self.dropped: Counter[str] = Counter()
        self.frames_in = 0
        self.frames_out = 0
        self._started = trio.Event()

    # ---- view ----
    @property
    def node_id(self) -> str:
        return self.swim.id

    def members(self) -> list[MemberView]:
        return self.swim.members()

    def alive(self) -> list[MemberView]:
        return [m for m in self.swim.members() if m.state in (State.ALIVE, State.SUSPECT)]

    def subscribe(self) -> trio.MemoryReceiveChannel[MemberEvent]:
        """Member events from now on. If the subscriber falls SUBSCRIBER_QUEUE_MAX events behind, its
        channel is closed (it ends): subscribe again and re-read `members()`."""
        send, recv = trio.open_memory_channel[MemberEvent](SUBSCRIBER_QUEUE_MAX)
        self._subscribers.append(send)
        return recv

    def statistics(self) -> dict[str, Any]:
        out = {"swim": self.swim.statistics(), "transport": self.transport.statistics(),
               "frames_in": self.frames_in, "frames_out": self.frames_out, "dropped": dict(self.dropped),
               "incarnation": self.swim.incarnation, "members": len(self.alive())}
        if self.admission is not None:
            out["admission"] = self.admission.statistics()
        return out

    # ---- control ----
    async def update_meta(self, meta: Meta) -> None:
        """New metadata; a `meta` without an admission token keeps the current one."""
        if not meta.admission:
            meta = dataclasses.replace(meta, admission=self.swim.meta.admission)
        await self._emit(self.swim.update_meta(meta, trio.current_time()))

    async def update_admission(self, token: str) -> None:
        """Present a renewed admission grant (checked first: an invalid one raises and changes nothing)."""
        if self.admission is not None:
            self.admission.verify(token, self.node_id, self._wall_ms())
        await self._emit(self.swim.update_meta(dataclasses.replace(self.swim.meta, admission=token),
                                               trio.current_time()))

    async def leave(self, linger_s: float | None = None) -> None:
        """Announce a graceful leave, then keep gossiping for `linger_s` (default: three gossip
        rounds) so the announcement spreads before the caller stops the node."""
        await self._emit(self.swim.leave(trio.current_time()))
        self._rearm.set()
        await trio.sleep(3 * self.config.gossip_interval_s if linger_s is None else linger_s)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.transport.run)
                nursery.start_soon(self._receive_loop)
                nursery.start_soon(self._tick_loop)
                if self.seeds:
                    await self._emit(self.swim.join(self.seeds, trio.current_time()))
                self._started.set()
                task_status.started()
        finally:
            for s in self._subscribers:
                s.close()

    def _wall_ms(self) -> int:
        return int(self._wall_clock() * 1000)

    # ---- loops ----
    async def _receive_loop(self) -> None:
        while True:
            frame = await self.transport.receive()
            self.frames_in += 1
            try:
                packet = decode_frame(frame, network=self.network, frame_bytes_max=self._frame_bytes_max,
                                      cache=self._keys)
            except MnemonetError as e:  # foreign network, forged or malformed: dropped and counted
                self.dropped[e.code] += 1
                continue
            await self._emit(self.swim.handle(packet, trio.current_time()))
            self._rearm.set()  # the core may have set an earlier deadline

    async def _tick_loop(self) -> None:
        while True:
            self._rearm = trio.Event()
            with trio.move_on_at(self.swim.next_deadline()):
                await self._rearm.wait()
            await self._emit(self.swim.tick(trio.current_time()))

    async def _emit(self, effects: list[Effect]) -> None:
        for e in effects:
            if isinstance(e, Send):
                try:
                    frame = encode_frame(self.identity, self.network, self.swim.addr, e.msg)
                except (ValueError, OverflowError) as exc:  # a core bug must not stop the node
                    log.error("gossip message not encodable: %s", exc)
                    continue
                self.frames_out += 1
                await self.transport.send(e.to_addr, frame)  # enqueues; never waits on the peer
            elif isinstance(e, MemberEvent):
                self._publish(e)
        if self._incarnation_path is not None and self.swim.incarnation > self._persisted:
            # A refutation raised our incarnation: persist it so a restart starts above it.
            self._persisted = self.swim.incarnation
            persist_incarnation(self._incarnation_path, self._persisted)

    def _publish(self, event: MemberEvent) -> None:
        for s in list(self._subscribers):
            try:
                s.send_nowait(event)
            except trio.WouldBlock:  # fell behind: end its stream rather than skip events silently
                self.dropped["subscriber_behind"] += 1
                s.close()
                self._subscribers.remove(s)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.remove(s)
