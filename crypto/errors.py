"""The one exception hierarchy of mnemonet, with the stable string codes that go on the wire.

Lives in crypto/ because it is the lowest layer (every other package may import it); it must
not import anything from gossip/, ring/ or node/.
"""

from __future__ import annotations

from typing import Any, ClassVar


class MnemonetError(Exception):
    """Base of every error a node reports. ``code`` is stable and sent on the wire."""

    code: ClassVar[str] = "internal"

    def __init__(self, message: str = "", **details: Any) -> None:
        super().__init__(message or self.code)
        self.message = message or self.code
        self.details: dict[str, Any] = details

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            out["details"] = self.details
        return out


class BadFrame(MnemonetError):
    """The frame could not be decoded, or lacks a required field."""

    code = "bad_frame"


class TooLarge(MnemonetError):
    """The frame or a field exceeds its size limit."""

    code = "too_large"


class BadSignature(MnemonetError):
    """The signature does not verify, or the claimed id does not match the public key."""

    code = "bad_signature"


class Replay(MnemonetError):
    """This (public key, nonce) was already seen inside the replay window."""

    code = "replay"


class Expired(MnemonetError):
    """The request timestamp is outside the accepted window, or a grant has expired."""

    code = "expired"


class Forbidden(MnemonetError):
    """The authenticated agent lacks permission for this action on this namespace."""

    code = "forbidden"


class NotFound(MnemonetError):
    code = "not_found"


class InvalidArgument(MnemonetError):
    """A field has the wrong type or an out-of-range value."""

    code = "invalid_argument"


class UnknownAction(InvalidArgument):
    """The action name is not one this node serves."""

    code = "unknown_action"


class DimensionMismatch(InvalidArgument):
    """A vector's dimension differs from the embedder space it is used with."""

    code = "dimension_mismatch"


class Conflict(MnemonetError):
    """A compare-and-set precondition failed, or an id is reused with different content."""

    code = "conflict"


class Resync(MnemonetError):
    """A watch asked to resume from a sequence number whose history was compacted."""

    code = "resync"


class Unavailable(MnemonetError):
    """The node cannot serve the request now (overloaded, shutting down, quorum not reached)."""

    code = "unavailable"


class Internal(MnemonetError):
    code = "internal"


ERROR_CODES: dict[str, type[MnemonetError]] = {
    cls.code: cls
    for cls in (
        BadFrame, TooLarge, BadSignature, Replay, Expired, Forbidden, NotFound, InvalidArgument,
        UnknownAction, DimensionMismatch, Conflict, Resync, Unavailable, Internal,
    )
}


def error_from_wire(obj: dict[str, Any]) -> MnemonetError:
    """Rebuild the typed error a node sent (unknown codes become ``Internal``)."""
    cls = ERROR_CODES.get(str(obj.get("code")), Internal)
    err = cls(str(obj.get("message", "")), **dict(obj.get("details") or {}))
    return err
