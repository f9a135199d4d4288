"""SWIM gossip membership with Lifeguard (issue 3): a sans-IO core, its wire codec, and its config.

Owns who is in the group and who is alive; it must not do I/O, read clocks or import trio (the shells
in node/ and the simulator drive it with `handle(packet, now)` / `tick(now)`).
"""

from gossip.config import GossipConfig
from gossip.messages import (
    Ack,
    Alive,
    Dead,
    Effect,
    EventKind,
    Gossip,
    MemberEvent,
    MemberView,
    Message,
    Meta,
    Nack,
    NodeState,
    Packet,
    Ping,
    PingReq,
    PushPull,
    Rng,
    Send,
    State,
    Suspect,
    Update,
)
from gossip.swim import SwimNode

__all__ = [
    "Ack", "Alive", "Dead", "Effect", "EventKind", "Gossip", "GossipConfig", "MemberEvent", "MemberView",
    "Message", "Meta", "Nack", "NodeState", "Packet", "Ping", "PingReq", "PushPull", "Rng", "Send", "State",
    "Suspect", "SwimNode", "Update",
]
