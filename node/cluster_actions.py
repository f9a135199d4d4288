"""Actions that show the cluster as this node sees it (membership from gossip).

Read-only views for agents and operators; it must not change membership or placement.
"""

from __future__ import annotations

from typing import Any

from crypto.envelope import Request
from crypto.errors import Unavailable
from gossip.messages import MemberView
from node.service import Service, action
from node.session import Session


def member_to_wire(m: MemberView) -> dict[str, Any]:
    meta = m.meta
    return {"id": m.id, "addr": m.addr, "state": m.state.name.lower(), "incarnation": m.incarnation,
            "meta": {"roles": list(meta.roles), "capability": meta.capability, "storage_bytes": meta.storage_bytes,
                     "load": meta.load, "endpoint": meta.endpoint, "version": meta.version}}


@action("cluster.members", "self", needs_ns=False)
async def cluster_members(svc: Service, req: Request, session: Session) -> Any:
    """Every member this node knows of (alive, suspect, dead, left), itself included."""
    if svc.membership is None:
        raise Unavailable("this node runs without gossip (started with --gossip off)")
    return {"node": svc.identity.agent_id, "members": [member_to_wire(m) for m in svc.membership.members()]}
