"""The replication shell of a storage node in cluster mode: runs the pure cores (Coordinator, HintQueue,
AntiEntropy, Rebalancer) on trio time, carries their effects out on SQLite and the peer links, and
follows the membership view (placement changes, liveness).

Owns message routing, the durable lane (every write a core asks for is committed before any message
that depends on it leaves), placement updates and the background loops (ticks, tombstone GC); it must
not decide quorums, merges or placement (ring/ does) nor know client actions (node/cluster_ops.py does).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from crypto.errors import MnemonetError
from crypto.identity import Identity
from gossip.messages import MemberView
from node.database import Applied
from node.peer_links import PeerLinkConfig, PeerLinks
from node.replica_store import COLLECT_BATCH_MAX, ReplicaStore
from node.storage_view import StorageSet, storage_set
from ring.antientropy import AntiEntropy
from ring.config import ReplicationConfig
from ring.coordinator import Coordinator
from ring.handoff import HintQueue
from ring.hlc import hlc_pack
from ring.messages import (
    AntiEntropyMessage,
    ApplyRecords,
    Done,
    DropPartitions,
    GetRecord,
    GetReply,
    HintDropped,
    HintStored,
    PutAck,
    PutRecord,
    RbConfirm,
    RebalanceMessage,
    Send,
    SessionEnded,
    is_handoff_req,
)
from ring.partition import Placement, StorageNode, diff
from ring.quorum import Consistency
from ring.records import Kind, Record
from ring.replicaview import co_replicas, shared_partitions

log = logging.getLogger("mnemonet.replication")

RING_META_KEY = "ring_members"


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """The node-side knobs of cluster mode (the protocol's are ReplicationConfig's)."""

    replication: ReplicationConfig = ReplicationConfig(rebalance_transfers_in_flight_max=64)
    """Pulls in flight raised from 8 to 64: a node joining a 7-node ring gains ~55k of the 131k
    partitions, most of them small, and a pull costs one round trip."""
    links: PeerLinkConfig = PeerLinkConfig()
    dead_grace_s: float = 1800.0
    """A dead member keeps its place in the ring this long (hints and stand-ins cover it): a restart or
    a short partition moves no data; a node gone for longer has its partitions re-replicated."""
    settle_s: float = 1.0
    """Membership changes are applied to the placement at most this often (and this long after the
    first of a burst): a forming cluster does not re-plan its moves once per joining member."""
    lane_batch_max: int = 512
    """Lane items (message batches, effect lists) committed in one SQLite transaction."""
    lane_queue_max: int = 2048
    """Lane items waiting to commit; beyond it the inbox stops taking batches (and, once the inbox is
    full, drops them: the senders' retries take over) until the lane catches up."""
    inbox_max: int = 8192
    """Inbound message batches waiting to be routed; beyond it batches are dropped (counted) and the
    senders' retries take over."""
    gc_interval_s: float = 600.0
    """How often tombstones older than `replication.tombstone_grace_s` are collected."""
    bootstrap_s: float = 0.0
    """For a founding member of a new cluster (Cassandra's auto_bootstrap: false): for this long after
    start, placement changes are adopted without pulling anything (there is nothing to pull yet), so
    forming a ring costs no transfers. 0: a node without a persisted ring joins as a newcomer and pulls
    every partition it gains from the members that held it before it came."""


class _LocalView:
    """ring.replicaview.LocalView over the SQLite store and the node's current placement."""

    def __init__(self, store: ReplicaStore, me: str) -> None:
        self.store, self.me = store, me
        self.placement: Placement | None = None

    @property
    def partition_bits(self) -> int:
        return self.store.partition_bits

    def digests(self, partitions: Sequence[int]) -> Any:
        return self.store.digests(partitions)

    def summaries(self, partition: int, after: Any, limit: int) -> Any:
        return self.store.summaries(partition, after, limit)

    def records(self, items: Sequence[Any]) -> list[Record]:
        return self.store.records(items)

    def records_after(self, partition: int, after: Any, limit: int) -> list[Record]:
        return self.store.records_after(partition, after, limit)

    def co_replicas(self) -> Sequence[str]:
        return co_replicas(self.placement, self.me)

    def shared_partitions(self, peer: str) -> Sequence[int]:
        return shared_partitions(self.placement, self.me, peer)


class Replication:
    """One storage node's replication. Create, `await nursery.start(r.run)`, then `write`/`read`."""

    def __init__(self, identity: Identity, store: ReplicaStore, members: Callable[[], list[MemberView]], *,
                 network: str = "default", config: ClusterConfig | None = None, rng_seed: int | None = None,
                 wall_ms: Callable[[], int] | None = None) -> None:
        self.identity, self.store = identity, store
        self.me = identity.agent_id
        self.config = config or ClusterConfig()
        rc = self.config.replication
        self._members = members
        self._rng = random.Random(rng_seed)
        self.links = PeerLinks(identity, network, self._addr_of, self._is_member, self.deliver, self.config.links,
                               wall_ms=wall_ms)
        self._wall_ms = self.links._wall_ms
        now = trio.current_time()
        self.coord = Coordinator(self.me, rc, self._rng)
        self.hints = HintQueue(rc)
        hints, next_id = store.load_hints()
        self.hints.restore(hints, next_id)
        self.view = _LocalView(store, self.me)
        self.ae = AntiEntropy(self.me, self.view, rc, self._rng, now)
        from ring.rebalance import Rebalancer
        self.rb = Rebalancer(self.me, store, rc, self._rng, now)
        self.placement: Placement | None = None
        self.settled: Placement | None = None  # the placement the data is known to be laid out by
        self._persisted: Placement | None = None
        self.alive: frozenset[str] = frozenset({self.me})
        self._storage: StorageSet | None = None
        self._dropped: set[int] = set()
        self._drop_epoch: Counter[int] = Counter()
        self._waiting: dict[int, list[Any]] = {}  # client_req -> [event, Done | None]
        self._next_client_req = 0
        self._rearm = trio.Event()
        self._view_changed = trio.Event()
        self._inbox_send, self._inbox_recv = trio.open_memory_channel[tuple[str, list[object]]](self.config.inbox_max)
        self._lane_send, self._lane_recv = trio.open_memory_channel[Any](math.inf)  # bounded by the inbox loop
        self._lane_room = trio.Event()
        self.handlers: dict[type, Callable[[str, Any], None]] = {}  # extra message types (e.g. search)
        self.stats: Counter[str] = Counter()
        self._ready = trio.Event()
        self._restored: list[str] = []
        self._bootstrap_until = now + self.config.bootstrap_s
        self._started = now

    # ---- public ----
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._restored = await self._load_ring()
        async with trio.open_nursery() as nursery:
            await nursery.start(self.links.run)
            nursery.start_soon(self._inbox_loop)
            nursery.start_soon(self._lane_loop)
            nursery.start_soon(self._tick_loop)
            nursery.start_soon(self._view_loop)
            nursery.start_soon(self._gc_loop)
            task_status.started()

    async def wait_ready(self) -> None:
        """Until the first placement is in force."""
        await self._ready.wait()

    def notify_membership(self) -> None:
        """The membership view changed (call from the membership subscription)."""
        self._view_changed.set()

    async def write(self, record: Record, consistency: Consistency | int | None = None) -> Done:
        req = self._client_slot()
        try:
            self._route(self.coord.write(req, record, consistency, trio.current_time()))
        except BaseException:
            self._waiting.pop(req, None)
            raise
        return await self._wait(req)

    async def read(self, kind: Kind, key: tuple[str, ...], consistency: Consistency | int | None = None) -> Done:
        req = self._client_slot()
        try:
            self._route(self.coord.read(req, kind, key, consistency, trio.current_time()))
        except BaseException:
            self._waiting.pop(req, None)
            raise
        return await self._wait(req)

    def deliver(self, src: str, msgs: list[object]) -> None:
        """Inbound messages from the links (or from ourselves): queued, routed in arrival order."""
        try:
            self._inbox_send.send_nowait((src, msgs))
        except trio.WouldBlock:
            self.stats["inbox_dropped"] += len(msgs)

    def send(self, to: str, msg: object) -> None:
        self.links.send(to, msg)

    def owners_alive(self) -> tuple[Placement | None, frozenset[str]]:
        return self.placement, self.alive

    def statistics(self) -> dict[str, Any]:
        return {"placement_nodes": len(self.placement.nodes) if self.placement else 0, "alive": len(self.alive),
                "coordinator": self.coord.statistics(), "hints": self.hints.statistics(),
                "anti_entropy": _asdict(self.ae.statistics()), "rebalance": _asdict(self.rb.statistics()),
                "rebalance_settled": self.rb.settled(), "links": self.links.statistics(), "store": self.store.statistics(),
                **dict(self.stats)}

    # ---- client requests ----
    def _client_slot(self) -> int:
        self._next_client_req += 1
        self._waiting[self._next_client_req] = [trio.Event(), None]
        return self._next_client_req

    async def _wait(self, req: int) -> Done:
        slot = self._waiting[req]
        try:
            await slot[0].wait()
        finally:
            self._waiting.pop(req, None)
        return slot[1]

    def _finish(self, done: Done) -> None:
        slot = self._waiting.get(done.client_req)
        if slot is not None:
            slot[1] = done
            slot[0].set()

    # ---- routing ----
    def _route(self, effects: Sequence[Any]) -> None:
        """Send/Done now; a list with durable effects goes to the lane whole, so its sends leave only
        after its writes committed (an RbConfirm after the pages it vouches for, an ack after its hint).
        A list with an RbConfirm goes there too even without writes: a confirm repeated on a nudge
        must not overtake the pages of the first, still in the lane (FIFO)."""
        if any(isinstance(e, HintStored | HintDropped | ApplyRecords | DropPartitions)
               or (isinstance(e, Send) and isinstance(e.msg, RbConfirm)) for e in effects):
            for e in effects:
                if isinstance(e, DropPartitions):  # from now on refuse writes to them (see _apply_puts)
                    self._dropped.update(e.partitions)
                    for p in e.partitions:
                        self._drop_epoch[p] += 1
            self._lane_send.send_nowait(list(effects))
        else:
            for e in effects:
                self._now(e)
        self._rearm.set()

    def _now(self, e: Any) -> None:
        if isinstance(e, Send):
            self.links.send(e.to, e.msg)
        elif isinstance(e, Done):
            self._finish(e)
        elif isinstance(e, SessionEnded):
            self.stats[f"ae_{e.outcome}"] += 1

    async def _inbox_loop(self) -> None:
        while True:
            src, msgs = await self._inbox_recv.receive()
            puts: list[PutRecord] = []
            for msg in msgs:
                if isinstance(msg, PutRecord):
                    puts.append(msg)
                else:
                    try:
                        self._handle(src, msg)
                    except Exception:  # a bad message or a core bug costs that message only
                        self.stats["handler_errors"] += 1
                        log.exception("replica message %s from %s failed", type(msg).__name__, src[:12])
            if puts:
                bits = self.store.partition_bits
                epochs = {p: self._drop_epoch[p] for p in (put.record.partition(bits) for put in puts)}
                self._lane_send.send_nowait(("puts", src, puts, epochs))
            while self._lane_recv.statistics().current_buffer_used >= self.config.lane_queue_max:
                self.stats["lane_full_waits"] += 1  # back-pressure: stop reading the inbox
                self._lane_room = trio.Event()
                await self._lane_room.wait()
            await trio.lowlevel.checkpoint()

    def _handle(self, src: str, msg: object) -> None:
        now = trio.current_time()
        if isinstance(msg, GetRecord):
            p = _partition(msg.kind, msg.key, self.store.partition_bits)
            if self.rb.pending(p) or p in self._dropped or not self._holds(p):
                self.links.send(src, GetReply(msg.req, None, False, "not_ready"))
            else:
                self.links.send(src, GetReply(msg.req, self.store.get(msg.kind, msg.key)))
        elif isinstance(msg, PutAck) and is_handoff_req(msg.req):
            self._route(self.hints.on_ack(src, msg, self._hint_now()))
        elif isinstance(msg, PutAck | GetReply):
            self._route(self.coord.handle(src, msg, now))
        elif isinstance(msg, AntiEntropyMessage):
            self._route(self.ae.handle(src, msg, now))
        elif isinstance(msg, RebalanceMessage):
            self._route(self.rb.handle(src, msg, now))
        else:
            handler = self.handlers.get(type(msg))
            if handler is None:
                self.stats["unknown_messages"] += 1
            else:
                handler(src, msg)

    def _holds(self, p: int) -> bool:
        """Whether this node's store answers for partition `p`: it owns it in its placement, or lost it
        and keeps it until the new owners confirm. Otherwise a "none" from here would be a false
        negative: a coordinator on a newer placement asked before this node adopted it."""
        pl = self.placement
        return pl is None or self.me in pl.preference(p) or self.rb.keeping(p)

    # ---- the durable lane ----
    async def _lane_loop(self) -> None:
        while True:
            items = [await self._lane_recv.receive()]
            while len(items) < self.config.lane_batch_max:
                try:
                    items.append(self._lane_recv.receive_nowait())
                except trio.WouldBlock:
                    break
            self._lane_room.set()
            try:
                await self._commit_lane(items)
            except Exception:  # a core bug or a bad record must not stop the lane (nothing was acked)
                self.stats["lane_errors"] += 1
                log.exception("replica lane batch failed")

    async def _commit_lane(self, items: list[Any]) -> None:
        """Every durable effect of `items`, each item atomic on its own (one bad record or failed
        statement fails only its item), committed in order; then each item's messages if it held."""
        bits = self.store.partition_bits
        now_ms = self._wall_ms()
        fns: list[Callable[[Any], Applied[Any]]] = []
        fn_item: list[int] = []  # which item each write belongs to
        after: list[Any] = []  # what to send once committed, per item
        for i, item in enumerate(items):
            if not isinstance(item, tuple):
                ops = self._durable_ops(item)
                after.append(item)
            elif item[0] == "write":  # a plain write in lane order (the settled ring)
                ops = [item[1]]
                after.append(None)
            else:
                _, src, puts, entry_epochs = item
                keep: list[PutRecord] = []
                hinted: list[Any] = []
                own: list[Record] = []
                for put in puts:
                    p = put.record.partition(bits)
                    if put.hint_for in (None, self.me):
                        if p in self._dropped:  # dropped after every new owner confirmed it: not ours
                            self.links.send(src, PutAck(put.req, False, "not_owner"))
                            continue
                        own.append(put.record)
                    else:
                        hinted += self.hints.add(put.hint_for, put.record, self._hint_now())
                    keep.append(put)
                ops = []
                if own:
                    try:
                        ops.append(self.store.apply_fn(own, now_ms))
                    except MnemonetError as e:  # a malformed record: refuse this batch's puts, keep the rest
                        self.stats["puts_refused"] += len(keep)
                        for put in keep:
                            self.links.send(src, PutAck(put.req, False, e.code))
                        after.append(None)
                        continue
                ops += self._durable_ops(hinted)
                after.append(("acks", src, keep, [e for e in hinted if isinstance(e, Send)], entry_epochs))
            if ops:
                fns.append(_chained(ops))
                fn_item.append(i)
        failed: set[int] = set()
        try:
            results = await self.store.db.write_each(fns) if fns else []
        except MnemonetError as e:  # storage is not running: nothing of the batch is acknowledged
            results = [e] * len(fns)
        for j, res in enumerate(results):
            if isinstance(res, MnemonetError):
                failed.add(fn_item[j])
                self.stats["lane_failures"] += 1
                log.warning("replica write failed: %s", res)
        for i, item in enumerate(after):
            if isinstance(item, tuple):
                _, src, keep, sends, entry_epochs = item
                for put in keep:
                    # A put whose partition was dropped while it waited was deleted with it: not acked.
                    p = put.record.partition(bits)
                    good = i not in failed and self._drop_epoch[p] == entry_epochs[p]
                    self.links.send(src, PutAck(put.req, good, "ok" if good else "unavailable"))
                if i not in failed:
                    for s in sends:
                        self.links.send(s.to, s.msg)
            elif item is not None and i not in failed:
                for effect in item:
                    self._now(effect)
            elif item is not None:  # its writes failed: a confirm in it vouched for pages not held
                for effect in item:
                    if isinstance(effect, Send) and isinstance(effect.msg, RbConfirm):
                        self.rb.forget_confirm(effect.msg.partition, effect.to)
        self._rearm.set()

    def _durable_ops(self, effects: Sequence[Any]) -> list[Callable[[Any], Applied[Any]]]:
        now_ms = self._wall_ms()
        ops: list[Callable[[Any], Applied[Any]]] = []
        for e in effects:
            if isinstance(e, ApplyRecords) and e.records:
                try:
                    ops.append(self.store.apply_fn(list(e.records), now_ms))
                except MnemonetError as err:
                    self.stats["applies_refused"] += 1
                    log.warning("records from %s refused: %s", e.src[:12], err)
            elif isinstance(e, DropPartitions):
                ops.append(self.store.drop_fn(list(e.partitions)))
            elif isinstance(e, HintStored | HintDropped):
                ops.append(self.store.persist_hints_fn([e]))
        return ops

    # ---- time ----
    async def _tick_loop(self) -> None:
        while True:
            self._rearm = trio.Event()
            deadlines = [d for d in (self.coord.next_deadline(), self._hint_deadline()) if d is not None]
            if self.placement is not None:
                deadlines += [self.ae.next_deadline(), self.rb.next_deadline()]
            with trio.move_on_at(min(deadlines, default=math.inf)):
                await self._rearm.wait()
            try:
                await self._tick_once()
            except Exception:  # a core bug must not stop the node; counted and logged
                self.stats["tick_errors"] += 1
                log.exception("replication tick failed")
                await trio.sleep(0.1)
            await trio.lowlevel.checkpoint()

    async def _tick_once(self) -> None:
        now = trio.current_time()
        out: list[Any] = [*self.coord.tick(now), *self.hints.due(self.alive, self._hint_now())]
        if self.placement is not None:
            out += [*self.ae.tick(now), *self.rb.tick(now)]
        if out:
            self._route(out)
        # A lone node's placement is never recorded as settled: a newcomer sees only itself until its
        # join completes, and must then pull its share as a newcomer, not shed "its" data to the ring.
        if self.rb.settled() and self.placement is not None and self._persisted is not self.placement \
                and len(self.placement.nodes) > 1:
            self._persist_settled(self.placement)

    # ---- membership -> placement ----
    async def _view_loop(self) -> None:
        while True:
            # A dead member leaves the ring when its grace ends, with no membership event to say so.
            with trio.move_on_at(self._storage.expires_at if self._storage is not None else math.inf):
                await self._view_changed.wait()
            self._view_changed = trio.Event()
            try:
                await self._apply_view()
            except Exception:
                self.stats["view_errors"] += 1
                log.exception("placement update failed")
            await trio.sleep(self.config.settle_s)

    async def _apply_view(self) -> None:
        now = trio.current_time()
        s = storage_set(self.me, self._members(), now, self.config.dead_grace_s, self._restored, self._started)
        self.alive = s.alive
        n = self.config.replication.n_replicas
        if self._storage is None or s.members != self._storage.members:
            bits, me = self.store.partition_bits, self.me
            # Founding: nothing to move while this node holds nothing. Once it holds data (written
            # during the window), placement changes move it like any other, or a member joining
            # inside the window would leave copies on nodes that no longer own them.
            boot = (now < self._bootstrap_until and not self.store.holds_data()) or \
                (len(s.members) == 1 and self.settled is None)
            settled, restored = self.settled, self._restored_placement

            def compute() -> tuple[Placement, Placement, list[Any], set[int]]:
                """Placement and diff off the event loop (~0.1-0.3 s at 2**17 partitions)."""
                new = Placement([StorageNode(m) for m in s.members], min(n, len(s.members)), bits)
                old = (new if boot and len(s.members) > 1 else None) or settled or restored() or (
                    Placement([StorageNode(m) for m in s.members if m != me], min(n, len(s.members) - 1), bits)
                    if len(s.members) > 1 else new)
                mine = set(new.partitions_of(me).tolist()) if me in new.nodes else set()
                return new, old, diff(old, new), mine
            new, old, movements, mine = await trio.to_thread.run_sync(compute)
            if boot:
                self.settled = new if len(s.members) > 1 else None
            self.placement = new
            self.view.placement = new
            self._dropped -= mine
            self._route(self.rb.plan(movements, trio.current_time()))
            log.info("placement: %d storage nodes, %d alive", len(s.members), len(s.alive))
        self._storage = s
        assert self.placement is not None
        self.coord.set_view(self.placement, s.alive)
        self._route(self.hints.due(s.alive, self._hint_now()))
        self._ready.set()

    def _restored_placement(self) -> Placement | None:
        members = self._restored
        if not members:
            return None
        n = min(self.config.replication.n_replicas, len(members))
        return Placement([StorageNode(m) for m in members], n, self.store.partition_bits)

    async def _load_ring(self) -> list[str]:
        """The storage set of the last settled placement (what this node's data was placed by)."""
        def read(conn: Any) -> list[str]:
            row = conn.execute("SELECT v FROM meta WHERE k=?", (RING_META_KEY,)).fetchone()
            return list(json.loads(row[0])) if row else []
        return await self.store.db.read(read)

    def _persist_settled(self, placement: Placement) -> None:
        """Record `placement` as what this node's data is placed by. Through the lane, behind the
        pulled pages still waiting there: a crash must not leave the ring recorded without them."""
        self.settled = self._persisted = placement
        text = json.dumps(list(placement.nodes))

        def write(conn: Any) -> Applied[None]:
            conn.execute("INSERT INTO meta(k, v) VALUES(?, ?) ON CONFLICT(k) DO UPDATE SET v=excluded.v",
                         (RING_META_KEY, text))
            return Applied(None)
        self._lane_send.send_nowait(("write", write))

    def _hint_now(self) -> float:
        """Hints are persisted with their creation time and must age across restarts, so the hint
        queue runs on wall-clock seconds, not on this process's trio clock."""
        return self._wall_ms() / 1000.0

    def _hint_deadline(self) -> float | None:
        d = self.hints.next_deadline()
        return None if d is None else trio.current_time() + (d - self._hint_now())

    def _addr_of(self, node_id: str) -> str | None:
        for m in self._members():
            if m.id == node_id:
                return m.addr
        return None

    def _is_member(self, node_id: str) -> bool:
        return any(m.id == node_id for m in self._members())

    # ---- tombstone GC ----
    async def _gc_loop(self) -> None:
        rc = self.config.replication
        while True:
            await trio.sleep(self.config.gc_interval_s)
            cutoff_ms = self._wall_ms() - int(rc.tombstone_grace_s * 1000)
            try:
                while cutoff_ms > 0:  # batches of COLLECT_BATCH_MAX until a short one
                    n = await self.store.collect(hlc_pack(cutoff_ms, 0))
                    self.stats["tombstones_collected"] += n
                    if n < COLLECT_BATCH_MAX:
                        break
            except Exception:
                self.stats["gc_errors"] += 1
                log.exception("tombstone collection failed")


def _chained(ops: Sequence[Callable[[Any], Applied[Any]]]) -> Callable[[Any], Applied[None]]:
    """One write running `ops` in order (atomic together: one SAVEPOINT in Database)."""
    def fn(conn: Any) -> Applied[None]:
        effects: list[Any] = []
        for op in ops:
            effects += op(conn).effects
        return Applied(None, tuple(effects))
    return fn


def _partition(kind: Kind, key: tuple[str, ...], bits: int) -> int:
    return Record(kind, key, None).partition(bits)


def _asdict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) and not isinstance(obj, type) else dict(obj)
