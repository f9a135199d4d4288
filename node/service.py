"""The memory service of one node: verified requests in, replies and pushes out.

Owns start-up (storage, indexes, clock), the request pipeline (decode -> verify -> permission ->
action) and background upkeep (sealing, sweeping). Transport-agnostic: node/server.py feeds it
decoded frames and a Session; tests can drive it without sockets.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from crypto.envelope import Request, RequestVerifier, UnverifiedRequest, decode_request
from crypto.errors import BadSignature, Internal, InvalidArgument, MnemonetError, Unavailable, UnknownAction
from crypto.grants import Grant, parse_grant, parse_revocation
from crypto.identity import Identity
from crypto.session import decode_session_request, is_session_frame
from node import memory_store, signal_store
from node.changefeed import ChangeHub
from node.config import NodeConfig
from node.database import Database
from node.effects import Change, DigestDelta, IndexAdd, IndexRemove
from node.embed_batcher import EmbedBatcher
from node.embedder import Embedder, make_embedder
from node.permissions import AccessPolicy
from node.session import Session
from node.validate import NS_CHARS_MAX, check_text
from node.vector_spaces import VectorSpaces
from ring.hlc import HybridClock

if TYPE_CHECKING:
    from node.cluster_ops import ClusterOps
    from node.membership import Membership
    from node.replica_store import ReplicaStore
    from node.scatter_search import ScatterSearch

log = logging.getLogger("mnemonet.node")

GRANT_CACHE_MAX = 4096  # parsed grant tokens kept (insertion-ordered eviction)

Handler = Callable[["Service", Request, Session], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class ActionSpec:
    name: str
    handler: Handler
    action_class: str  # "read", "write", "admin", or "self" (checked by the handler itself)
    needs_ns: bool


ACTIONS: dict[str, ActionSpec] = {}


@dataclass(frozen=True, slots=True)
class Deferred:
    """A handler result plus work to run once the reply is queued (e.g. start a watch's pushes)."""

    result: Any
    then: Callable[[], None]


def action(name: str, action_class: str, *, needs_ns: bool = True) -> Callable[[Handler], Handler]:
    """Register an action handler (used by node/*_actions.py)."""

    def register(fn: Handler) -> Handler:
        if name in ACTIONS:
            raise RuntimeError(f"action {name} registered twice")
        ACTIONS[name] = ActionSpec(name, fn, action_class, needs_ns)
        return fn

    return register


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class Service:
    """One node's memory service. Create, then `await nursery.start(service.run)`."""

    def __init__(
        self, config: NodeConfig, data_dir: Path, identity: Identity, *,
        operator_ids: frozenset[str] = frozenset(), wall_ms: Callable[[], int] = wall_clock_ms,
        embedder: Embedder | None = None,
    ) -> None:
        # Importing the action modules registers their handlers.
        from node import admin_actions, cluster_actions, memory_actions, signal_actions  # noqa: F401

        self.config = config
        self.data_dir = data_dir
        self.identity = identity
        self.wall_ms = wall_ms
        self.membership: Membership | None = None  # set by the process when gossip runs
        # Cluster mode (node/cluster.py sets these): client actions go through the replication
        # coordinator and search scatters; None on a single node (the master mode).
        self.cluster: ClusterOps | None = None
        self.scatter: ScatterSearch | None = None
        self.replica_store: ReplicaStore | None = None
        data_dir.mkdir(parents=True, exist_ok=True)
        self.db = Database(data_dir / "mnemonet.sqlite3", fsync=config.fsync, write_batch_max=config.write_batch_max)
        self.db.on_commit = self.apply_effects
        self.policy = AccessPolicy(operator_ids | {identity.agent_id}, config.public_namespace)
        self.verifier = RequestVerifier(config.envelope)
        self.embedder = embedder or make_embedder(config.embedder, config.dim)
        self.embed_batcher = EmbedBatcher(self.embedder)
        self.clock = HybridClock(last=self._restore_clock())
        self.hub = ChangeHub(buffered_max=config.push_queue_max)
        self.spaces = VectorSpaces(data_dir / "index", config.dim)
        self.started_s = time.monotonic()
        self.lag_max_ms = 0.0
        self.lag_window_max_ms = 0.0  # since the last `stats` call
        self.requests: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self._grant_cache: dict[str, Grant] = {}
        self.verify_limiter = trio.CapacityLimiter(config.verify_threads)
        self._load_grants()
        self.spaces.open_all(self.db.writer_sync())

    # ---- start-up ----
    def _restore_clock(self) -> int:
        # Never hand out a version at or below one already stored, even if the wall clock stepped back.
        conn = self.db.writer_sync()
        last = 0
        for sql in ("SELECT MAX(created) FROM memories", "SELECT MAX(deleted_hlc) FROM memories",
                    "SELECT MAX(version) FROM signals", "SELECT MAX(version) FROM states"):
            v = conn.execute(sql).fetchone()[0]
            last = max(last, int(v or 0))
        return last

    def _load_grants(self) -> None:
        conn = self.db.writer_sync()
        for (token,) in conn.execute("SELECT token FROM revocations"):
            self.policy.revoke(parse_revocation(token))
        for (token,) in conn.execute("SELECT token FROM grants WHERE exp_ms > ?", (self.wall_ms(),)):
            self.policy.add_grant(parse_grant(token))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.db.run)
                nursery.start_soon(self._seal_loop)
                nursery.start_soon(self._sweep_loop)
                nursery.start_soon(self._lag_loop)
                task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self.spaces.save_all, self.db.writer_sync())
                await self.db.aclose()

    async def _seal_loop(self) -> None:
        while True:
            await trio.sleep(self.config.seal_check_interval_s)
            try:
                await self.spaces.seal_if_needed()
            except OSError as e:  # e.g. disk full writing a segment: searches still work from the buffer
                log.warning("index seal failed: %s", e)

    async def _lag_loop(self) -> None:
        """Event-loop lag: how late a 10 ms timer fires. Anything that blocks the loop (a long
        search, an index swap, a GC pause) shows here; every request waiting then was delayed as much."""
        period_s = 0.01
        while True:
            t0 = trio.current_time()
            await trio.sleep(period_s)
            lag_ms = (trio.current_time() - t0 - period_s) * 1000
            self.lag_max_ms = max(self.lag_max_ms, lag_ms)
            self.lag_window_max_ms = max(self.lag_window_max_ms, lag_ms)

    async def _sweep_loop(self) -> None:
        while True:
            await trio.sleep(self.config.sweep_interval_s)
            try:
                await self.sweep()
            except MnemonetError as e:  # storage trouble: try again next round, keep serving
                log.warning("sweep failed: %s", e)

    async def sweep(self) -> dict[str, int]:
        """Physically retire expired memories and signals; compact the change log."""
        now = self.wall_ms()
        hlc = self.clock.now(now)
        mem = await self.db.write(lambda c: memory_store.sweep_expired(c, now, hlc))
        sig = await self.db.write(lambda c: signal_store.signal_sweep(c, now, hlc))
        chg = await self.db.write(lambda c: signal_store.compact_changes(c, self.config.changes_retained))
        self.policy.forget_expired(now)
        return {"memories": mem, "signals": sig, "changes": chg}

    # ---- commit effects (trio thread, commit order) ----
    def apply_effects(self, effects: list[Any]) -> None:
        adds: list[IndexAdd] = []
        for e in effects:
            if isinstance(e, IndexAdd):
                adds.append(e)  # consecutive adds go to the index as one batch
                continue
            if adds:
                self.spaces.add_batch(adds)
                adds = []
            if isinstance(e, IndexRemove):
                self.spaces.remove(e.space, e.rowid)
            elif isinstance(e, DigestDelta):
                if self.replica_store is not None:
                    self.replica_store.on_commit([e])
            elif isinstance(e, Change):
                self.hub.publish(e)
            elif isinstance(e, Grant):
                self.policy.add_grant(e)
        if adds:
            self.spaces.add_batch(adds)

    # ---- the request pipeline ----
    async def handle_frame(
        self, frame: Any, binary: bool, session: Session
    ) -> tuple[dict[str, Any], Callable[[], None] | None]:
        """Verify and run one decoded request frame. Never raises: returns the reply, and work to
        run right after the reply is queued (or None)."""
        rid: Any = None
        try:
            if is_session_frame(frame):
                su = decode_session_request(frame, binary=binary, config=self.config.envelope)
                rid = su.rid
                state = session.auth.get(su.sid)
                if state is None:
                    raise BadSignature("unknown session on this connection: open one with session.open",
                                       sid=su.sid)
                req = state.verify(su, self.wall_ms())
            else:
                unverified: UnverifiedRequest = decode_request(frame, binary=binary, config=self.config.envelope)
                rid = unverified.rid
                req = self.verifier.verify(unverified, self.wall_ms())
            result = await self.dispatch(req, session)
            self.requests[req.action] += 1
            if isinstance(result, Deferred):
                return {"rid": rid, "ok": True, "result": result.result}, result.then
            return {"rid": rid, "ok": True, "result": result}, None
        except MnemonetError as e:
            if rid is None:
                rid = e.details.pop("rid", None)
            return self.error_reply(rid, e), None
        except Exception as e:  # a bug must cost one request, not the connection or the node
            log.exception("internal error in request %r", rid)
            return self.error_reply(rid, Internal(f"{type(e).__name__}")), None

    def error_reply(self, rid: Any, e: MnemonetError) -> dict[str, Any]:
        self.errors[e.code] += 1
        return {"rid": rid, "ok": False, "error": e.to_wire()}

    async def dispatch(self, req: Request, session: Session) -> Any:
        spec = ACTIONS.get(req.action)
        if spec is None:
            shown = req.action[:64]
            raise UnknownAction(f"unknown action {shown!r}", action=shown)
        if spec.needs_ns and not req.ns:
            raise InvalidArgument(f"{req.action} needs a namespace (`ns`)")
        if req.ns is not None:
            check_text(req.ns, "ns", NS_CHARS_MAX)
        if spec.action_class in ("read", "write", "admin") and spec.needs_ns:
            self.check(req, req.ns or "", spec.action_class)
        elif spec.action_class == "admin":
            self.check(req, "", "admin")
        return await spec.handler(self, req, session)

    def grants_of(self, req: Request) -> list[Grant]:
        """Parse presented grants, caching by token: a token string has exactly one parse, and each
        parse costs a signature check (~150 us) that repeat presenters should not pay again."""
        out = []
        for token in req.grants:
            g = self._grant_cache.get(token)
            if g is None:
                try:
                    g = parse_grant(token)
                except MnemonetError:
                    raise BadSignature("a presented grant does not verify") from None
                if len(self._grant_cache) >= GRANT_CACHE_MAX:
                    self._grant_cache.pop(next(iter(self._grant_cache)))
                self._grant_cache[token] = g
            out.append(g)
        return out

    def check(self, req: Request, ns: str, action_class: str, action: str | None = None) -> None:
        self.policy.check(req.agent_id, ns, action or req.action, action_class, self.grants_of(req), self.wall_ms())

    def single_node_only(self, what: str) -> None:
        """Actions not (yet) replicated refuse clearly in cluster mode instead of answering from one replica."""
        if self.cluster is not None:
            raise Unavailable(f"{what} is not available in cluster mode yet (it reads one node's data only)",
                              action=what)

    def stamp(self) -> int:
        return self.clock.now(self.wall_ms())
