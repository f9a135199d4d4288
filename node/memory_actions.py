"""The memory.* actions: store, get, delete, list, link, unlink, related, search.

Validates fields, checks record-level permissions, and calls the storage and search functions.
"""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import trio

from crypto.envelope import Request
from crypto.errors import BadSignature, InvalidArgument
from crypto.provenance import verify_record
from node import link_store, memory_store
from node import validate as v
from node.cluster_ops import consistency_of
from node.memory_store import NewMemory, decode_cursor, encode_cursor
from node.permissions import READ
from node.search import compile_filter, run_search
from node.service import Service, action
from node.session import Session

ID_CHARS_MAX = 128
EMBED_INLINE_CHARS_MAX = 4000  # longer texts are embedded in a worker thread


def client_space(name: str) -> str:
    """Client-supplied vectors live in their own space per declared embedder name."""
    return f"client:{name}"


async def embed_text(svc: Service, text: str) -> np.ndarray:
    if len(text) <= EMBED_INLINE_CHARS_MAX:
        return await svc.embed_batcher.embed(text)  # joins concurrent requests' texts into one call
    return (await trio.to_thread.run_sync(svc.embedder.embed, [text]))[0]


@action("memory.store", "write")
async def memory_store_action(svc: Service, req: Request, session: Session) -> Any:
    d, ns = req.data, req.ns or ""
    cfg = svc.config
    mid = v.string(d, "id", None, chars_max=ID_CHARS_MAX) or uuid.uuid4().hex
    content = v.string(d, "content", chars_max=cfg.memory_content_chars_max)
    memory_type = v.string(d, "memory_type", "note", chars_max=64)
    metadata = v.mapping(d, "metadata", {})
    v.stored_value(metadata, "metadata", cfg.metadata_bytes_max)
    ttl_s = v.number(d, "ttl_s", None, lo=0.001, hi=10 * 365 * 86400.0)
    vector = v.vector(d, "vector", cfg.dim)
    if vector is not None:
        space = client_space(v.string(d, "embedder", "client", chars_max=64))
    else:
        if "embedder" in d and d["embedder"] not in (None, svc.embedder.embedder_id):
            raise InvalidArgument("`embedder` names the embedder of a client-sent `vector`; none was sent")
        space = svc.embedder.embedder_id
        vector = await embed_text(svc, content)
    author_sig = await _record_signature(svc, req, ns, mid, memory_type, content,
                                         explicit_id=d.get("id") is not None)
    now = svc.wall_ms()
    m = NewMemory(
        ns=ns, id=mid, owner=req.agent_id, memory_type=memory_type, content=content, metadata=metadata,
        vector=vector, embedder=space, created=svc.stamp(),
        expires_ms=None if ttl_s is None else now + int(ttl_s * 1000),
        author_sig=author_sig, author_pk=req.public_key if author_sig else None,
    )
    if svc.cluster is not None:
        return await svc.cluster.store_memory(m, consistency_of(d))
    return await svc.db.write(lambda c: memory_store.store(c, m, now))


async def _record_signature(svc: Service, req: Request, ns: str, mid: str, memory_type: str, content: str,
                            *, explicit_id: bool) -> bytes | None:
    """Check the author's record signature (`sig`) if sent; required if the node says so.
    Verified in a worker thread: Ed25519 releases the GIL, so this uses the other core."""
    raw = req.data.get("sig")
    if raw is None:
        if svc.config.require_record_signatures:
            raise InvalidArgument("this node requires a record signature `sig` on memory.store")
        return None
    if isinstance(raw, str):
        try:
            raw = bytes.fromhex(raw)
        except ValueError:
            raise InvalidArgument("sig must be 64 bytes or 128 hex characters") from None
    if not isinstance(raw, bytes) or len(raw) != 64:
        raise InvalidArgument("sig must be 64 bytes or 128 hex characters")
    if not explicit_id:
        raise InvalidArgument("a signed record needs a client-chosen `id` (the signature covers it)")
    sig = raw
    ok = await trio.to_thread.run_sync(verify_record, req.public_key, sig, ns, mid, memory_type, content,
                                       limiter=svc.verify_limiter)
    if not ok:
        raise BadSignature("the record signature `sig` does not verify for (ns, id, memory_type, content)")
    return sig


