"""The signal.* and state.* actions, including resumable watches and subscriptions.

A signal at (namespace, key) is a register (LWW, TTL, compare-and-set), a counter or a set (CRDTs
that lose no update); a state is one document per agent, published by that agent only, readable by
every authenticated agent. Parsing and permissions here; storage in node/signal_store.py.
"""

from __future__ import annotations

from typing import Any

from crypto.envelope import Request
from crypto.errors import Forbidden, InvalidArgument, NotFound, Resync, TooLarge
from node import signal_store
from node import validate as v
from node.cluster_ops import SIGNAL_KINDS, consistency_of
from node.service import Deferred, Service, action
from node.session import Session
from ring.canonical import canonical_encoding
from ring.merge import Versioned
from ring.records import Kind

KEY_CHARS_MAX = 256
TTL_S_MAX = 10 * 365 * 86400.0
ELEMENTS_PER_REQUEST_MAX = 256  # signal.add / signal.remove `elements`
ELEMENT_BYTES_MAX = 256  # one set element as compact JSON (a string's quotes count)
# Changes replayed to a resuming watch; further behind must re-read (resync). The backlog goes out
# through the connection's push queue (NodeConfig.push_queue_max), so it must fit well inside it.
BACKLOG_MAX = 512


def _value(svc: Service, d: dict[str, Any], name: str, limit: int) -> Any:
    if name not in d:
        raise InvalidArgument(f"field {name!r} is required", field=name)
    v.stored_value(d[name], name, limit)
    return d[name]


@action("signal.set", "write")
async def signal_set(svc: Service, req: Request, session: Session) -> Any:
    d = req.data
    key = v.string(d, "key", chars_max=KEY_CHARS_MAX)
    value = _value(svc, d, "value", svc.config.signal_value_bytes_max)
    ttl_s = v.number(d, "ttl_s", None, lo=0.001, hi=TTL_S_MAX)
    if_version = v.integer(d, "if_version", None, lo=0)
    now = svc.wall_ms()
    incoming = Versioned(value, svc.stamp(), req.agent_id, False, None if ttl_s is None else now + int(ttl_s * 1000))
    if svc.cluster is not None:
        if if_version is not None:
            raise InvalidArgument("if_version (compare-and-set) is exact only on a single node; in cluster mode "
                                  "use signal.incr or signal.add, which never lose an update", field="if_version")
        return await svc.cluster.signal_put(req.ns or "", key, incoming, consistency_of(d))
    return await svc.db.write(
        lambda c: signal_store.signal_put(c, req.ns or "", key, incoming, if_version=if_version, now_ms=now))


def _expiry(d: dict[str, Any], now_ms: int) -> int | None:
    # As for registers: each write sets the expiry from its own ttl_s, and a write without one clears it.
    ttl_s = v.number(d, "ttl_s", None, lo=0.001, hi=TTL_S_MAX)
    return None if ttl_s is None else now_ms + int(ttl_s * 1000)


def _no_ttl_in_cluster(expires_ms: int | None) -> None:
    if expires_ms is not None:
        raise InvalidArgument("ttl_s on counters and sets is single-node only for now", field="ttl_s")


def _elements(d: dict[str, Any]) -> list[Any]:
    raw = d.get("elements")
    if not isinstance(raw, list):
        raise InvalidArgument("field 'elements' must be a list of JSON scalars", field="elements")
    if len(raw) > ELEMENTS_PER_REQUEST_MAX:
        raise TooLarge(f"field 'elements' has more than {ELEMENTS_PER_REQUEST_MAX} items", field="elements",
                       limit=ELEMENTS_PER_REQUEST_MAX)
    out: dict[str, Any] = {}
    for e in raw:
        if isinstance(e, dict | list):
            raise InvalidArgument("set elements must be JSON scalars (string, number, true, false, null)",
                                  field="elements")
        v.stored_value(e, "elements", ELEMENT_BYTES_MAX)
        out.setdefault(canonical_encoding(e), e)  # a repeated element counts once
    return list(out.values())


