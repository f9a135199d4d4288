"""Every tunable of a node, with its unit, default and why, in one frozen dataclass.

Nothing here reads the environment or the clock; the CLI builds a NodeConfig from flags.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from crypto.config import EnvelopeConfig


@dataclass(frozen=True, slots=True)
class NodeConfig:
    # --- wire ---
    frame_bytes_max: int = 1024 * 1024
    """Largest request frame accepted (1 MiB). Larger frames get `too_large`; the connection stays open."""
    message_bytes_hard_max: int = 32 * 1024 * 1024
    """Websocket messages beyond this (32 MiB) close the offending connection with code 1009: past it
    we would rather not buffer the message at all. Between frame_bytes_max and this, we answer `too_large`."""
    inflight_per_connection_max: int = 64
    """Requests processed concurrently per connection; further frames wait (back-pressure on the socket)."""
    push_queue_max: int = 1024
    """Pushes (watch/subscribe events) buffered per connection before the slowest watch is dropped with `resync`."""
    watches_per_connection_max: int = 256
    """Open watches/subscriptions per connection; more get `too_large`."""
    connections_max: int = 1024
    """Concurrent client connections; more are refused at the handshake (HTTP 503)."""
    # --- authentication ---
    envelope: EnvelopeConfig = field(default_factory=EnvelopeConfig)
    public_namespace: str = "public"
    """A namespace every authenticated agent may read and write (records are still deletable only by
    their owner or the operator). Set to "" to disable."""
    # --- storage ---
    fsync: str = "full"
    """SQLite `synchronous` in WAL mode: "full" (default) fsyncs the WAL on every commit, so an
    acknowledged write survives power loss; "normal" survives a process crash (kill -9) but may lose
    the last commits on power loss. Group commit amortises the fsync over concurrent writes."""
    write_batch_max: int = 256
    """Writes merged into one SQLite transaction (group commit)."""
    changes_retained: int = 100_000
    """Signal/state change-log entries kept for resumable watches; older resumes get `resync`."""
    sweep_interval_s: float = 30.0
    """How often expired memories and signals are physically removed (they are hidden at once)."""
    memory_content_chars_max: int = 256 * 1024
    metadata_bytes_max: int = 64 * 1024
    signal_value_bytes_max: int = 64 * 1024
    state_bytes_max: int = 256 * 1024
    page_limit_max: int = 1000
    """Largest `limit` for list/search pages."""
    # --- search ---
    embedder: str = "hash"
    """Default embedder name (see node/embedder.py); "hash" is offline and deterministic."""
    dim: int = 384
    seal_check_interval_s: float = 0.5
    """How often the node checks whether the vector buffer should be sealed into an annoy segment."""
    related_depth_max: int = 3
    require_record_signatures: bool = False
    """If True, memory.store must carry the author's record signature (crypto/provenance.py)."""
    verify_threads: int = 2
    """Worker threads checking record signatures in parallel (Ed25519 releases the GIL)."""