@action("memory.get", "read")
async def memory_get_action(svc: Service, req: Request, session: Session) -> Any:
    mid = v.string(req.data, "id", chars_max=ID_CHARS_MAX)
    include_vector = v.boolean(req.data, "include_vector", False)
    now = svc.wall_ms()
    if svc.cluster is not None:
        return await svc.cluster.get_memory(req.ns or "", mid, now, consistency_of(req.data),
                                            include_vector=include_vector)
    return await svc.db.read(lambda c: memory_store.get(c, req.ns or "", mid, now, include_vector=include_vector))


@action("memory.delete", "write")
async def memory_delete_action(svc: Service, req: Request, session: Session) -> Any:
    ns = req.ns or ""
    mid = v.string(req.data, "id", chars_max=ID_CHARS_MAX)
    now = svc.wall_ms()
    # In shared namespaces only the record's author (or the namespace owner) may delete it; checked
    # inside the write transaction so the record cannot change between check and delete.
    author = None if svc.policy.owns(req.agent_id, ns) else req.agent_id
    hlc = svc.stamp()
    if svc.cluster is not None:
        return await svc.cluster.delete_memory(ns, mid, hlc, now, author, consistency_of(req.data))
    return await svc.db.write(lambda c: memory_store.delete(c, ns, mid, hlc, now, author=author))


@action("memory.list", "read")
async def memory_list_action(svc: Service, req: Request, session: Session) -> Any:
    svc.single_node_only(req.action)
    d = req.data
    limit = v.integer(d, "limit", 100, lo=1, hi=svc.config.page_limit_max)
    cursor = v.string(d, "cursor", None, chars_max=512)
    mtype = v.string(d, "memory_type", None, chars_max=64)
    now = svc.wall_ms()
    return await svc.db.read(
        lambda c: memory_store.list_page(c, req.ns or "", limit=limit, cursor=cursor, memory_type=mtype, now_ms=now))


def _link_fields(svc: Service, req: Request) -> tuple[str, str, str, str]:
    d = req.data
    from_id = v.string(d, "from", chars_max=ID_CHARS_MAX)
    to_id = v.string(d, "to", chars_max=ID_CHARS_MAX)
    to_ns = v.string(d, "to_ns", req.ns or "", chars_max=256)
    relation = v.string(d, "relation", "related", chars_max=64)
    if to_ns != req.ns:
        svc.check(req, to_ns, READ, "memory.get")
    return from_id, to_ns, to_id, relation


@action("memory.link", "write")
async def memory_link_action(svc: Service, req: Request, session: Session) -> Any:
    svc.single_node_only(req.action)
    from_id, to_ns, to_id, relation = _link_fields(svc, req)
    weight = v.number(req.data, "weight", 1.0, lo=-1e9, hi=1e9)
    now, hlc = svc.wall_ms(), svc.stamp()
    return await svc.db.write(lambda c: link_store.link(
        c, ns=req.ns or "", from_id=from_id, to_ns=to_ns, to_id=to_id, relation=relation, weight=weight,
        hlc=hlc, owner=req.agent_id, now_ms=now))


@action("memory.unlink", "write")
async def memory_unlink_action(svc: Service, req: Request, session: Session) -> Any:
    svc.single_node_only(req.action)
    from_id, to_ns, to_id, relation = _link_fields(svc, req)
    return await svc.db.write(lambda c: link_store.unlink(
        c, ns=req.ns or "", from_id=from_id, to_ns=to_ns, to_id=to_id, relation=relation))


def _related_args(svc: Service, d: dict[str, Any]) -> dict[str, Any]:
    direction = v.string(d, "direction", "both", chars_max=8)
    if direction not in ("out", "in", "both"):
        raise InvalidArgument("direction must be out, in or both", field="direction")
    return {
        "depth": v.integer(d, "depth", 1, lo=1, hi=svc.config.related_depth_max),
        "relation": v.string(d, "relation", None, chars_max=64),
        "direction": direction,
        "limit": v.integer(d, "limit", 50, lo=1, hi=svc.config.page_limit_max),
    }


def _readable_fn(svc: Service, req: Request) -> Any:
    """A `readable(ns)` for traversals that run in a worker thread: grants are parsed here, on the
    trio thread, and the closure only reads the policy (no shared caches mutated off-thread)."""
    grants, now = svc.grants_of(req), svc.wall_ms()
    cache: dict[str, bool] = {}

    def readable(ns: str) -> bool:
        if ns not in cache:
            cache[ns] = svc.policy.readable(req.agent_id, ns, grants, now, "memory.related")
        return cache[ns]

    return readable


