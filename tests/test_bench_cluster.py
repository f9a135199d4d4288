"""Smoke test of bench/cluster.py's ring section at a tiny scale (6 nodes, 2000 keys; ~2 s): the result
has its structure, shares are shares, rates are positive, and the exact partition figures obey the
placement's guarantees (only the joiner/leaver's data moves; a leave moves exactly the leaver's share)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("uhashring")

from bench import cluster  # noqa: E402

NODES = 6


@pytest.fixture(scope="module")
def ring() -> dict[str, Any]:
    return cluster.ring_section(cluster.parse_args(["--nodes", str(NODES), "--keys", "2000", "--lookups", "300"]))


def test_load_figures_are_ratios_around_one(ring: dict[str, Any]) -> None:
    for source in ("balance", "capacity"):
        for scheme in ("ours_keys", "ours_partitions", "uhashring_keys", "uhashring_arcs"):
            for rep in ("primary", "rf3"):
                x = ring[source][scheme][rep]
                assert 0 < x["min_over_mean"] <= 1 <= x["max_over_mean"] < 3, (source, scheme, rep, x)
                assert 0 < x["min_load_over_capacity_share"] <= x["max_load_over_capacity_share"]
    # Q = 2**17 partitions over 6 nodes: exact replicated load within a few per cent of even, and
    # proportional to capacity when a third of the nodes weigh 2.
    assert ring["balance"]["ours_partitions"]["rf3"]["max_over_mean"] < 1.03
    assert ring["capacity"]["ours_partitions"]["rf3"]["max_load_over_capacity_share"] < 1.05


def test_movement_shares_are_minimal_and_near_ideal(ring: dict[str, Any]) -> None:
    m = ring["movement"]
    for key in ("ours_join_keys", "ours_join_partitions", "uhashring_join_keys",
                "ours_leave_keys", "ours_leave_partitions", "uhashring_leave_keys"):
        assert 0 < m[key]["primary"] <= m[key]["replica_set"] <= 1, (key, m[key])
        assert m[key]["needless"] == 0, (key, m[key])  # both schemes move only the joiner's/leaver's data
    exact_join = m["ours_join_partitions"]
    assert exact_join["primary"] == pytest.approx(1 / (NODES + 1), abs=0.01)
    assert exact_join["replica_set"] == pytest.approx(exact_join["diff_movements_share"])
    before = m["leaver_share_before"]
    assert m["ours_leave_partitions"]["primary"] == pytest.approx(before["ours_primary"], abs=1e-5)
    assert m["ours_leave_partitions"]["replica_set"] == pytest.approx(before["ours_rf3"], abs=1e-5)
    assert m["ideal_join"]["primary"] == pytest.approx(1 / (NODES + 1), abs=1e-5)


def test_lookup_rates_are_positive(ring: dict[str, Any]) -> None:
    rates = {k: v for k, v in ring["lookups_per_s"].items() if k not in ("targets", "lookups")}
    assert rates and all(v > 0 for v in rates.values()), rates


def test_double_failure_figures(ring: dict[str, Any]) -> None:
    q = ring["quorum_loss"]
    rows = [q["ours_keys"], q["ours_partitions"], q["uhashring_keys"], q["uhashring_arcs"],
            *q["sweep_ours_by_partitions"].values(), *q["sweep_uhashring_by_vnodes"].values()]
    for r in rows:
        assert r["pairs"] == math.comb(NODES, 2)
        assert 0 <= r["pairs_losing_some"] <= 1
        # every key has 3 replicas, hence exactly 3 failed pairs that cost it its quorum
        assert r["mean_share_lost"] == pytest.approx(3 / math.comb(NODES, 2), rel=1e-3)
        assert r["mean_share_lost"] <= r["max_share_lost"] <= 1
    assert ring["construction_s"]["ours_placement"] > 0


def test_main_merges_sections_into_existing_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "cluster.json"
    out.write_text(json.dumps({"quorum": {"kept": True}}))
    monkeypatch.setattr(cluster, "SECTIONS", {"fake": (lambda args: {"nodes": args.nodes}, lambda res: None)})
    cluster.main(["--nodes", "5", "--out", str(out)])
    got = json.loads(out.read_text())
    assert got["quorum"] == {"kept": True}
    assert got["fake"]["nodes"] == 5 and "wall_s" in got["fake"]
    with pytest.raises(SystemExit):
        cluster.main(["--sections", "nope", "--out", str(out)])
