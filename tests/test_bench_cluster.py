"""Smoke test of bench/cluster.py at a tiny scale. Ring section (6 nodes, 2000 keys; ~2 s; needs uhashring):
the result has its structure, shares are shares, rates are positive, and the exact partition figures obey
the placement's guarantees (only the joiner/leaver's data moves; a leave moves exactly the leaver's share).
Node sections (quorum, join, repair, search: real nodes in this process, a few hundred items): each
returns its keys with sane values (ops > 0, p50 <= p99, ratios > 0, the newcomer holds exactly its share,
the repaired replica got the missed records)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from bench import cluster

NODES = 6


@pytest.fixture(scope="module")
def ring() -> dict[str, Any]:
    pytest.importorskip("uhashring")
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


# ---------------------------------------------------------------- node sections

NODE_ARGS = ["--ring-nodes", "3", "--memories", "300", "--missed", "60", "--ops", "40", "--queries", "20",
             "--inflight", "4", "--ae-interval", "1.0"]


def _section(name: str) -> dict[str, Any]:
    run, show = cluster.SECTIONS[name]
    res = run(cluster.parse_args(NODE_ARGS))
    show(res)  # the table prints from this JSON without a KeyError
    return res


def _latency_ok(m: dict[str, Any]) -> None:
    assert m["ops"] > 0 and m["ops_per_s"] > 0, m
    assert 0 < m["p50_ms"] <= m["p99_ms"] <= m["max_ms"], m


def test_quorum_section() -> None:
    res = _section("quorum")
    assert res["params"]["nodes"] == 3 and res["params"]["ops"] == 40
    for side in ("single", "cluster"):
        for m in ("write_seq", "write_conc", "read_seq", "read_conc"):
            _latency_ok(res[side][m])
        assert res[side]["write_conc"]["inflight"] == 4 and res[side]["write_seq"]["inflight"] == 1
    assert len(res["ratios"]) == 8 and all(v > 0 for v in res["ratios"].values()), res["ratios"]


@pytest.mark.slow  # ~12-25 s here: the newcomer pulls ~98k (mostly empty) partitions of 2**17 whatever the data size
def test_join_section() -> None:
    res = _section("join")
    assert res["params"]["memories"] == 300 and res["params"]["nodes_before"] == 3
    # RF 3 on 3 nodes: every node held everything; the 4th owns 3/4 of the partitions.
    assert sum(res["copies_loaded"].values()) == 900
    assert 0 < res["newcomer_share_records"] == res["newcomer_held_records"] <= 300
    assert res["records_received"] >= res["newcomer_share_records"]
    assert res["join_s"] >= res["placed_s"] > 0
    assert res["partitions_pulled"] == res["partitions_gained"] > 0
    assert res["link_bytes_received"] > res["record_bytes_held"] > 0
    assert res["mb_per_s_link"] > 0 and res["mb_per_s_records"] > 0 and res["records_per_s"] > 0


def test_repair_section() -> None:
    res = _section("repair")
    assert res["params"]["missed"] == 60 and res["params"]["base_memories"] == 300
    assert 0 < res["partitions_affected"] <= 60
    assert res["repair_s_from_first_write"] >= res["repair_s"] > 0
    assert res["victim_records_received"] >= 60  # digests matched: it got every missed record
    assert res["peers_records_sent"] >= res["victim_records_received"] - res["repaired_before_writes_done"]
    assert res["records_per_s"] > 0


def test_search_section() -> None:
    res = _section("search")
    assert res["params"]["memories"] == 300 and res["params"]["queries"] == 20
    for side in ("single", "cluster"):
        _latency_ok(res[side]["seq"])
        _latency_ok(res[side]["conc"])
        assert res[side]["recall_at_10"] >= 0.9, res[side]  # 300 rows: both sides search exactly
    assert res["cluster"]["partial"] == 0
    assert all(v > 0 for v in res["ratios"].values()), res["ratios"]


def test_node_sections_are_registered() -> None:
    assert {"ring", "quorum", "join", "repair", "search"} <= set(cluster.SECTIONS)
    assert cluster.parse_args(["--sections", "ring"]).sections == "ring"
