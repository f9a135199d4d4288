"""A node-wide network isolation switch for fault tests: while on, every gossip frame and every
`/replica` frame this node sends or receives is dropped (counted), as in a network partition
between it and every other node; clients are still served. It must not touch client connections.

`mnemonet node --fault-signals` turns it on with SIGUSR1 and off with SIGUSR2.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Isolation:
    """Shared by the node's gossip transport and replica links (each checks `on` per frame)."""

    on: bool = False
    dropped: dict[str, int] = field(default_factory=lambda: {"sent": 0, "received": 0})

    def drop_sent(self) -> bool:
        """True (and counted) if an outgoing frame must be dropped now."""
        if self.on:
            self.dropped["sent"] += 1
        return self.on

    def drop_received(self) -> bool:
        """True (and counted) if an incoming frame must be dropped now."""
        if self.on:
            self.dropped["received"] += 1
        return self.on
