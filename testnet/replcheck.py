"""Client workload and safety checker for the replication simulator: builds the records clients
write (memories, registers, counter increments, set adds/removes, deletes), remembers what was
attempted and what was acknowledged, and checks reads and replica states against that history.

Owns the definition of "correct" used by tests/test_replication_stateful.py and `run_random`; it
must not drive the network (testnet/replsim.py does). Failures are AssertionErrors naming the
violated property.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ring.config import ReplicationConfig
from ring.crdt import ORSet, PNCounter
from ring.merge import Versioned
from ring.messages import Done
from ring.quorum import Consistency
from ring.records import Kind, Record, merge
from testnet.replsim import ReplSim

Item = tuple[Kind, tuple[str, ...]]


_DOMINATES: dict[tuple[int, int], tuple[Record, Record, bool]] = {}
_DOMINATES_MAX = 200_000


def dominates(a: Record | None, b: Record | None) -> bool:
    """`a` already contains everything `b` says (a >= b in the merge order)."""
    if b is None:
        return True
    if a is None:
        return False
    # Records are immutable and the checks ask the same pairs after every step: memoised by
    # identity (the entry keeps both alive, so an id cannot be reused while it is cached).
    hit = _DOMINATES.get((id(a), id(b)))
    if hit is not None:
        return hit[2]
    m = merge(a, b)
    result = m is not None and m.version == a.version
    if len(_DOMINATES) >= _DOMINATES_MAX:
        _DOMINATES.clear()
    _DOMINATES[(id(a), id(b))] = (a, b, result)
    return result


class Workload:
    """Makes client records. Versions come from one client clock; every counter increment and set
    add carries a fresh dot (tag), so no two updates are confused and retries could be idempotent."""

    def __init__(self) -> None:
        self._clock = 0

    def _tick(self) -> int:
        self._clock += 1
        return self._clock

    def memory(self, mid: str, content: str, ns: str = "ns") -> Record:
        return Record(Kind.MEMORY, (ns, mid), {"id": mid, "ns": ns, "hlc": self._tick(), "deleted": False,
                                               "content": content})

    def delete_memory(self, mid: str, ns: str = "ns") -> Record:
        return Record(Kind.MEMORY, (ns, mid), {"id": mid, "ns": ns, "hlc": self._tick(), "deleted": True})

    def register(self, key: str, value: object, ns: str = "ns") -> Record:
        return Record(Kind.REGISTER, (ns, key), Versioned(value, self._tick(), "client"))

    def increment(self, key: str, amount: int, ns: str = "ns") -> Record:
        hlc = self._tick()
        state = PNCounter().incr(f"d{hlc}", amount)
        return Record(Kind.COUNTER, (ns, key), {"hlc": hlc, "epoch": 0, "deleted": False, "state": state.to_wire()})

    def set_add(self, key: str, element: object, ns: str = "ns") -> Record:
        hlc = self._tick()
        state = ORSet().add(element, f"t{hlc}")
        return Record(Kind.SET, (ns, key), {"hlc": hlc, "epoch": 0, "deleted": False, "state": state.to_wire()})

    def set_remove(self, key: str, element: object, observed: Record | None, ns: str = "ns") -> Record | None:
        """Remove `element` as the client observed it (a quorum read): exactly the add tags it saw."""
        if observed is None:
            return None
        tags = ORSet.from_wire(observed.body["state"]).tags(element)
        if not tags:
            return None
        state = {"e": [[element, [], sorted(tags)]]}
        return Record(Kind.SET, (ns, key), {"hlc": self._tick(), "epoch": 0, "deleted": False, "state": state})


@dataclass
class ItemHistory:
    attempted: list[Record] = field(default_factory=list)
    acked: list[Record] = field(default_factory=list)
    join: Record | None = None  # of everything attempted: no replica may ever hold more


class History:
    """What clients attempted and what they were told, per item; every check raises AssertionError."""

    def __init__(self, sim: ReplSim) -> None:
        self.sim = sim
        self.items: dict[Item, ItemHistory] = {}
        self.reads_checked = 0

    def wrote(self, record: Record, done: Done | None, consistency: Consistency | int | None = None) -> None:
        h = self.items.setdefault((record.kind, record.key), ItemHistory())
        h.attempted.append(record)
        h.join = merge(h.join, record)
        if done is not None and done.ok:
            acked = done.details["acked"]
            assert len(set(acked)) >= done.details["required"], f"write acked by too few distinct nodes: {done}"
            h.acked.append(record)

    # -- reads --
    def check_read(self, kind: Kind, key: tuple[str, ...], done: Done | None, *, must_see_acked: bool) -> None:
        if done is None or not done.ok:
            return
        h = self.items.get((kind, key), ItemHistory())
        self.reads_checked += 1
        assert dominates(h.join, done.record), f"read returned a value nobody wrote: {done.record} > {h.join}"
        if must_see_acked:
            for w in h.acked:
                assert dominates(done.record, w), \
                    f"acknowledged write not seen by a later quorum read: {w} not in {done.record}"
        self._check_semantics(kind, key, done.record, acked_only=must_see_acked)

    # -- replica states --
    def check_no_phantoms(self) -> None:
        """No replica holds anything beyond the join of what clients attempted."""
        for node in self.sim.nodes.values():
            for (kind, key), h in self.items.items():
                got = node.store.get(kind, key)
                assert dominates(h.join, got), f"{node.id} holds a value nobody wrote: {got}"

    def check_acked_writes_are_durable(self, w: int, *, count_hints: bool) -> None:
        """Every acknowledged write sits on at least `w` owner slots: in the owner's store or (sloppy)
        in a persisted hint for that owner. Stores only grow and a hint goes away only once its
        owner stored it, so this holds at every instant, crashes included."""
        for (kind, key), h in self.items.items():
            owners = self.sim.owners(kind, key)
            stores = {o: self.sim.nodes[o].store.get(kind, key) for o in owners}
            hints = {o: [x.record for x in self.sim.hints_for(o) if (x.record.kind, x.record.key) == (kind, key)]
                     for o in owners} if count_hints else {}
            for rec in h.acked:
                covered = [o for o in owners if dominates(stores[o], rec)
                           or any(dominates(r, rec) for r in hints.get(o, ()))]
                assert len(covered) >= w, f"acknowledged write on only {covered} of {owners}: {rec}"

    def check_converged(self) -> None:
        """All replicas of every item are identical: equal digests for every partition's owners."""
        bad = self.sim.diverged_partitions()
        assert not bad, f"replicas differ after quiescence in partitions {bad}"
        for (kind, key), h in self.items.items():
            copies = self.sim.copies(kind, key)
            versions = {repr(r.version) if r is not None else None for r in copies.values()}
            assert len(versions) == 1, f"replicas of {kind.value}:{key} differ: {copies}"
            first = next(iter(copies.values()))
            for w in h.acked:
                assert dominates(first, w), f"acknowledged write missing after quiescence: {w}"
            self._check_semantics(kind, key, first, acked_only=True)

    def _check_semantics(self, kind: Kind, key: tuple[str, ...], rec: Record | None, *, acked_only: bool) -> None:
        h = self.items.get((kind, key), ItemHistory())
        if kind is Kind.MEMORY and acked_only and any(w.body.get("deleted") for w in h.acked):
            assert rec is not None and rec.body.get("deleted"), f"deleted memory reappeared: {rec}"
        if kind is Kind.COUNTER and rec is not None:
            got = PNCounter.from_wire(rec.body["state"])
            entries = {**got.increments, **{d: -n for d, n in got.decrements.items()}}
            tried = {d: n for w in h.attempted for d, n in _dots(w).items()}
            assert all(tried.get(d) == n for d, n in entries.items()), f"counter holds an unknown update: {entries}"
            for w in (h.acked if acked_only else ()):
                assert _dots(w).items() <= entries.items(), f"acknowledged counter increment lost: {_dots(w)}"
        if kind is Kind.SET and rec is not None:
            got_set = ORSet.from_wire(rec.body["state"])
            removed = {t for w in h.attempted for e in w.body["state"]["e"] for t in e[2]}
            for w in (h.acked if acked_only else ()):
                for element, live, _ in w.body["state"]["e"]:
                    if set(live) - removed:
                        assert element in got_set, f"acknowledged set add lost: {element} not in {got_set}"