@action("memory.related", "read")
async def memory_related_action(svc: Service, req: Request, session: Session) -> Any:
    svc.single_node_only(req.action)
    mid = v.string(req.data, "id", chars_max=ID_CHARS_MAX)
    args = _related_args(svc, req.data)
    readable = _readable_fn(svc, req)
    now = svc.wall_ms()

    return await svc.db.read(lambda c: link_store.related(c, req.ns or "", mid, now_ms=now, readable=readable, **args))


_NOT_FILTERS = frozenset(("vector", "query", "expand", "cursor", "limit", "namespaces", "embedder", "consistency"))


async def local_search(svc: Service, body: dict[str, Any]) -> tuple[list[tuple[dict[str, Any], float]], bool]:
    """This node's part of a search: its own records (in cluster mode, the replicas it holds). `body` is
    the plain map a scatter carries: space, vector (float32 bytes), k, namespaces, now_ms, filter."""
    vector = np.frombuffer(body["vector"], dtype="<f4")
    if vector.shape != (svc.config.dim,):
        raise InvalidArgument("vector has the wrong dimension", dim=svc.config.dim)
    flt = compile_filter(dict(body["filter"]), int(body["now_ms"]))
    namespaces, k = list(body["namespaces"]), int(body["k"])
    index = svc.spaces.get(str(body["space"]))

    def work(conn: Any) -> tuple[list[tuple[dict[str, Any], float]], bool]:
        codes = [r[0] for r in conn.execute(
            f"SELECT code FROM namespaces WHERE ns IN ({','.join('?' * len(namespaces))})", namespaces)]
        return run_search(conn, index, vector, k=k, groups=codes, flt=flt, expiring=svc.spaces.expiring)

    return await svc.db.read(work)


@action("memory.search", "read", needs_ns=False)
async def memory_search_action(svc: Service, req: Request, session: Session) -> Any:
    d = req.data
    cfg = svc.config
    limit = v.integer(d, "limit", 10, lo=1, hi=cfg.page_limit_max)
    cursor = v.string(d, "cursor", None, chars_max=256)
    offset = 0
    if cursor is not None:
        offset = decode_cursor(cursor, 1)[0]
        if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= 10 * cfg.page_limit_max:
            raise InvalidArgument("malformed cursor")
    namespaces = v.string_list(d, "namespaces", None, items_max=64)
    if namespaces is None:
        namespaces = [req.ns] if req.ns else [req.agent_id] + ([cfg.public_namespace] if cfg.public_namespace else [])
    for ns in namespaces:
        svc.check(req, ns, READ, "memory.search")
    vector = v.vector(d, "vector", cfg.dim)
    if vector is not None:
        space = client_space(v.string(d, "embedder", "client", chars_max=64))
    else:
        query = v.string(d, "query", chars_max=cfg.memory_content_chars_max)
        space = svc.embedder.embedder_id
        vector = await embed_text(svc, query)
    compile_filter(d, svc.wall_ms())  # a bad filter fails here, before any scatter
    expand = d.get("expand")
    if expand is not None and not isinstance(expand, bool | dict):
        raise InvalidArgument("expand must be true/false or a map {depth, relation, direction, limit}")
    expand_args = None
    if expand is True or isinstance(expand, dict):
        svc.single_node_only("memory.search with expand")
        expand_args = _related_args(svc, expand if isinstance(expand, dict) else {"limit": 5})
    k = offset + limit + 1  # one extra tells whether a further page exists
    body = {"space": space, "vector": np.ascontiguousarray(vector, dtype="<f4").tobytes(), "k": k,
            "namespaces": namespaces, "now_ms": svc.wall_ms(),
            "filter": {f: x for f, x in d.items() if f not in _NOT_FILTERS}}
    coverage: dict[str, Any] = {}
    if svc.scatter is not None:
        found, exhaustive, coverage = await svc.scatter.search(body, k)
    else:
        found, exhaustive = await local_search(svc, body)
    page = found[offset:offset + limit]
    hits = []
    for mem, score in page:
        mem["score"] = score
        hits.append(mem)
    out: dict[str, Any] = {"hits": hits, "truncated": len(found) > offset + limit, "exhaustive": exhaustive,
                           "embedder": space, **coverage}
    if out["truncated"]:
        out["next_cursor"] = encode_cursor(offset + limit)
    if expand_args is not None and hits:
        now = svc.wall_ms()

        readable = _readable_fn(svc, req)

        def expand_all(conn: Any) -> None:
            for h in hits:
                h["context"] = link_store.related(conn, h["ns"], h["id"], now_ms=now, readable=readable,
                                                  **expand_args)["items"]

        await svc.db.read(expand_all)
    return out
