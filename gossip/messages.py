"""The gossip vocabulary: wire messages, update records, member metadata, effects and events.

Owns plain immutable data only; it must not encode bytes (codec.py does), decide precedence
(members.py does) or hold state.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Protocol


class Rng(Protocol):
    """The randomness gossip needs; `random.Random` satisfies it (seed it for replayable runs)."""

    def random(self) -> float: ...

    def shuffle(self, x: list[Any]) -> None: ...


class State(enum.IntEnum):
    """A member's liveness. Ints so the codec sends one byte; order has no meaning."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


class EventKind(enum.Enum):
    JOINED = "joined"    # first seen alive, or alive again after dead/left (a rejoin)
    SUSPECT = "suspect"
    ALIVE = "alive"      # a suspect refuted its suspicion
    DEAD = "dead"
    LEFT = "left"
    UPDATED = "updated"  # address or metadata changed while alive


@dataclass(frozen=True, slots=True)
class Meta:
    """Member metadata carried in Alive records; placement reads it (DESIGN.md: capabilities ride here).

    `admission` is the member's network admission grant (an `mg1.` token, see gossip/admission.py), or
    "" in a network without admission. It rides here so any member can check any other member's
    record, including one learned second-hand through gossip or push-pull.
    """

    roles: tuple[str, ...] = ()
    capability: float = 0.0
    storage_bytes: int = 0
    load: float = 0.0
    endpoint: str = ""
    version: str = ""
    admission: str = ""


# --- update records: what gossip disseminates (piggybacked, or in Gossip) ---------------------

@dataclass(frozen=True, slots=True)
class Alive:
    """`node` is alive at `incarnation`, reachable at `addr`, with `meta`."""

    node: str
    incarnation: int
    addr: str
    meta: Meta


@dataclass(frozen=True, slots=True)
class Suspect:
    """`by` suspects `node` at `incarnation` (each distinct `by` is one Lifeguard confirmation)."""

    node: str
    incarnation: int
    by: str


@dataclass(frozen=True, slots=True)
class Dead:
    """`by` declares `node` dead at `incarnation`; `by == node` means a graceful leave (State.LEFT)."""

    node: str
    incarnation: int
    by: str


Update = Alive | Suspect | Dead


@dataclass(frozen=True, slots=True)
class NodeState:
    """One member as a push-pull carries it: the full record, whatever its state."""

    node: str
    addr: str
    incarnation: int
    state: State
    meta: Meta


# --- messages -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Ping:
    """Direct probe. `target` is the id the sender means, so a reused address cannot ack for another."""

    seq: int
    target: str
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class Ack:
    seq: int
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class Nack:
    """A ping-req helper could not reach the target in time (Lifeguard): the asker's link is fine."""

    seq: int


@dataclass(frozen=True, slots=True)
class PingReq:
    """Ask the receiver to probe `target` at `target_addr` and forward the Ack (or a Nack) for `seq`."""

    seq: int
    target: str
    target_addr: str
    nack: bool = True


@dataclass(frozen=True, slots=True)
class Gossip:
    updates: tuple[Update, ...]


@dataclass(frozen=True, slots=True)
class PushPull:
    """Full-state sync. `join`: part of a (re)join exchange (a reply copies it); `reply`: do not answer."""

    states: tuple[NodeState, ...]
    join: bool = False
    reply: bool = False


Message = Ping | Ack | Nack | PingReq | Gossip | PushPull


# --- what the shell gives the core, and what the core asks of the shell --------------------------

@dataclass(frozen=True, slots=True)
class Packet:
    """A message as it arrived: `src_id` is the sender's verified id (codec.decode checked the key)."""

    src_id: str
    src_addr: str
    network: str
    msg: Message


@dataclass(frozen=True, slots=True)
class Send:
    """Effect: deliver `msg` to `to_addr` (the shell wraps it in a signed frame with our id and network)."""

    to_addr: str
    msg: Message


@dataclass(frozen=True, slots=True)
class MemberView:
    """A read-only snapshot of one member (self included in SwimNode.members())."""

    id: str
    addr: str
    incarnation: int
    state: State
    meta: Meta
    state_changed_at: float


@dataclass(frozen=True, slots=True)
class MemberEvent:
    """Effect: a member's state or data changed."""

    kind: EventKind
    member: MemberView


Effect = Send | MemberEvent
