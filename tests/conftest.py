"""Shared fixtures: identities and a real node on 127.0.0.1 with an ephemeral port."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from crypto.identity import Identity
from node.client import MemoryClient
from node.config import NodeConfig
from node.server import run_node
from node.service import Service


@dataclass
class RunningNode:
    url: str
    service: Service
    operator: Identity

    def client(self, identity: Identity, **kw: object) -> MemoryClient:
        return MemoryClient(self.url, identity, **kw)  # type: ignore[arg-type]


@pytest.fixture
def make_identity() -> Callable[[], Identity]:
    return Identity.generate


async def start_node(nursery: trio.Nursery, data: Path, config: NodeConfig | None = None) -> RunningNode:
    operator = Identity.generate()
    svc = Service(config or NodeConfig(sweep_interval_s=3600.0), data, Identity.generate(),
                  operator_ids=frozenset({operator.agent_id}))
    port = await nursery.start(run_node, svc, "127.0.0.1", 0)
    return RunningNode(f"ws://127.0.0.1:{port}", svc, operator)


@pytest.fixture
async def node(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[RunningNode]:
    yield await start_node(nursery, tmp_path / "node")
