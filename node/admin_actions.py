"""Node-level actions: health, stats, storing grants and revocations, and operator upkeep.

Grants are verified here (owner signature) before they are stored and enforced by AccessPolicy.
"""

from __future__ import annotations

import time
from typing import Any

from crypto.envelope import Request
from crypto.errors import BadSignature, InvalidArgument
from crypto.grants import parse_grant, parse_revocation
from crypto.session import COUNTER_WINDOW, accept_session
from node import validate as v
from node.database import Applied
from node.service import Service, action
from node.session import Session
from node.validate import INT_MAX

TOKEN_CHARS_MAX = 4096


@action("health", "self", needs_ns=False)
async def health(svc: Service, req: Request, session: Session) -> Any:
    return {"status": "ok", "node": svc.identity.agent_id, "time_ms": svc.wall_ms()}


@action("stats", "self", needs_ns=False)
async def stats(svc: Service, req: Request, session: Session) -> Any:
    def counts(conn: Any) -> dict[str, int]:
        q = {
            "memories": "SELECT COUNT(*) FROM memories WHERE deleted=0",
            "tombstones": "SELECT COUNT(*) FROM memories WHERE deleted=1",
            "links": "SELECT COUNT(*) FROM links",
            "signals": "SELECT COUNT(*) FROM signals WHERE deleted=0",
            "states": "SELECT COUNT(*) FROM states",
            "namespaces": "SELECT COUNT(*) FROM namespaces",
            "changes": "SELECT COUNT(*) FROM changes",
        }
        return {k: int(conn.execute(sql).fetchone()[0]) for k, sql in q.items()}

    uptime_s = time.monotonic() - svc.started_s
    total = sum(svc.requests.values())
    return {
        "node": svc.identity.agent_id,
        "uptime_s": round(uptime_s, 3),
        "counts": await svc.db.read(counts),
        "index": svc.spaces.statistics(),
        "requests": dict(svc.requests),
        "errors": dict(svc.errors),
        "requests_per_s": round(total / uptime_s, 3) if uptime_s > 0 else 0.0,
        "storage": {"batches": svc.db.batches, "writes": svc.db.writes},
        "embedding": {"batches": svc.embed_batcher.batches, "texts": svc.embed_batcher.texts},
        "watches": len(svc.hub),
        "loop_lag_ms": {"max": round(svc.lag_max_ms, 2), "max_since_last_stats": round(_take_window(svc), 2)},
        "verifier": svc.verifier.statistics(),
        "embedder": svc.embedder.embedder_id,
        "dim": svc.config.dim,
        **({"gossip": svc.membership.statistics()} if svc.membership is not None else {}),
        **({"cluster": svc.cluster.r.statistics()} if svc.cluster is not None else {}),
    }


def _take_window(svc: Service) -> float:
    out, svc.lag_window_max_ms = svc.lag_window_max_ms, 0.0
    return out


@action("session.open", "self", needs_ns=False)
async def session_open(svc: Service, req: Request, session: Session) -> Any:
    """Start an authenticated session on this connection (see crypto/session.py). Only a request
    signed with Ed25519 may open one: a session cannot vouch for another session."""
    if not req.signature:
        raise InvalidArgument("session.open must be a signed request, not a session request")
    raw = req.data.get("x25519")
    try:
        client_eph = bytes.fromhex(raw) if isinstance(raw, str) and len(raw) == 64 else raw
    except ValueError:
        raise InvalidArgument("x25519 must be 64 hex characters (or 32 bytes)") from None
    if not isinstance(client_eph, bytes) or len(client_eph) != 32:
        raise InvalidArgument("x25519 must be a 32-byte X25519 public key (bytes, or 64 hex chars)")
    try:
        key, hello = accept_session(svc.identity, req.public_key, client_eph)
    except ValueError:
        raise InvalidArgument("x25519 is not a valid X25519 public key") from None
    state = session.open_auth(key, req.public_key)
    return {"sid": state.sid, "x25519": hello.node_ephemeral.hex(), "node_pk": hello.node_public_key.hex(),
            "node_sig": hello.node_signature.hex(), "counter_window": COUNTER_WINDOW}


@action("grant.put", "self", needs_ns=False)
async def grant_put(svc: Service, req: Request, session: Session) -> Any:
    """Store a grant so the grantee need not present it. Anyone may deliver a grant, but it only
    takes effect if its namespace's owner (or an operator) signed it."""
    grant = parse_grant(v.string(req.data, "grant", chars_max=TOKEN_CHARS_MAX))
    if grant.exp_ms <= svc.wall_ms():
        raise InvalidArgument("grant has already expired", gid=grant.gid)
    if grant.exp_ms > INT_MAX:
        raise InvalidArgument("grant expiry must fit in 64 signed bits", gid=grant.gid)
    if not grant.issued_by_owner(svc.policy.operator_ids):
        raise BadSignature("grant is not signed by the namespace owner", ns=grant.ns, gid=grant.gid)

    def put(conn: Any) -> Applied[dict[str, Any]]:
        conn.execute(
            "INSERT INTO grants(ns, gid, grantee, exp_ms, token) VALUES(?,?,?,?,?) ON CONFLICT(ns, gid) DO UPDATE"
            " SET grantee=excluded.grantee, exp_ms=excluded.exp_ms, token=excluded.token",
            (grant.ns, grant.gid, grant.grantee, grant.exp_ms, grant.token))
        # The grant itself is the effect: applied on commit, in commit order (so two puts of one
        # (ns, gid) end in memory as in the database), and never if the write failed.
        return Applied({"gid": grant.gid, "ns": grant.ns, "grantee": grant.grantee, "exp_ms": grant.exp_ms},
                       (grant,))

    return await svc.db.write(put)


@action("grant.revoke", "self", needs_ns=False)
async def grant_revoke(svc: Service, req: Request, session: Session) -> Any:
    rev = parse_revocation(v.string(req.data, "revocation", chars_max=TOKEN_CHARS_MAX))
    if not rev.issued_by_owner(svc.policy.operator_ids):
        raise BadSignature("revocation is not signed by the namespace owner", ns=rev.ns, gid=rev.gid)

    def put(conn: Any) -> Applied[dict[str, Any]]:
        conn.execute("INSERT INTO revocations(ns, gid, token) VALUES(?,?,?) ON CONFLICT(ns, gid) DO NOTHING",
                     (rev.ns, rev.gid, rev.token))
        conn.execute("DELETE FROM grants WHERE gid=? AND ns=?", (rev.gid, rev.ns))
        return Applied({"gid": rev.gid, "revoked": True})

    # Revoke at once (before the write): refusing access early is the safe side of a failure.
    svc.policy.revoke(rev)
    return await svc.db.write(put)


@action("admin.sweep", "admin", needs_ns=False)
async def admin_sweep(svc: Service, req: Request, session: Session) -> Any:
    return await svc.sweep()


@action("admin.seal", "admin", needs_ns=False)
async def admin_seal(svc: Service, req: Request, session: Session) -> Any:
    await svc.spaces.seal_if_needed(force=True)
    return svc.spaces.statistics()
