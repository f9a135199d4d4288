"""The memory Record body shared by coordinators and replicas: NewMemory -> Record, tombstones, the
body check, and Record -> the dict `memory_store.get` returns.

Pure data conversion: no SQL, no trio, no clock (callers pass `now_ms`). Bodies hold bytes (vector as
float32 little-endian, author key and signature): canonical_encoding and msgpack both take bytes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from crypto.errors import InvalidArgument
from node.memory_store import NewMemory
from ring.records import Kind, Record

PROVENANCE_SCHEME = "mnemonet-record-v1"  # as node/memory_store.get reports it

_LIVE_FIELDS: dict[str, tuple[type, ...]] = {
    "owner": (str,), "memory_type": (str,), "content": (str,), "metadata": (dict,),
    "vector": (bytes, type(None)), "embedder": (str, type(None)), "expires_ms": (int, type(None)),
    "author_pk": (bytes, type(None)), "author_sig": (bytes, type(None)),
}


def memory_record(m: NewMemory) -> Record:
    """The replicated form of a new memory; its hlc is `m.created`. The embedder is kept only with a
    vector, as the single-node store keeps it."""
    vector = None if m.vector is None else np.ascontiguousarray(m.vector, dtype="<f4").tobytes()
    body: dict[str, Any] = {
        "id": m.id, "ns": m.ns, "owner": m.owner, "memory_type": m.memory_type, "content": m.content,
        "metadata": dict(m.metadata), "vector": vector, "embedder": m.embedder if vector is not None else None,
        "hlc": int(m.created), "expires_ms": m.expires_ms, "deleted": False,
        "author_pk": None if m.author_pk is None else bytes(m.author_pk),
        "author_sig": None if m.author_sig is None else bytes(m.author_sig),
    }
    return Record(Kind.MEMORY, (m.ns, m.id), body)


def tombstone_record(ns: str, mid: str, hlc: int, owner: str) -> Record:
    """A delete: beats every live copy of (ns, mid) whatever its hlc (ring.merge.memory_merge)."""
    return Record(Kind.MEMORY, (ns, mid), {"id": mid, "ns": ns, "owner": owner, "hlc": int(hlc), "deleted": True})


def is_tombstone(r: Record) -> bool:
    """A deleted memory, a deleted register/state/link, or a deleted counter/set (what GC may drop)."""
    b = r.body
    deleted = getattr(b, "deleted", None)
    if deleted is None:
        deleted = b.get("deleted", False)
    return bool(deleted)


def check_memory_record(r: Record) -> None:
    """Raise InvalidArgument unless `r` is a well-formed memory record (what materialising needs)."""
    b = r.body
    if not isinstance(b, Mapping):
        raise InvalidArgument("a memory body is a map")
    ns, mid = r.key
    if b.get("id") != mid or b.get("ns") != ns:
        raise InvalidArgument("a memory body's id and ns must match its key", id=repr(b.get("id"))[:64])
    hlc, deleted = b.get("hlc"), b.get("deleted", False)
    if isinstance(hlc, bool) or not isinstance(hlc, int) or not 0 <= hlc < 1 << 63:
        raise InvalidArgument("a memory body needs an int hlc", id=mid)
    if not isinstance(deleted, bool):
        raise InvalidArgument("memory 'deleted' must be a bool", id=mid)
    if deleted:
        return
    for name, types in _LIVE_FIELDS.items():
        v = b.get(name)
        if not isinstance(v, types) or isinstance(v, bool):
            raise InvalidArgument(f"memory field {name!r} has the wrong type", id=mid, field=name)
    try:  # the memories table keeps metadata as JSON text
        json.dumps(b["metadata"])
    except (TypeError, ValueError):
        raise InvalidArgument("memory metadata must be JSON", id=mid) from None
    if b["vector"] is not None and (len(b["vector"]) % 4 or not b["embedder"]):
        raise InvalidArgument("a memory vector is float32 bytes with an embedder", id=mid)


def vector_of(body: Mapping[str, Any]) -> np.ndarray | None:
    v = body.get("vector")
    return None if v is None else np.frombuffer(bytes(v), dtype="<f4").copy()


def memory_from_record(r: Record, now_ms: int, include_vector: bool = False) -> dict[str, Any] | None:
    """The dict node/memory_store.get returns for this record; None for a tombstone or once expired."""
    b = r.body
    if b.get("deleted", False):
        return None
    expires_ms = b.get("expires_ms")
    if expires_ms is not None and expires_ms <= now_ms:
        return None
    out: dict[str, Any] = {
        "id": b["id"], "ns": b["ns"], "owner": b["owner"], "memory_type": b["memory_type"],
        "content": b["content"], "metadata": b["metadata"], "created": b["hlc"], "embedder": b.get("embedder"),
    }
    if expires_ms is not None:
        out["expires_ms"] = expires_ms
    vec = vector_of(b)
    if include_vector and vec is not None:
        out["vector"] = vec.tolist()
    if b.get("author_sig") is not None:
        out["provenance"] = {"pk": bytes(b.get("author_pk") or b"").hex(), "sig": bytes(b["author_sig"]).hex(),
                             "scheme": PROVENANCE_SCHEME}
    return out