def _dots(rec: Record) -> dict[str, int]:
    c = PNCounter.from_wire(rec.body["state"])
    return {**c.increments, **{d: -n for d, n in c.decrements.items()}}


# --- a seeded random run: the simulator's own fuzzer ------------------------------------------------

def quiesce(sim: ReplSim, history: History, timeout_s: float = 120.0) -> None:
    """Stop every fault, let hints drain, then repair: anti-entropy rounds when the simulation runs
    them, else a read at ALL of every item (read repair). Then every replica must agree."""
    sim.heal()
    for nid in sim.ids:
        sim.restart(nid)
        sim.fail_storage(nid, False)
    sim.faults.drop_rate = 0.0
    sim.run_for(sim.detect_delay_s + 0.01)
    assert sim.run_until_true(sim.idle, timeout_s), f"hints not delivered in {timeout_s}s: {sim.hints_pending()}"
    items = sorted(history.items, key=repr)
    # Faults stopped and hints ran: every acknowledged write is back in every quorum read (sloppy too).
    reads = [(kind, key, sim.read(sim.ids[i % len(sim.ids)], kind, key, Consistency.QUORUM))
             for i, (kind, key) in enumerate(items)]
    for (kind, key, _), done in zip(reads, sim.wait(r for _, _, r in reads), strict=True):
        assert done is not None and done.ok, f"quorum read failed with every node up: {done}"
        history.check_read(kind, key, done, must_see_acked=True)
    sim.run_until_true(sim.idle, timeout_s)
    if sim.anti_entropy:
        sim.run_until_true(lambda: not sim.diverged_partitions(), timeout_s, check_every_s=1.0)
    else:
        reqs = [sim.read(sim.ids[i % len(sim.ids)], kind, key, Consistency.ALL) for i, (kind, key) in enumerate(items)]
        sim.wait(reqs)
        sim.run_until_true(sim.idle, timeout_s)
    history.check_converged()


