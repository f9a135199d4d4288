"""ChangeHub: matching, exactly-once in-order delivery across backlog + live, overflow handling."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from node.changefeed import ChangeHub
from node.effects import Change


def ch(seq: int, key: str = "k/1", topic: str = "signal", ns: str = "ns") -> Change:
    return Change(seq, topic, ns, key, {"seq": seq})


def test_matching_by_key_and_prefix() -> None:
    hub = ChangeHub()
    got: dict[str, list[int]] = {"exact": [], "prefix": []}
    e = hub.open("signal", "ns", "k/1", True, lambda p: got["exact"].append(p["seq"]) or True, since=0)
    p = hub.open("signal", "ns", "k/", False, lambda p: got["prefix"].append(p["seq"]) or True, since=0)
    hub.go_live(e)
    hub.go_live(p)
    hub.publish(ch(1, "k/1"))
    hub.publish(ch(2, "k/2"))
    hub.publish(ch(3, "x"))
    hub.publish(ch(4, "k/1", ns="other"))
    hub.publish(ch(5, "k/1", topic="state"))
    assert got == {"exact": [1], "prefix": [1, 2]}


@given(backlog_end=st.integers(0, 20), live_start=st.integers(0, 20), since=st.integers(0, 10))
def test_backlog_then_live_is_exactly_once_in_order(backlog_end: int, live_start: int, since: int) -> None:
    hub = ChangeHub()
    out: list[int] = []
    sub = hub.open("signal", "ns", "k", False, lambda p: out.append(p["seq"]) or True, since=since)
    # Live changes that arrive while the backlog is read may overlap it.
    for seq in range(live_start, live_start + 5):
        hub.publish(ch(seq + 1))
    sub.buffered[:0] = [ch(seq) for seq in range(since + 1, backlog_end + 1)]
    hub.go_live(sub)
    hub.publish(ch(live_start + 6))
    assert out == sorted(set(out)) and all(x > since for x in out)
    expected = set(range(since + 1, backlog_end + 1)) | set(range(live_start + 1, live_start + 7))
    assert set(out) == {x for x in expected if x > since}


def test_overflow_drops_the_watch_with_resync_notice() -> None:
    hub = ChangeHub()
    sent: list[dict[str, Any]] = []

    def deliver(p: dict[str, Any]) -> bool:
        if "error" in p:
            sent.append(p)
            return True
        if len(sent) >= 2:
            return False
        sent.append(p)
        return True

    sub = hub.open("signal", "ns", "k", False, deliver, since=0)
    hub.go_live(sub)
    for seq in range(1, 5):
        hub.publish(ch(seq))
    assert [p.get("seq") for p in sent[:2]] == [1, 2]
    assert sent[2]["error"]["code"] == "resync" and sent[2]["error"]["details"]["last_seq"] == 2
    assert len(hub) == 0 and hub.overflows == 1


def test_permission_rechecked_at_each_delivery() -> None:
    hub = ChangeHub()
    ok = [True]
    out: list[dict[str, Any]] = []
    sub = hub.open("signal", "ns", "k", False, lambda p: out.append(p) or True, since=0, allowed=lambda: ok[0])
    hub.go_live(sub)
    hub.publish(ch(1))
    ok[0] = False  # grant revoked
    hub.publish(ch(2))
    hub.publish(ch(3))
    assert [p.get("seq") for p in out if "error" not in p] == [1]
    assert out[-1]["error"]["code"] == "forbidden" and len(hub) == 0 and hub.revoked == 1


def test_a_watch_that_never_goes_live_cannot_buffer_without_bound() -> None:
    hub = ChangeHub(buffered_max=10)
    out: list[dict[str, Any]] = []
    sub = hub.open("signal", "ns", "k", False, lambda p: out.append(p) or True, since=0)
    for seq in range(1, 50):
        hub.publish(ch(seq))
    assert sub.lost and sub.buffered == [] and out[-1]["error"]["code"] == "resync" and len(hub) == 0
    hub.go_live(sub)  # too late: it was dropped
    assert len(out) == 1
