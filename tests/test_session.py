"""Authenticated sessions: handshake key agreement, MITM detection, MAC and counter-window checks."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.config import EnvelopeConfig
from crypto.errors import BadFrame, BadSignature, Replay
from crypto.identity import Identity
from crypto.session import (
    COUNTER_WINDOW,
    ClientHandshake,
    NodeHello,
    SessionState,
    accept_session,
    decode_session_request,
    mac_request,
)

AGENT, NODE, OTHER = Identity.generate(), Identity.generate(), Identity.generate()
CFG = EnvelopeConfig()


def open_pair() -> tuple[bytes, SessionState]:
    hs = ClientHandshake(AGENT)
    key, hello = accept_session(NODE, AGENT.public_key, hs.public)
    assert hs.finish(hello, NODE.public_key) == key
    return key, SessionState(1, key, AGENT.public_key)


def frame(key: bytes, ctr: int, binary: bool = True, **data: object) -> dict:  # type: ignore[type-arg]
    return mac_request(key, 1, {"v": 1, "rid": ctr, "action": "health", "ns": None, "data": data, "ctr": ctr},
                       binary=binary)


@pytest.mark.parametrize("binary", [True, False])
def test_mac_request_verifies_and_carries_identity(binary: bool) -> None:
    key, state = open_pair()
    req = state.verify(decode_session_request(frame(key, 1, binary), binary=binary, config=CFG), now_ms=5)
    assert req.agent_id == AGENT.agent_id and req.action == "health" and req.public_key == AGENT.public_key


def test_handshake_detects_substituted_node() -> None:
    hs = ClientHandshake(AGENT)
    _, hello = accept_session(OTHER, AGENT.public_key, hs.public)
    with pytest.raises(BadSignature):
        hs.finish(hello, NODE.public_key)  # pinned key differs
    forged = NodeHello(hello.node_ephemeral, NODE.public_key, hello.node_signature)
    with pytest.raises(BadSignature):
        hs.finish(forged)  # claims NODE but signed by OTHER


def test_keys_differ_per_session() -> None:
    assert open_pair()[0] != open_pair()[0]


@given(st.integers(0, 200), st.integers(0, 7))
def test_any_flipped_bit_fails_the_mac(pos: int, bit: int) -> None:
    key, state = open_pair()
    f = frame(key, 1, content="x" * 50)
    p = bytearray(f["p"])
    p[pos % len(p)] ^= 1 << bit
    f["p"] = bytes(p)
    try:
        u = decode_session_request(f, binary=True, config=CFG)
    except BadFrame:
        return  # no longer decodes: also rejected
    with pytest.raises(BadSignature):
        state.verify(u, 0)


def test_wrong_key_fails() -> None:
    key, state = open_pair()
    other_key, _ = open_pair()
    with pytest.raises(BadSignature):
        state.verify(decode_session_request(frame(other_key, 1), binary=True, config=CFG), 0)


@settings(max_examples=200)
@given(st.lists(st.integers(1, 3000), max_size=300))
def test_counter_window_accepts_each_counter_at_most_once(counters: list[int]) -> None:
    key, state = open_pair()
    accepted: set[int] = set()
    highest = 0
    for c in counters:
        u = decode_session_request(frame(key, c), binary=True, config=CFG)
        try:
            state.verify(u, 0)
        except Replay:
            assert c in accepted or c <= highest - COUNTER_WINDOW
            continue
        assert c not in accepted
        assert c > highest - COUNTER_WINDOW
        accepted.add(c)
        highest = max(highest, c)