def run_random(seed: int, steps: int = 200, *, sloppy: bool = False, n_nodes: int = 5, drop_rate: float = 0.05,
               anti_entropy: bool = False) -> dict[str, Any]:
    """A random workload with random faults; raises AssertionError on any violated property."""
    rng = random.Random(seed)
    config = ReplicationConfig(sloppy_quorum=sloppy, anti_entropy_interval_s=5.0)
    sim = ReplSim(seed, n_nodes, config, partition_bits=4, drop_rate=drop_rate, dup_rate=0.02,
                  anti_entropy=anti_entropy)
    history, work = History(sim), Workload()
    mids = [f"m{i}" for i in range(8)]
    for _ in range(steps):
        op, via = rng.random(), rng.choice(sim.ids)
        if op < 0.45:
            batch = [_random_record(rng, work, mids) for _ in range(rng.randint(1, 3))]
            reqs = [sim.write(rng.choice(sim.ids), r, Consistency.QUORUM) for r in batch]
            for r, d in zip(batch, sim.wait(reqs), strict=True):
                history.wrote(r, d)
        elif op < 0.75:
            kind, key = rng.choice(sorted(history.items, key=repr)) if history.items else (Kind.MEMORY, ("ns", "m0"))
            [d] = sim.wait([sim.read(via, kind, key, Consistency.QUORUM)])
            history.check_read(kind, key, d, must_see_acked=not sloppy)
        elif op < 0.8:
            kind, key = Kind.SET, ("ns", "s0")
            [seen] = sim.wait([sim.read(via, kind, key, Consistency.QUORUM)])
            history.check_read(kind, key, seen, must_see_acked=not sloppy)
            removal = work.set_remove("s0", rng.randint(0, 3), seen.record if seen and seen.ok else None)
            if removal is not None:
                history.wrote(removal, sim.wait([sim.write(via, removal, Consistency.QUORUM)])[0])
        elif op < 0.87:
            down = [i for i in sim.ids if not sim.nodes[i].running]
            if len(down) < 2 and rng.random() < 0.6:
                sim.crash(rng.choice(sim.ids))
            elif down:
                sim.restart(rng.choice(down))
        elif op < 0.89:
            sim.fail_storage(rng.choice(sim.ids), rng.random() < 0.5)
        elif op < 0.92:
            sim.partition(rng.sample(sim.ids, rng.randint(1, 2))) if rng.random() < 0.6 else sim.heal()
        else:
            sim.run_for(rng.uniform(0.1, 5.0))
        history.check_no_phantoms()
        history.check_acked_writes_are_durable(2, count_hints=sloppy)
    quiesce(sim, history)
    return {"seed": seed, "steps": steps, "sloppy": sloppy, "items": len(history.items),
            "acked": sum(len(h.acked) for h in history.items.values()),
            "attempted": sum(len(h.attempted) for h in history.items.values()),
            "reads_checked": history.reads_checked, "trace": sim.trace_digest(), **sim.stats}


def _random_record(rng: random.Random, work: Workload, mids: list[str]) -> Record:
    x = rng.random()
    if x < 0.3:
        return work.memory(rng.choice(mids), rng.choice("abc"))
    if x < 0.4:
        return work.delete_memory(rng.choice(mids))
    if x < 0.6:
        return work.register(rng.choice(["k0", "k1"]), rng.randint(0, 9))
    if x < 0.8:
        return work.increment(rng.choice(["c0", "c1"]), rng.randint(1, 5))
    return work.set_add("s0", rng.randint(0, 3))


def main(argv: Iterable[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--seeds", type=int, default=1, help="run seeds seed .. seed+seeds-1")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--sloppy", action="store_true")
    ap.add_argument("--anti-entropy", action="store_true")
    args = ap.parse_args(list(argv) if argv is not None else None)
    for seed in range(args.seed, args.seed + args.seeds):
        try:
            print(run_random(seed, args.steps, sloppy=args.sloppy, anti_entropy=args.anti_entropy))
        except AssertionError:
            flags = " --sloppy" * args.sloppy + " --anti-entropy" * args.anti_entropy
            print(f"reproduce with seed={seed}: python -m testnet.replcheck --seed {seed} --steps {args.steps}{flags}",
                  file=sys.stderr)
            raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
