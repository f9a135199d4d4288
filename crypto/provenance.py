"""Record signatures: an author's Ed25519 signature over what a stored memory says, kept with it.

Requests inside an authenticated session are MAC'd, which convinces the node but nobody else; a
record signature lets any reader (another node, an auditor, a later replica) check that the author
wrote this content into this namespace under this id, without trusting the node that stored it.
It covers (ns, id, memory_type, sha256(content)); metadata and vectors are not covered.
Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import struct

from crypto.identity import Identity, verify_signature

RECORD_DOMAIN = b"mnemonet-record-v1\x00"


def record_bytes(ns: str, mid: str, memory_type: str, content: str) -> bytes:
    """The exact bytes signed: the domain, then each field length-prefixed (4-byte big-endian)."""
    parts = [ns.encode(), mid.encode(), memory_type.encode(), hashlib.sha256(content.encode()).digest()]
    return RECORD_DOMAIN + b"".join(struct.pack(">I", len(p)) + p for p in parts)


def sign_record(author: Identity, ns: str, mid: str, memory_type: str, content: str) -> bytes:
    return author.sign(record_bytes(ns, mid, memory_type, content))


def verify_record(public_key: bytes, signature: bytes, ns: str, mid: str, memory_type: str, content: str) -> bool:
    return verify_signature(public_key, signature, record_bytes(ns, mid, memory_type, content))
