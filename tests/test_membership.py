"""The membership shell: real SwimNodes, signed frames and the in-memory transport under a virtual
clock — join through one seed, detect a crash, rejoin after a restart with a higher incarnation,
drop foreign and forged frames, require network admission."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from crypto.errors import Expired, Forbidden
from crypto.identity import Identity
from gossip.admission import make_admission
from gossip.codec import encode_frame
from gossip.config import GossipConfig
from gossip.messages import MemberView, Meta, Ping, State
from node.gossip_transport import MemoryHub
from node.membership import EPOCH_2020_S, Membership, boot_incarnation

CONFIG = GossipConfig.local()
WALL_S = EPOCH_2020_S + 1_000_000.0


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


def make(hub: MemoryHub, name: str, tmp: Path, seeds: tuple[str, ...] = (), identity: Identity | None = None,
         network: str = "net", **kw: Any) -> Membership:
    data = tmp / name
    data.mkdir(exist_ok=True)
    return Membership(identity or Identity.generate(), f"mem:{name}", Meta(roles=("storage",)),
                      hub.transport(f"mem:{name}"), config=CONFIG, network=network, seeds=seeds,
                      data_dir=data, rng_seed=hash(name) & 0xFFFF, wall_clock=lambda: WALL_S, **kw)


async def wait_view(m: Membership, predicate: Callable[[list[MemberView]], bool], timeout_s: float = 120) -> None:
    """Wait (virtual time) until `predicate(m.members())` holds, woken by member events."""
    events = m.subscribe()
    with trio.fail_after(timeout_s):
        while not predicate(m.members()):
            await events.receive()


def alive_ids(view: list[MemberView]) -> set[str]:
    return {v.id for v in view if v.state == State.ALIVE}


async def test_join_converge_crash_detect_and_rejoin(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    hub = MemoryHub()
    nodes = [make(hub, "n0", tmp_path)] + [make(hub, f"n{i}", tmp_path, seeds=("mem:n0",)) for i in range(1, 5)]
    ids = {m.node_id for m in nodes}
    async with trio.open_nursery() as nursery:
        scopes = []
        for m in nodes:
            scope = trio.CancelScope()
            scopes.append(scope)

            async def run(m: Membership = m, scope: trio.CancelScope = scope,
                          task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
                with scope:
                    await m.run(task_status=task_status)
            await nursery.start(run)
        for m in nodes:
            await wait_view(m, lambda v: alive_ids(v) == ids)

        # Crash n4 (its transport disappears with it): every other member declares it dead.
        victim = nodes[4]
        old_incarnation = victim.swim.incarnation
        scopes[4].cancel()
        for m in nodes[:4]:
            await wait_view(m, lambda v: any(x.id == victim.node_id and x.state == State.DEAD for x in v))

        # Restart it with the same identity and data dir: it comes back above its old incarnation.
        reborn = make(hub, "n4", tmp_path, seeds=("mem:n1",), identity=victim.identity)
        assert reborn.swim.incarnation > old_incarnation
        await nursery.start(reborn.run)
        for m in [*nodes[:4], reborn]:
            await wait_view(m, lambda v: alive_ids(v) == ids)
        assert all(m.statistics()["dropped"] == {} for m in nodes[:4])
        nursery.cancel_scope.cancel()


async def test_foreign_and_forged_frames_are_dropped_and_counted(tmp_path: Path,
                                                                 autojump_clock: trio.testing.MockClock) -> None:
    hub = MemoryHub()
    a = make(hub, "a", tmp_path)
    stranger = Identity.generate()
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        sender = hub.transport("mem:x")
        await nursery.start(sender.run)
        foreign = encode_frame(stranger, "other-net", "mem:x", Ping(1, a.node_id))
        forged = bytearray(encode_frame(stranger, "net", "mem:x", Ping(2, a.node_id)))
        forged[-3] ^= 1  # inside the signed body
        for frame in (foreign, bytes(forged), b"\x00garbage"):
            await sender.send("mem:a", frame)
        await trio.testing.wait_all_tasks_blocked()  # the receive loop has taken all three
        assert a.dropped == {"forbidden": 1, "bad_signature": 1, "bad_frame": 1}
        assert stranger.agent_id not in {v.id for v in a.members()}  # nothing it said was applied
        nursery.cancel_scope.cancel()


def test_boot_incarnation_never_goes_backwards(tmp_path: Path) -> None:
    first = boot_incarnation(tmp_path, WALL_S)
    assert first == WALL_S - EPOCH_2020_S
    # A clock that went back (or a fast restart) still moves forward, past the persisted value.
    assert boot_incarnation(tmp_path, WALL_S - 500) == first + 1
    assert boot_incarnation(tmp_path, WALL_S + 10) == first + 10
    # Without a data directory the clock alone decides.
    assert boot_incarnation(None, WALL_S + 3) == first + 3


NETWORK_KEY = Identity.generate()
WALL_MS = int(WALL_S * 1000)
DAY_MS = 86_400_000


def admission(identity: Identity, days: float = 1.0) -> str:
    exp_ms = WALL_MS + int(days * DAY_MS)
    return make_admission(NETWORK_KEY, identity.agent_id, "net", exp_ms=exp_ms, now_ms=min(WALL_MS, exp_ms) - DAY_MS)


async def test_a_network_with_admission_keeps_out_a_node_without_a_grant(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    hub = MemoryHub()
    ids = [Identity.generate() for _ in range(3)]
    members = [make(hub, f"n{i}", tmp_path, seeds=("mem:n0",) if i else (), identity=ident,
                    admission_token=admission(ident), network_key=NETWORK_KEY.public_key)
               for i, ident in enumerate(ids)]
    # The intruder runs without checks and shows someone else's grant; it knows the seed's address.
    intruder = make(hub, "x", tmp_path, seeds=("mem:n0",), admission_token=admission(ids[1]))
    async with trio.open_nursery() as nursery:
        for m in [*members, intruder]:
            await nursery.start(m.run)
        want = {i.agent_id for i in ids}
        for m in members:
            await wait_view(m, lambda v: alive_ids(v) == want)
        await trio.sleep(30)  # virtual: many probe, gossip and seed-retry rounds
        for m in members:
            assert intruder.node_id not in {v.id for v in m.members()}
        assert members[0].statistics()["swim"]["dropped_sender_not_admitted"] >= 1
        assert members[0].statistics()["admission"]["refused"] >= 1
        assert {v.id for v in intruder.members()} == {intruder.node_id}
        nursery.cancel_scope.cancel()


def test_a_node_refuses_to_start_without_a_valid_grant(tmp_path: Path) -> None:
    hub = MemoryHub()
    me = Identity.generate()
    with pytest.raises(Forbidden):
        make(hub, "a", tmp_path, identity=me, network_key=NETWORK_KEY.public_key)
    with pytest.raises(Expired):
        make(hub, "a", tmp_path, identity=me, admission_token=admission(me, days=-1),
             network_key=NETWORK_KEY.public_key)
    with pytest.raises(Forbidden):
        make(hub, "a", tmp_path, identity=me, admission_token=admission(Identity.generate()),
             network_key=NETWORK_KEY.public_key)


async def test_a_renewed_grant_replaces_the_old_one_and_a_bad_one_changes_nothing(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    hub = MemoryHub()
    me = Identity.generate()
    m = make(hub, "a", tmp_path, identity=me, admission_token=admission(me), network_key=NETWORK_KEY.public_key)
    inc = m.swim.incarnation
    with pytest.raises(Forbidden):
        await m.update_admission(admission(Identity.generate()))
    assert m.swim.incarnation == inc
    renewed = admission(me, days=30)
    await m.update_admission(renewed)
    assert m.swim.meta.admission == renewed and m.swim.incarnation == inc + 1
    await m.update_meta(Meta(roles=("storage", "gpu")))  # metadata without a token keeps the grant
    assert m.swim.meta.admission == renewed and m.swim.meta.roles == ("storage", "gpu")

