"""Who may do what: namespace ownership, the shared public namespace, the operator, and grants.

Pure policy over already-verified identities and parsed grants; the node feeds it stored grants
and revocations. It never touches storage or the network.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from crypto.errors import BadSignature, Expired, Forbidden, InvalidArgument
from crypto.grants import Grant, Revocation

READ, WRITE, ADMIN = "read", "write", "admin"


@dataclass(slots=True)
class AccessPolicy:
    """Decides `allowed(agent, ns, action, class)`.

    - The operator identities may do anything.
    - An agent owns the namespace equal to its agent id.
    - `public_namespace` (default "public") is readable and writable by every authenticated agent;
      a record there can be deleted only by its owner or the operator (checked by the action).
    - Anything else needs a grant signed by the namespace's owner (or an operator), presented with
      the request or stored with `grant.put`, unexpired and not revoked.
    """

    operator_ids: frozenset[str]
    public_namespace: str = "public"
    _stored: dict[tuple[str, str], dict[str, Grant]] = field(default_factory=dict)  # (grantee, ns) -> gid -> grant
    _grantee_of: dict[tuple[str, str], str] = field(default_factory=dict)  # (ns, gid) -> grantee
    _revoked: set[tuple[str, str]] = field(default_factory=set)  # (ns, gid): a revocation binds to its namespace

    def owns(self, agent_id: str, ns: str) -> bool:
        return agent_id == ns or agent_id in self.operator_ids

    def add_grant(self, grant: Grant) -> None:
        if not grant.issued_by_owner(self.operator_ids):
            raise BadSignature("grant is not signed by the namespace owner", ns=grant.ns, gid=grant.gid)
        # A grant replaces any earlier one with the same (ns, gid), whoever its grantee was.
        self._drop(grant.ns, grant.gid)
        self._stored.setdefault((grant.grantee, grant.ns), {})[grant.gid] = grant
        self._grantee_of[(grant.ns, grant.gid)] = grant.grantee

    def _drop(self, ns: str, gid: str) -> None:
        grantee = self._grantee_of.pop((ns, gid), None)
        if grantee is None:
            return
        grants = self._stored.get((grantee, ns))
        if grants is not None:
            grants.pop(gid, None)
            if not grants:
                del self._stored[(grantee, ns)]

    def revoke(self, rev: Revocation) -> None:
        if not (rev.issuer_id == rev.ns or rev.issuer_id in self.operator_ids):
            raise BadSignature("revocation is not signed by the namespace owner", ns=rev.ns, gid=rev.gid)
        # Keyed by (ns, gid): an owner can only revoke grants of its own namespace, whatever gid it names.
        self._revoked.add((rev.ns, rev.gid))
        self._drop(rev.ns, rev.gid)

    def forget_expired(self, now_ms: int) -> int:
        n = 0
        for grants in list(self._stored.values()):
            for gr in [gr for gr in grants.values() if gr.exp_ms <= now_ms]:
                self._drop(gr.ns, gr.gid)
                n += 1
        return n

    def check(
        self, agent_id: str, ns: str, action: str, action_class: str, presented: Iterable[Grant], now_ms: int
    ) -> None:
        """Return if allowed; raise Forbidden, or Expired when only an expired grant would allow it."""
        if agent_id in self.operator_ids or agent_id == ns:
            return
        if ns == self.public_namespace and action_class in (READ, WRITE):
            return
        expired_match = False
        candidates = list(presented) + list(self._stored.get((agent_id, ns), {}).values())
        for g in candidates:
            if g.grantee != agent_id or g.ns != ns or (g.ns, g.gid) in self._revoked:
                continue
            if not g.issued_by_owner(self.operator_ids):
                continue
            if g.allows(agent_id, ns, action, action_class, now_ms):
                return
            if g.exp_ms <= now_ms and g.allows(agent_id, ns, action, action_class, g.exp_ms - 1):
                expired_match = True
        if expired_match:
            raise Expired(f"the grant for {action} on namespace {ns!r} has expired", ns=ns, action=action)
        raise Forbidden(f"agent {agent_id} may not {action} in namespace {ns!r}", ns=ns, action=action)

    def readable(self, agent_id: str, ns: str, presented: Iterable[Grant], now_ms: int,
                 action: str = "memory.search") -> bool:
        try:
            self.check(agent_id, ns, action, READ, presented, now_ms)
        except (Forbidden, Expired):
            return False
        return True


def require_namespace(ns: str | None) -> str:
    if not ns:
        raise InvalidArgument("this action needs a namespace (`ns`)")
    return ns
