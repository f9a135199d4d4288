"""Wire codec: websocket message <-> frame object (msgpack for binary messages, JSON for text).

Owns size limits and decode errors only; it knows nothing of envelopes, actions or sockets.
"""

from __future__ import annotations

import json
from typing import Any

import msgpack

from crypto.errors import BadFrame, TooLarge

# Upper bounds handed to msgpack so a forged length prefix cannot make it allocate wildly.
_MSGPACK_LIMITS = {"max_bin_len": 16 * 1024 * 1024, "max_str_len": 16 * 1024 * 1024}


def decode_frame(message: bytes | str, *, frame_bytes_max: int) -> tuple[Any, bool]:
    """Decode one websocket message; return (object, binary). Raises TooLarge or BadFrame."""
    binary = isinstance(message, bytes | bytearray | memoryview)
    # A str's UTF-8 size is at most 4 bytes a character: only count exactly when it could matter.
    size = len(message) if binary or len(message) * 4 <= frame_bytes_max else len(message.encode("utf-8"))  # type: ignore[union-attr]
    if size > frame_bytes_max:
        raise TooLarge(f"frame of {size} bytes exceeds the limit of {frame_bytes_max}", limit=frame_bytes_max)
    try:
        if binary:
            obj = msgpack.unpackb(bytes(message), raw=False, strict_map_key=True, **_MSGPACK_LIMITS)  # type: ignore[arg-type]
        else:
            obj = json.loads(message)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, RecursionError) as e:
        raise BadFrame(f"undecodable {'msgpack' if binary else 'JSON'} frame: {type(e).__name__}") from None
    except Exception as e:  # msgpack raises a few odd types on hostile input; none may escape as non-codes
        raise BadFrame(f"undecodable frame: {type(e).__name__}") from None
    return obj, binary


def encode_frame(obj: Any, *, binary: bool) -> bytes | str:
    """Encode a reply or push in the same form as the request it answers."""
    if binary:
        return msgpack.packb(obj, use_bin_type=True)
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=_json_default)


def _json_default(o: Any) -> Any:
    if isinstance(o, bytes | bytearray):
        # Only node-generated fields can be bytes; text clients get them as hex.
        return bytes(o).hex()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
