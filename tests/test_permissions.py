"""AccessPolicy: ownership, public namespace, grants (replacement, revocation, expiry), operators."""

from __future__ import annotations

import pytest

from crypto.errors import BadSignature, Expired, Forbidden
from crypto.grants import make_grant, make_revocation, parse_grant, parse_revocation
from crypto.identity import Identity
from node.permissions import READ, WRITE, AccessPolicy

OWNER, BOB, CAROL, OP = (Identity.from_private_bytes(bytes([i]) * 32) for i in (1, 2, 3, 4))
NOW = 1_700_000_000_000
NS = OWNER.agent_id


def grant(to: Identity, *, gid: str, actions: list[str] = ["read"], exp: int = NOW + 60_000,  # noqa: B006
          by: Identity = OWNER) -> object:
    return parse_grant(make_grant(by, grantee=to.agent_id, ns=NS, actions=actions, exp_ms=exp, now_ms=NOW - 1, gid=gid))


def test_owner_public_and_operator() -> None:
    p = AccessPolicy(frozenset({OP.agent_id}))
    p.check(OWNER.agent_id, NS, "memory.store", WRITE, [], NOW)
    p.check(BOB.agent_id, "public", "memory.store", WRITE, [], NOW)
    p.check(OP.agent_id, NS, "memory.delete", WRITE, [], NOW)
    with pytest.raises(Forbidden):
        p.check(BOB.agent_id, NS, "memory.get", READ, [], NOW)
    with pytest.raises(Forbidden):
        p.check(BOB.agent_id, "public", "admin.sweep", "admin", [], NOW)


def test_replaced_grant_stops_working_and_revocation_is_scoped() -> None:
    p = AccessPolicy(frozenset())
    p.add_grant(grant(BOB, gid="g1"))  # type: ignore[arg-type]
    p.check(BOB.agent_id, NS, "memory.get", READ, [], NOW)
    p.add_grant(grant(CAROL, gid="g1"))  # type: ignore[arg-type]
    with pytest.raises(Forbidden):
        p.check(BOB.agent_id, NS, "memory.get", READ, [], NOW)
    p.check(CAROL.agent_id, NS, "memory.get", READ, [], NOW)
    # A revocation of the same gid in another namespace changes nothing here.
    p.revoke(parse_revocation(make_revocation(BOB, gid="g1", ns=BOB.agent_id, now_ms=NOW)))
    p.check(CAROL.agent_id, NS, "memory.get", READ, [], NOW)
    p.revoke(parse_revocation(make_revocation(OWNER, gid="g1", ns=NS, now_ms=NOW)))
    with pytest.raises(Forbidden):
        p.check(CAROL.agent_id, NS, "memory.get", READ, [], NOW)
    with pytest.raises(BadSignature):
        p.add_grant(grant(BOB, gid="g2", by=BOB))  # type: ignore[arg-type]


def test_expired_grant_says_expired_and_is_forgotten() -> None:
    p = AccessPolicy(frozenset())
    p.add_grant(grant(BOB, gid="g", exp=NOW + 10))  # type: ignore[arg-type]
    p.check(BOB.agent_id, NS, "memory.get", READ, [], NOW)
    with pytest.raises(Expired):
        p.check(BOB.agent_id, NS, "memory.get", READ, [], NOW + 10)
    assert p.forget_expired(NOW + 10) == 1
    with pytest.raises(Forbidden):
        p.check(BOB.agent_id, NS, "memory.get", READ, [], NOW + 10)


def test_replacing_and_revoking_leave_no_empty_entries() -> None:
    p = AccessPolicy(frozenset())
    for i in range(50):
        p.add_grant(grant(BOB if i % 2 else CAROL, gid=f"g{i % 10}"))  # type: ignore[arg-type]
    assert sum(len(g) for g in p._stored.values()) == len(p._grantee_of) == 10
    for i in range(10):
        p.revoke(parse_revocation(make_revocation(OWNER, gid=f"g{i}", ns=NS, now_ms=NOW)))
    assert p._stored == {} and p._grantee_of == {}