@action("signal.incr", "write")
async def signal_incr(svc: Service, req: Request, session: Session) -> Any:
    d = req.data
    key = v.string(d, "key", chars_max=KEY_CHARS_MAX)
    by = v.integer(d, "by", 1)
    now = svc.wall_ms()
    expires_ms, hlc = _expiry(d, now), svc.stamp()
    if svc.cluster is not None:
        _no_ttl_in_cluster(expires_ms)
        return await svc.cluster.signal_update(req.ns or "", key, Kind.COUNTER, hlc, "incr", by, consistency_of(d))
    return await svc.db.write(lambda c: signal_store.signal_incr(
        c, req.ns or "", key, by, hlc=hlc, writer=req.agent_id, expires_ms=expires_ms, now_ms=now))


@action("signal.add", "write")
async def signal_add(svc: Service, req: Request, session: Session) -> Any:
    d = req.data
    key = v.string(d, "key", chars_max=KEY_CHARS_MAX)
    elements = _elements(d)
    now = svc.wall_ms()
    expires_ms, hlc = _expiry(d, now), svc.stamp()
    # The node id and its HLC stamp make the add's tag unique across every replica.
    tag = f"{svc.identity.agent_id}:{hlc}"
    if svc.cluster is not None:
        _no_ttl_in_cluster(expires_ms)
        return await svc.cluster.signal_update(req.ns or "", key, Kind.SET, hlc, "add", elements, consistency_of(d))
    return await svc.db.write(lambda c: signal_store.signal_add(
        c, req.ns or "", key, elements, tag=tag, hlc=hlc, writer=req.agent_id, expires_ms=expires_ms, now_ms=now))


@action("signal.remove", "write")
async def signal_remove(svc: Service, req: Request, session: Session) -> Any:
    d = req.data
    key = v.string(d, "key", chars_max=KEY_CHARS_MAX)
    elements = _elements(d)
    now = svc.wall_ms()
    expires_ms, hlc = _expiry(d, now), svc.stamp()
    if svc.cluster is not None:
        _no_ttl_in_cluster(expires_ms)
        return await svc.cluster.signal_update(req.ns or "", key, Kind.SET, hlc, "remove", elements,
                                               consistency_of(d))
    return await svc.db.write(lambda c: signal_store.signal_remove(
        c, req.ns or "", key, elements, hlc=hlc, writer=req.agent_id, expires_ms=expires_ms, now_ms=now))


@action("signal.delete", "write")
async def signal_delete(svc: Service, req: Request, session: Session) -> Any:
    key = v.string(req.data, "key", chars_max=KEY_CHARS_MAX)
    if_version = v.integer(req.data, "if_version", None, lo=0)
    now = svc.wall_ms()
    tomb = Versioned(None, svc.stamp(), req.agent_id, True, None)
    if svc.cluster is not None:
        if if_version is not None:
            raise InvalidArgument("if_version is exact only on a single node", field="if_version")
        return await svc.cluster.signal_delete(req.ns or "", key, tomb.hlc, req.agent_id, consistency_of(req.data))
    return await svc.db.write(
        lambda c: signal_store.signal_put(c, req.ns or "", key, tomb, if_version=if_version, now_ms=now))


@action("signal.get", "read")
async def signal_get(svc: Service, req: Request, session: Session) -> Any:
    key = v.string(req.data, "key", chars_max=KEY_CHARS_MAX)
    now = svc.wall_ms()
    if svc.cluster is not None:
        kind = v.string(req.data, "kind", None, chars_max=16)
        if kind is not None and kind not in SIGNAL_KINDS:
            raise InvalidArgument("kind is register, counter or set", field="kind")
        return await svc.cluster.signal_get(req.ns or "", key, now, kind, consistency_of(req.data))
    return await svc.db.read(lambda c: signal_store.signal_get(c, req.ns or "", key, now))


@action("signal.list", "read")
async def signal_list(svc: Service, req: Request, session: Session) -> Any:
    svc.single_node_only(req.action)
    prefix = v.string(req.data, "prefix", "", chars_max=KEY_CHARS_MAX, allow_empty=True)
    limit = v.integer(req.data, "limit", 100, lo=1, hi=svc.config.page_limit_max)
    now = svc.wall_ms()
    return await svc.db.read(lambda c: signal_store.signal_list(c, req.ns or "", prefix, limit, now))


