"""A simulated network for gossip: link fault rules (shared with node/faults.py) and a pure event-heap
engine running many SwimNodes on a virtual clock. No I/O, no clock, no module-level randomness.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from gossip.config import GossipConfig
from gossip.messages import Effect, EventKind, MemberEvent, Message, Meta, Packet, Rng, Send
from gossip.swim import SwimNode

_OVERDUE_TICKS_MAX = 16  # resume(timers_first): ticks at one instant before packets are read

class UniformRng(Protocol):
    """The one method fault decisions need; `random.Random` satisfies it."""

    def random(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Latency:
    """One-way delay added to a frame: `base_s` plus a random part of mean `jitter_s`
    (uniform on [0, 2*jitter_s], or exponential: a long tail, so frames reorder)."""

    base_s: float = 0.0
    jitter_s: float = 0.0
    distribution: Literal["uniform", "exponential"] = "uniform"

    def sample(self, rng: UniformRng) -> float:
        if self.jitter_s <= 0.0:
            return self.base_s
        if self.distribution == "exponential":
            return self.base_s - self.jitter_s * math.log(1.0 - rng.random())
        return self.base_s + 2.0 * self.jitter_s * rng.random()


class LinkFaults:
    """Network-wide fault settings, changeable at any time: loss rate, latency, and partitions
    between named groups of addresses (a blocked ordered pair of groups drops src -> dst)."""

    def __init__(self, drop_rate: float = 0.0, latency: Latency | None = None) -> None:
        self.drop_rate = drop_rate
        self.latency = latency or Latency()
        self._groups: dict[str, frozenset[str]] = {}
        self._member_of: dict[str, set[str]] = {}
        self._blocked: set[tuple[str, str]] = set()

    def set_group(self, name: str, addrs: Iterable[str]) -> None:
        """Define (or redefine) a named group of addresses."""
        for addr in self._groups.get(name, ()):
            self._member_of[addr].discard(name)
        self._groups[name] = frozenset(addrs)
        for addr in self._groups[name]:
            self._member_of.setdefault(addr, set()).add(name)

    def block(self, src_group: str, dst_group: str) -> None:
        """One-way partition: frames from src_group to dst_group are dropped; the reverse flows."""
        for g in (src_group, dst_group):
            if g not in self._groups:
                raise KeyError(f"unknown group {g!r}")
        self._blocked.add((src_group, dst_group))

    def partition(self, a: str, b: str) -> None:
        """Two-way partition between groups a and b."""
        self.block(a, b)
        self.block(b, a)

    def heal(self, a: str | None = None, b: str | None = None) -> None:
        """Lift the partition between a and b (both directions), or every partition if no groups given."""
        if a is None or b is None:
            self._blocked.clear()
        else:
            self._blocked -= {(a, b), (b, a)}

    @property
    def partitioned(self) -> bool:
        return bool(self._blocked)

    def blocked(self, src: str, dst: str) -> bool:
        if not self._blocked:
            return False
        src_groups = self._member_of.get(src)
        dst_groups = self._member_of.get(dst)
        if not src_groups or not dst_groups:
            return False
        return any((s, d) in self._blocked for s in src_groups for d in dst_groups)


# --- the engine ------------------------------------------------------------------------------------

RngFactory = Callable[[int], Rng]
"""Makes a seeded generator (`random.Random` is one); injected so this module imports no `random`."""

_DELIVER, _TICK, _CALL = 0, 1, 2
_LIVE_EVENTS = frozenset({EventKind.JOINED, EventKind.SUSPECT, EventKind.ALIVE, EventKind.UPDATED})
LAN_LATENCY = Latency(base_s=0.0005, jitter_s=0.0005, distribution="exponential")
"""~1 ms round trips with a tail, so frames reorder now and then."""


def derive_seed(*parts: int) -> int:
    """An independent seed per (run seed, node index, boot): no stream of one node shifts another's."""
    digest = hashlib.blake2b(b",".join(str(p).encode() for p in parts), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class SimNode:
    """One simulated process: its SwimNode while it runs, and the engine's bookkeeping about it."""

    __slots__ = ("id", "addr", "index", "meta", "boot", "swim", "running", "paused", "left", "inbox",
                 "tick_at", "boot_incarnation", "spins")

    def __init__(self, node_id: str, addr: str, index: int, meta: Meta) -> None:
        self.id = node_id
        self.addr = addr
        self.index = index
        self.meta = meta
        self.boot = 0
        self.swim: SwimNode | None = None
        self.running = False
        self.paused = False
        self.left = False
        self.inbox: list[Packet] = []
        self.tick_at = math.inf
        self.boot_incarnation = 0
        self.spins = 0


class Simulation:
    """Many SwimNodes over a simulated network, driven by one event heap on a virtual clock.

    Everything random (per-node protocol choices, loss, latency) comes from `rng_factory` and `seed`,
    so a seed replays exactly. Packets travel as objects (no codec, no signatures). Ground truth
    (who runs, who is paused) is compared with every MemberEvent to count false suspicions and deaths.
    """

    def __init__(self, seed: int, rng_factory: RngFactory, config: GossipConfig | None = None, *,
                 latency: Latency = LAN_LATENCY, drop_rate: float = 0.0, network: str = "default",
                 inbox_max: int = 10_000, trace: bool = False) -> None:
        self.seed = seed
        self.config = config or GossipConfig.sim()
        self.faults = LinkFaults(drop_rate, latency)
        self.network = network
        self.inbox_max = inbox_max
        """Packets a paused node buffers (its socket buffers); beyond it arrivals are lost."""
        self.now = 0.0
        self.nodes: dict[str, SimNode] = {}
        self._by_addr: dict[str, SimNode] = {}
        self._rng_factory = rng_factory
        self._net_rng = rng_factory(derive_seed(seed, -1))
        self._heap: list[tuple[float, int, int, Any, Any]] = []
        self._seq = 0
        self._views: dict[str, set[str]] = {}
        self._last_incarnation: dict[str, int] = {}  # what a real node would persist across restarts
        self._trace = hashlib.blake2b(digest_size=16) if trace else None
        self.message_bytes: Callable[[str, Message], int] | None = None
        """If set, (sender addr, message) -> its encoded size, summed into stats["bytes_sent"]. Off by
        default: at N=1000 it costs ~10% more CPU, so switch it on for the window you measure."""
        self.stats: dict[str, int] = dict.fromkeys((
            "sent", "delivered", "bytes_sent", "dropped_random", "dropped_partition", "dropped_unreachable",
            "dropped_inbox_full", "ticks", "events", "false_suspicion_events", "false_death_events"), 0)
        self.sent_by_type: dict[str, int] = {}
        self.false_suspicions: set[tuple[str, int]] = set()
        """(member, incarnation) suspected while that member was running: each is one false episode."""
        self.false_deaths: set[tuple[str, int]] = set()
        self.dead_seen: dict[str, dict[str, float]] = {}
        """member -> {observer: when it last learned the member dead or left}."""
        self.first_seen: dict[tuple[str, EventKind], float] = {}
        """(member, kind) -> when any node first reported that event about the member."""
        self._lag: dict[str, float] = {}
        self._suspected_by: dict[str, set[str]] = {}

    # --- scripting ----------------------------------------------------------------------------------

    def add_node(self, seeds: Sequence[str] = (), meta: Meta | None = None) -> str:
        """Start a new node now; it joins through the nodes with ids `seeds` (none: it starts alone)."""
        index = len(self.nodes)
        node = SimNode(f"n{index}", f"a{index}", index, meta or Meta())
        self.nodes[node.id] = node
        self._by_addr[node.addr] = node
        self._boot(node, 0, seeds)
        return node.id

    def crash(self, node_id: str) -> None:
        """The process dies: nothing more in or out; its timers and inbox are gone."""
        node = self.nodes[node_id]
        node.running = node.paused = False
        node.inbox.clear()
        node.swim = None
        node.tick_at = math.inf
        self._views.pop(node_id, None)
        for holders in self._suspected_by.values():
            holders.discard(node_id)

    def restart(self, node_id: str, seeds: Sequence[str] = ()) -> None:
        """Boot a crashed node again, at an incarnation above any it used (as if persisted)."""
        node = self.nodes[node_id]
        if node.running:
            raise RuntimeError(f"{node_id} is running")
        incarnation = self._last_incarnation.get(node_id, 0) + 1
        node.boot += 1
        node.left = False
        self._boot(node, incarnation, seeds)

    def leave(self, node_id: str, linger_s: float = 1.0) -> None:
        """Graceful leave: announce it, keep gossiping for linger_s, then stop."""
        node = self.nodes[node_id]
        assert node.swim is not None
        node.left = True
        self._apply(node, node.swim.leave(self.now))
        self.after(linger_s, lambda: self.crash(node_id) if node.left and node.running else None)

    def pause(self, node_id: str) -> None:
        """The process stops running (SIGSTOP): packets wait in its inbox, its timers do not fire."""
        self.nodes[node_id].paused = True

    def resume(self, node_id: str, *, timers_first: bool = False) -> None:
        """Everything late: the buffered packets in arrival order and the overdue timers. A woken
        process has both ready at once and its scheduler picks the order; `timers_first` takes the
        order that tempts a node to blame peers for its own pause (its probe looks unanswered)."""
        node = self.nodes[node_id]
        if not node.paused:
            return
        node.paused = False
        if node.swim is None:
            return
        if timers_first:  # every overdue timer, until none is left, before any packet
            for _ in range(_OVERDUE_TICKS_MAX):
                self._apply(node, node.swim.tick(self.now))
                if node.swim is None or node.swim.next_deadline() > self.now:
                    break
            if node.swim is None:
                return
        inbox, node.inbox = node.inbox, []
        for packet in inbox:
            if node.swim is not None and not node.paused:
                self._apply(node, node.swim.handle(packet, self.now))
        self._tick(node)

    def slow(self, node_id: str, lag_s: float) -> None:
        """The node's receive path lags (starved CPU, long queue): each packet it gets is handled
        lag_s late while its timers keep time; Lifeguard's motivating case. lag_s=0 ends it."""
        addr = self.nodes[node_id].addr
        if lag_s > 0:
            self._lag[addr] = lag_s
        else:
            self._lag.pop(addr, None)

    def set_group(self, name: str, node_ids: Iterable[str]) -> None:
        self.faults.set_group(name, (self.nodes[i].addr for i in node_ids))

    def at(self, t: float, fn: Callable[[], object]) -> None:
        """Run fn at virtual time t (scenario scripting)."""
        self._push(max(t, self.now), _CALL, fn, None)

    def after(self, dt: float, fn: Callable[[], object]) -> None:
        self.at(self.now + dt, fn)

    def run_until(self, t_end: float) -> None:
        heap = self._heap
        pop = heapq.heappop
        while heap and heap[0][0] <= t_end:
            t, _, kind, a, b = pop(heap)
            self.now = t
            if kind == _DELIVER:
                self._deliver(a, b)
            elif kind == _TICK:
                if a.boot == b and a.tick_at == t:
                    a.tick_at = math.inf
                    if a.running and not a.paused:
                        self._tick(a)
            else:
                a()
        self.now = max(self.now, t_end)

    def run_for(self, dt: float) -> None:
        self.run_until(self.now + dt)

    def run_until_true(self, predicate: Callable[[], bool], timeout_s: float, check_every_s: float = 0.1) -> float | None:
        """Run until predicate holds (checked every check_every_s); the virtual time it took, or None."""
        start = self.now
        while not predicate():
            if self.now - start >= timeout_s:
                return None
            self.run_for(check_every_s)
        return self.now - start

    # --- observation ---------------------------------------------------------------------------------

    def running_ids(self) -> list[str]:
        """Ground truth: nodes whose process runs (paused ones included) and that have not left."""
        return [n.id for n in self.nodes.values() if n.running and not n.left]

    def view(self, node_id: str) -> set[str]:
        """Members node_id holds alive or suspect (itself included), kept from its MemberEvents."""
        return self._views[node_id] | {node_id}

    def converged(self, expected: Iterable[str] | None = None) -> bool:
        """Every running node's view is exactly `expected` (default: the running nodes)."""
        ids = self.running_ids()
        want = set(ids if expected is None else expected)
        size = len(want) - 1
        for i in ids:
            v = self._views[i]
            if len(v) != size or i not in want or not v <= want:
                return False
        return True

    def known_by(self, member: str) -> int:
        """How many running nodes other than member hold it alive or suspect."""
        return sum(1 for i in self.running_ids() if i != member and member in self._views[i])

    def suspected_by(self, member: str) -> int:
        """How many running nodes hold member suspect right now."""
        return sum(1 for i in self._suspected_by.get(member, ()) if self.nodes[i].running)

    def dead_known_by(self, member: str) -> int:
        return sum(1 for i in self.running_ids() if i != member and member not in self._views[i])

    def trace_digest(self) -> str:
        if self._trace is None:
            raise RuntimeError("make the Simulation with trace=True")
        return self._trace.hexdigest()

    def statistics(self) -> dict[str, float]:
        return {**self.stats, "now": self.now, "nodes_running": len(self.running_ids()),
                "false_suspicions": len(self.false_suspicions), "false_deaths": len(self.false_deaths)}

    # --- engine --------------------------------------------------------------------------------------

    def _boot(self, node: SimNode, incarnation: int, seeds: Sequence[str]) -> None:
        rng = self._rng_factory(derive_seed(self.seed, node.index, node.boot))
        node.swim = SwimNode(node.id, node.addr, node.meta, self.config, rng, self.now, incarnation, self.network)
        node.running, node.paused, node.inbox = True, False, []
        node.boot_incarnation = incarnation
        self._views[node.id] = set()
        addrs = [self.nodes[s].addr for s in seeds if s != node.id]
        self._apply(node, node.swim.join(addrs, self.now) if addrs else [])

    def _push(self, t: float, kind: int, a: Any, b: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, a, b))

    def _tick(self, node: SimNode) -> None:
        swim = node.swim
        assert swim is not None
        self.stats["ticks"] += 1
        self._apply(node, swim.tick(self.now))
        # A tick may leave a deadline at `now` (a suspicion confirmed during it, now overdue): one more
        # tick at the same instant handles it. Many in a row would spin the clock: a core bug.
        if node.swim is swim and swim.next_deadline() <= self.now:
            node.spins += 1
            if node.spins > 100:
                raise AssertionError(f"{node.id}: tick({self.now!r}) keeps next_deadline() in the past "
                                     f"(reproduce with seed={self.seed})")
        else:
            node.spins = 0

    def _apply(self, node: SimNode, effects: list[Effect]) -> None:
        """Carry out a node's effects, then make sure its next deadline is scheduled."""
        for e in effects:
            if type(e) is Send:
                self._send(node, e)
            else:
                self._observe(node, e)  # type: ignore[arg-type]
        swim = node.swim
        if swim is None or not node.running:
            return
        self._last_incarnation[node.id] = swim.incarnation
        d = swim.next_deadline()
        if d < node.tick_at:
            # A deadline already passed (new gossip queued after an idle round) means: tick next.
            d = max(d, self.now)
            node.tick_at = d
            self._push(d, _TICK, node, node.boot)

    def _send(self, node: SimNode, e: Send) -> None:
        st = self.stats
        st["sent"] += 1
        msg = e.msg
        name = type(msg).__name__
        self.sent_by_type[name] = self.sent_by_type.get(name, 0) + 1
        if self.message_bytes is not None:
            st["bytes_sent"] += self.message_bytes(node.addr, msg)
        faults = self.faults
        if faults.partitioned and faults.blocked(node.addr, e.to_addr):
            st["dropped_partition"] += 1
            return
        rng = self._net_rng
        if faults.drop_rate > 0.0 and rng.random() < faults.drop_rate:
            st["dropped_random"] += 1
            return
        packet = Packet(node.id, node.addr, self.network, msg)
        delay = faults.latency.sample(rng)
        if self._lag:
            delay += self._lag.get(e.to_addr, 0.0)
        self._push(self.now + delay, _DELIVER, e.to_addr, packet)

    def _deliver(self, addr: str, packet: Packet) -> None:
        node = self._by_addr.get(addr)
        if node is None or not node.running or node.swim is None:
            self.stats["dropped_unreachable"] += 1
            return
        if self._trace is not None:
            self._trace.update(f"{self.now!r} {addr} {packet!r}\n".encode())
        if node.paused:
            if len(node.inbox) >= self.inbox_max:
                self.stats["dropped_inbox_full"] += 1
            else:
                node.inbox.append(packet)
            return
        self.stats["delivered"] += 1
        self._apply(node, node.swim.handle(packet, self.now))

    def _observe(self, node: SimNode, e: MemberEvent) -> None:
        st = self.stats
        st["events"] += 1
        kind, m = e.kind, e.member
        if self._trace is not None:
            self._trace.update(f"{self.now!r} {node.id} {kind.value} {m.id} {m.incarnation}\n".encode())
        view = self._views[node.id]
        self.first_seen.setdefault((m.id, kind), self.now)
        if kind is EventKind.SUSPECT:
            self._suspected_by.setdefault(m.id, set()).add(node.id)
        elif m.id in self._suspected_by:
            self._suspected_by[m.id].discard(node.id)
        if kind in _LIVE_EVENTS:
            view.add(m.id)
        else:
            view.discard(m.id)
            self.dead_seen.setdefault(m.id, {})[node.id] = self.now
        subject = self.nodes.get(m.id)
        if subject is None or not subject.running or subject.left or m.incarnation < subject.boot_incarnation:
            return  # about a crashed or departed process, or an earlier boot of it: true news
        if kind is EventKind.SUSPECT:
            st["false_suspicion_events"] += 1
            self.false_suspicions.add((m.id, m.incarnation))
        elif kind is EventKind.DEAD:
            st["false_death_events"] += 1
            self.false_deaths.add((m.id, m.incarnation))

