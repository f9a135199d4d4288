"""The replication simulator: N replica nodes (Coordinator + MemoryReplicaStore + HintQueue, and the
anti-entropy engine when enabled) over a simulated network driven by one event heap on a virtual
clock, with seeded latency, loss, duplication, two-way partitions, crashes and restarts.

Owns the replica shell (what node/ will do with trio and SQLite) and the fault script; it must not
decide correctness (testnet/replcheck.py checks histories). Same seed, same trace:
    python -m testnet.replcheck --seed 3 --steps 300 [--sloppy]
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
from collections.abc import Callable, Iterable
from typing import Any

from gossip.sim import LAN_LATENCY, Latency, LinkFaults, derive_seed
from ring.config import ReplicationConfig
from ring.coordinator import Coordinator
from ring.handoff import HintQueue
from ring.memstore import MemoryReplicaStore
from ring.messages import (
    AntiEntropyMessage,
    ApplyRecords,
    Done,
    GetRecord,
    GetReply,
    Hint,
    HintDropped,
    HintStored,
    PutAck,
    PutRecord,
    Send,
    is_handoff_req,
)
from ring.partition import Placement, StorageNode
from ring.quorum import Consistency
from ring.records import Kind, Record

_DELIVER, _TICK, _VIEW, _CALL = 0, 1, 2, 3
Level = Consistency | int | None


class SimReplica:
    """One simulated process. Durable (survives a crash): the store and the hint table, as SQLite
    would keep them. Volatile (rebuilt at boot): coordinator, hint queue, anti-entropy, view."""

    def __init__(self, node_id: str, index: int, partition_bits: int) -> None:
        self.id, self.index = node_id, index
        self.store = MemoryReplicaStore(partition_bits)
        self.hint_rows: dict[int, Hint] = {}  # the persisted hints table
        self.hint_seq = 0  # SQLite AUTOINCREMENT's sqlite_sequence
        self.running = False
        self.storage_ok = True  # False: every store read or write fails (disk full, I/O error)
        self.boot = 0
        self.coord: Coordinator | None = None
        self.hints: HintQueue | None = None
        self.ae: Any = None  # ring.antientropy.AntiEntropy when the simulation runs anti-entropy
        self.alive: frozenset[str] = frozenset()
        self.tick_at = math.inf


class ReplSim:
    """Replica nodes r0..r{n-1}, all storage nodes of one fixed Placement (crashes change liveness,
    not placement). Clients call `write`/`read` on a node directly and get a `Done` (or nothing, if
    that node crashes first). Each node's liveness view comes from an oracle (running, and not cut
    off by a partition) `detect_delay_s` after every change, as a failure detector would give it.
    """

    def __init__(self, seed: int, n_nodes: int = 5, config: ReplicationConfig | None = None, *,
                 partition_bits: int = 6, latency: Latency = LAN_LATENCY, drop_rate: float = 0.0,
                 dup_rate: float = 0.0, detect_delay_s: float = 0.5, anti_entropy: bool = False,
                 rng_factory: Callable[[int], random.Random] = random.Random) -> None:
        self.seed = seed
        self.config = config or ReplicationConfig()
        self.faults = LinkFaults(drop_rate, latency)
        self.dup_rate = dup_rate
        self.detect_delay_s = detect_delay_s
        self.anti_entropy = anti_entropy
        self.now = 0.0
        self._rng_factory = rng_factory
        self._net_rng = rng_factory(derive_seed(seed, -1))
        self.ids = [f"r{i}" for i in range(n_nodes)]
        self.placement = Placement([StorageNode(i) for i in self.ids], self.config.n_replicas, partition_bits)
        self.nodes = {nid: SimReplica(nid, i, partition_bits) for i, nid in enumerate(self.ids)}
        self._heap: list[tuple[float, int, int, Any, Any]] = []
        self._seq = 0
        self.in_flight = 0  # messages scheduled for delivery
        self._next_client_req = 0
        self.results: dict[int, tuple[float, Done]] = {}
        self._trace = hashlib.blake2b(digest_size=16)
        self.stats: dict[str, int] = dict.fromkeys(
            ("sent", "delivered", "dropped_random", "dropped_partition", "dropped_down", "duplicated", "events",
             "spins"), 0)
        for node in self.nodes.values():
            self._boot(node)
        for node in self.nodes.values():  # the cluster starts formed: every view complete
            self._set_view(node)

    # --- clients ---------------------------------------------------------------------------------

    def write(self, via: str, record: Record, consistency: Level = None) -> int:
        """A client write through node `via`; the answer lands in `results` (see `wait`)."""
        req = self._client_req()
        node = self.nodes[via]
        if node.coord is None:
            self._answer(Done(req, False, None, "unavailable", {"reason": "node down"}))
        else:
            self._effects(node, node.coord.write(req, record, consistency, self.now))
        return req

    def read(self, via: str, kind: Kind, key: tuple[str, ...], consistency: Level = None) -> int:
        req = self._client_req()
        node = self.nodes[via]
        if node.coord is None:
            self._answer(Done(req, False, None, "unavailable", {"reason": "node down"}))
        else:
            self._effects(node, node.coord.read(req, kind, key, consistency, self.now))
        return req

    def wait(self, reqs: Iterable[int], timeout_s: float | None = None) -> list[Done | None]:
        """Run until every request is answered or `timeout_s` (default: the request timeout plus a
        second) passes; None for a request whose coordinator crashed before answering."""
        reqs = list(reqs)
        limit = self.now + (self.config.request_timeout_s + 1.0 if timeout_s is None else timeout_s)
        while not all(r in self.results for r in reqs) and self._heap and self._heap[0][0] <= limit:
            self._step()
        if not all(r in self.results for r in reqs):
            self.run_until(limit)
        return [self.results[r][1] if r in self.results else None for r in reqs]

    # --- faults ----------------------------------------------------------------------------------

    def crash(self, node_id: str) -> None:
        """The process dies: volatile state is gone, store and hint table stay (they are durable)."""
        node = self.nodes[node_id]
        if not node.running:
            return
        node.running = False
        node.coord = node.hints = node.ae = None
        node.tick_at = math.inf
        self._trace_line("crash", node_id)
        self._views_changed()

    def restart(self, node_id: str) -> None:
        node = self.nodes[node_id]
        if node.running:
            return
        node.boot += 1
        self._trace_line("restart", node_id)
        self._boot(node)
        self._views_changed()

    def fail_storage(self, node_id: str, failing: bool = True) -> None:
        """The node keeps running but its store refuses reads and writes (as SQLite on a full or
        failing disk): it answers ok=False, so coordinators see explicit failures, not silence."""
        self.nodes[node_id].storage_ok = not failing
        self._trace_line("storage", f"{node_id} {'failing' if failing else 'ok'}")

    def partition(self, side: Iterable[str]) -> None:
        """Two-way partition between `side` and every other node (replacing any earlier one)."""
        a = frozenset(side)
        self.faults.heal()
        self.faults.set_group("a", a)
        self.faults.set_group("b", [i for i in self.ids if i not in a])
        self.faults.partition("a", "b")
        self._trace_line("partition", ",".join(sorted(a)))
        self._views_changed()

    def heal(self) -> None:
        self.faults.heal()
        self._trace_line("heal", "")
        self._views_changed()

    def reachable(self, a: str, b: str) -> bool:
        return a == b or not (self.faults.blocked(a, b) or self.faults.blocked(b, a))

    # --- time ------------------------------------------------------------------------------------

    def at(self, t: float, fn: Callable[[], object]) -> None:
        self._push(max(t, self.now), _CALL, fn, None)

    def run_until(self, t_end: float) -> None:
        while self._heap and self._heap[0][0] <= t_end:
            self._step()
        self.now = max(self.now, t_end)

    def run_for(self, dt: float) -> None:
        self.run_until(self.now + dt)

    def run_until_true(self, predicate: Callable[[], bool], timeout_s: float, check_every_s: float = 0.25) -> bool:
        end = self.now + timeout_s
        while not predicate():
            if self.now >= end:
                return False
            self.run_for(check_every_s)
        return True

    # --- observation -----------------------------------------------------------------------------

    def owners(self, kind: Kind, key: tuple[str, ...]) -> tuple[str, ...]:
        return self.placement.owners(Record(kind, key, None).ring_hash)

    def copies(self, kind: Kind, key: tuple[str, ...]) -> dict[str, Record | None]:
        """Each owner's stored copy of an item (crashed owners included: their stores are durable)."""
        return {o: self.nodes[o].store.get(kind, key) for o in self.owners(kind, key)}

    def hints_for(self, owner: str) -> list[Hint]:
        """Persisted hints for `owner` on every node."""
        return [h for n in self.nodes.values() for h in n.hint_rows.values() if h.owner == owner]

    def hints_pending(self) -> int:
        return sum(len(n.hint_rows) for n in self.nodes.values())

    def idle(self) -> bool:
        """No message in flight, no client request pending anywhere, and no hint left to deliver."""
        return self.in_flight == 0 and self.hints_pending() == 0 and \
            all(n.coord is None or n.coord.pending == 0 for n in self.nodes.values())

    def diverged_partitions(self) -> list[int]:
        """Partitions whose owners' digests differ (empty once every replica of every item agrees)."""
        out = []
        for p in sorted({p for n in self.nodes.values() for p in n.store.partitions()}):
            digests = [self.nodes[o].store.digest(p) for o in self.placement.preference(p)]
            if any(d != digests[0] for d in digests[1:]):
                out.append(p)
        return out

    def trace_digest(self) -> str:
        return self._trace.hexdigest()

    # --- the shell: what node/ does with real I/O ----------------------------------------------------

    def _boot(self, node: SimReplica) -> None:
        rng = self._rng_factory(derive_seed(self.seed, node.index, node.boot))
        node.running = True
        node.coord = Coordinator(node.id, self.config, rng)
        node.hints = HintQueue(self.config)
        node.hints.restore(node.hint_rows.values(), node.hint_seq + 1)
        node.alive = self._oracle(node.id)  # a booting node learns the membership before serving
        node.coord.set_view(self.placement, node.alive)
        if self.anti_entropy:
            from ring.antientropy import AntiEntropy  # the hook: see `anti_entropy`
            from ring.replicaview import MemoryView
            node.ae = AntiEntropy(node.id, MemoryView(node.store, node.id, self.placement), self.config, rng, self.now)
        self._effects(node, node.hints.due(node.alive, self.now))

    def _serve(self, node: SimReplica, src: str, msg: Any) -> list[Any]:
        """A message arrived at a running node: the replica side, or one of the cores."""
        assert node.coord is not None and node.hints is not None
        if isinstance(msg, PutRecord | GetRecord) and not node.storage_ok:
            return [Send(src, PutAck(msg.req, False, "unavailable") if isinstance(msg, PutRecord)
                         else GetReply(msg.req, None, False, "unavailable"))]
        if isinstance(msg, PutRecord):
            if msg.hint_for is None or msg.hint_for == node.id:
                node.store.apply(msg.record)
                out: list[Any] = []
            else:
                out = node.hints.add(msg.hint_for, msg.record, self.now)
            return [*out, Send(src, PutAck(msg.req, True))]  # effects are persisted before the ack leaves
        if isinstance(msg, GetRecord):
            return [Send(src, GetReply(msg.req, node.store.get(msg.kind, msg.key)))]
        if isinstance(msg, PutAck) and is_handoff_req(msg.req):
            return node.hints.on_ack(src, msg, self.now)
        if isinstance(msg, PutAck | GetReply):
            return node.coord.handle(src, msg, self.now)
        if isinstance(msg, AntiEntropyMessage) and node.ae is not None:
            return list(node.ae.handle(src, msg, self.now))
        return []

    def _effects(self, node: SimReplica, effects: Iterable[Any], *, after_tick: bool = False) -> None:
        for e in effects:
            if isinstance(e, Send):
                self._send(node, e.to, e.msg)
            elif isinstance(e, Done):
                self._answer(e)
            elif isinstance(e, HintStored):
                node.hint_rows[e.hint.hint_id] = e.hint
                node.hint_seq = max(node.hint_seq, e.hint.hint_id)
            elif isinstance(e, HintDropped):
                node.hint_rows.pop(e.hint_id, None)
            elif isinstance(e, ApplyRecords):
                for r in e.records:
                    node.store.apply(r)
        self._arm(node, after_tick)

    def _tick(self, node: SimReplica) -> None:
        assert node.coord is not None and node.hints is not None
        out = [*node.coord.tick(self.now), *node.hints.due(node.alive, self.now)]
        if node.ae is not None:
            out += node.ae.tick(self.now)
        self._effects(node, out, after_tick=True)

    def _arm(self, node: SimReplica, after_tick: bool = False) -> None:
        if not node.running or node.coord is None or node.hints is None:
            return
        times = [t for t in (node.coord.next_deadline(), node.hints.next_deadline()) if t is not None]
        if node.ae is not None:
            times.append(node.ae.next_deadline())
        at = max(min(times, default=math.inf), self.now)
        if after_tick and at <= self.now:
            # A core asks to be ticked again at the instant it was just ticked with nothing new (a
            # deadline compared one way in next_deadline and another in tick, off by float rounding):
            # step one ulp so the run cannot spin in place. Counted: a real shell would busy-loop.
            at = math.nextafter(self.now, math.inf)
            self.stats["spins"] += 1
        if at < node.tick_at or node.tick_at < self.now:
            node.tick_at = at
            self._push(at, _TICK, node, node.boot)

    def _set_view(self, node: SimReplica) -> None:
        if not node.running or node.coord is None or node.hints is None:
            return
        alive = self._oracle(node.id)
        if alive == node.alive:
            return
        node.alive = alive
        node.coord.set_view(self.placement, alive)
        self._trace_line("view", node.id + ":" + ",".join(i for i in self.ids if i in alive))
        self._effects(node, node.hints.due(alive, self.now))

    def _oracle(self, observer: str) -> frozenset[str]:
        return frozenset(i for i in self.ids if self.nodes[i].running and self.reachable(observer, i))

    def _views_changed(self) -> None:
        for node in self.nodes.values():
            self._push(self.now + self.detect_delay_s, _VIEW, node, node.boot)

    # --- the network -------------------------------------------------------------------------------

    def _send(self, node: SimReplica, to: str, msg: Any) -> None:
        self.stats["sent"] += 1
        if to == node.id:  # local delivery: no network, but still after this event (no re-entrancy)
            self._push(self.now, _DELIVER, (node.id, to, node.boot), msg)
            return
        if self.faults.blocked(node.id, to):
            self.stats["dropped_partition"] += 1
            return
        copies = 2 if self.dup_rate and self._net_rng.random() < self.dup_rate else 1
        self.stats["duplicated"] += copies - 1
        for _ in range(copies):
            if self.faults.drop_rate and self._net_rng.random() < self.faults.drop_rate:
                self.stats["dropped_random"] += 1
                continue
            self._push(self.now + self.faults.latency.sample(self._net_rng), _DELIVER, (node.id, to, None), msg)

    def _deliver(self, src: str, to: str, local_boot: int | None, msg: Any) -> None:
        node = self.nodes[to]
        if not node.running or (local_boot is not None and local_boot != node.boot):
            self.stats["dropped_down"] += 1
            return
        if src != to and self.faults.blocked(src, to):
            self.stats["dropped_partition"] += 1
            return
        self.stats["delivered"] += 1
        self._trace_line("msg", f"{src}>{to} {type(msg).__name__} {getattr(msg, 'req', getattr(msg, 'session', ''))}")
        self._effects(node, self._serve(node, src, msg))

    # --- the engine --------------------------------------------------------------------------------

    def _step(self) -> None:
        t, _, kind, a, b = heapq.heappop(self._heap)
        self.now = t
        self.stats["events"] += 1
        if kind == _DELIVER:
            self.in_flight -= 1
            self._deliver(a[0], a[1], a[2], b)
        elif kind == _TICK:
            if a.boot == b and a.tick_at == t and a.running:
                a.tick_at = math.inf
                self._tick(a)
        elif kind == _VIEW:
            if a.boot == b:
                self._set_view(a)
        else:
            a()

    def _push(self, t: float, kind: int, a: Any, b: Any) -> None:
        self._seq += 1
        self.in_flight += kind == _DELIVER
        heapq.heappush(self._heap, (t, self._seq, kind, a, b))

    def _client_req(self) -> int:
        self._next_client_req += 1
        return self._next_client_req

    def _answer(self, done: Done) -> None:
        self.results[done.client_req] = (self.now, done)
        self._trace_line("done", f"{done.client_req} {done.ok} {done.code}")

    def _trace_line(self, what: str, detail: str) -> None:
        self._trace.update(f"{self.now:.9f} {what} {detail}\n".encode())