async def _open_watch(svc: Service, req: Request, session: Session, topic: str, ns: str, key: str,
                      exact: bool) -> Deferred:
    svc.single_node_only(req.action)
    since = v.integer(req.data, "since", None, lo=0)
    if len(session.subscriptions) >= svc.config.watches_per_connection_max:
        raise TooLarge(f"at most {svc.config.watches_per_connection_max} watches per connection",
                       limit=svc.config.watches_per_connection_max)
    allowed = None
    if topic == "signal":
        # Re-checked at every delivery: a revoked or expired grant ends the watch (`forbidden`).
        grants, action = svc.grants_of(req), req.action
        allowed = lambda: svc.policy.readable(req.agent_id, ns, grants, svc.wall_ms(), action)  # noqa: E731
    # Open (buffering) before reading the current seq, so no change can fall between the two.
    sub = svc.hub.open(topic, ns, key, exact, session.pusher(req.binary), since=since or 0, allowed=allowed)
    session.add(sub)
    try:
        current = await svc.db.read(signal_store.last_seq)
        if since is not None and since > current:
            raise InvalidArgument(f"since={since} is ahead of this node's change log ({current})", current=current)
        if since is None:
            sub.last_seq = current
        elif since < current:
            backlog = await svc.db.read(
                lambda c: signal_store.changes_since(c, topic, ns, key, exact, since, BACKLOG_MAX + 1))
            if len(backlog) > BACKLOG_MAX:
                raise Resync(f"more than {BACKLOG_MAX} changes missed; re-read current values",
                             last_seq=since, backlog_max=BACKLOG_MAX)
            sub.buffered[:0] = backlog
    except BaseException:
        session.remove(sub.sub_id)
        raise
    # Backlog and anything committed meanwhile flow out right after this reply, in seq order.
    return Deferred({"sub": sub.sub_id, "seq": current}, lambda: svc.hub.go_live(sub))


@action("signal.watch", "read")
async def signal_watch(svc: Service, req: Request, session: Session) -> Any:
    d = req.data
    key = v.string(d, "key", None, chars_max=KEY_CHARS_MAX)
    prefix = v.string(d, "prefix", None, chars_max=KEY_CHARS_MAX, allow_empty=True)
    if (key is None) == (prefix is None):
        raise InvalidArgument("give exactly one of `key` or `prefix`")
    return await _open_watch(svc, req, session, "signal", req.ns or "", key if key is not None else prefix,
                             key is not None)


@action("watch.cancel", "self", needs_ns=False)
async def watch_cancel(svc: Service, req: Request, session: Session) -> Any:
    sub = v.integer(req.data, "sub", lo=0)
    if not session.remove(sub):
        raise NotFound(f"no watch {sub} on this connection", sub=sub)
    return {"sub": sub, "cancelled": True}


@action("state.publish", "self")
async def state_publish(svc: Service, req: Request, session: Session) -> Any:
    if req.ns != req.agent_id and req.agent_id not in svc.policy.operator_ids:
        raise Forbidden("an agent publishes only its own state (ns must be its agent id)")
    doc = _value(svc, req.data, "doc", svc.config.state_bytes_max)
    hlc = svc.stamp()
    if svc.cluster is not None:
        return await svc.cluster.state_publish(req.ns or "", doc, hlc, consistency_of(req.data))
    return await svc.db.write(lambda c: signal_store.state_publish(c, req.ns or "", doc, hlc))


def _state_target(svc: Service, req: Request) -> str:
    # States are readable by every authenticated agent: publishing is how agents share them.
    agent = v.string(req.data, "agent", req.ns, chars_max=64)
    if not agent:
        raise InvalidArgument("give the `agent` whose state to read (or put it in `ns`)")
    return str(agent)


@action("state.get", "self", needs_ns=False)
async def state_get(svc: Service, req: Request, session: Session) -> Any:
    agent = _state_target(svc, req)
    if svc.cluster is not None:
        return await svc.cluster.state_get(agent, consistency_of(req.data))
    return await svc.db.read(lambda c: signal_store.state_get(c, agent))


@action("state.subscribe", "self", needs_ns=False)
async def state_subscribe(svc: Service, req: Request, session: Session) -> Any:
    agent = _state_target(svc, req)
    return await _open_watch(svc, req, session, "state", agent, "", True)

