"""Architecture rules that code review alone would let slip (STYLE.md rules 1 and 2):
pure packages import no I/O, clock or randomness modules; imports flow crypto -> ring/gossip -> node."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PURE = ("crypto", "gossip", "ring")
FORBIDDEN_IN_PURE = {"trio", "trio_websocket", "socket", "sqlite3", "time", "random", "asyncio"}
ALLOWED_FIRST_PARTY = {"crypto": {"crypto"}, "ring": {"crypto", "ring"}, "gossip": {"crypto", "gossip"},
                       "node": {"crypto", "ring", "gossip", "node"}}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("package", sorted(ALLOWED_FIRST_PARTY))
def test_imports_flow_one_way(package: str) -> None:
    first_party = set(ALLOWED_FIRST_PARTY)
    for path in sorted((ROOT / package).glob("*.py")):
        bad = (imports_of(path) & first_party) - ALLOWED_FIRST_PARTY[package]
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize("package", PURE)
def test_pure_packages_do_no_io_and_read_no_clock(package: str) -> None:
    for path in sorted((ROOT / package).glob("*.py")):
        bad = imports_of(path) & FORBIDDEN_IN_PURE
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"
