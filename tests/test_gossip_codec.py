"""Gossip wire codec: signed frames round-trip, tampering and foreign networks are refused, sizes bound."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.errors import BadFrame, BadSignature, Forbidden, TooLarge
from crypto.identity import Identity
from gossip.codec import (
    GOSSIP_DOMAIN,
    decode_frame,
    encode_body,
    encode_frame,
    frame_overhead_bytes,
    message_bytes,
    message_from_obj,
    message_obj,
)
from gossip.messages import (
    Ack,
    Alive,
    Dead,
    Gossip,
    Meta,
    Nack,
    NodeState,
    Ping,
    PingReq,
    PushPull,
    State,
    Suspect,
)

KEY = Identity.generate()
FRAME_MAX = 1 << 22
ids = st.text(min_size=1, max_size=40)
addrs = st.text(max_size=60)
incs = st.integers(0, 2**63 - 1)
metas = st.builds(
    Meta, roles=st.lists(st.text(max_size=20), max_size=4).map(tuple),
    capability=st.floats(allow_nan=False, allow_infinity=False), storage_bytes=st.integers(0, 2**63 - 1),
    load=st.floats(allow_nan=False, allow_infinity=False), endpoint=addrs, version=st.text(max_size=20),
    admission=st.one_of(st.just(""), st.text(max_size=500)),
)
updates = st.one_of(
    st.builds(Alive, ids, incs, addrs, metas), st.builds(Suspect, ids, incs, ids), st.builds(Dead, ids, incs, ids),
)
update_lists = st.lists(updates, max_size=5).map(tuple)
messages = st.one_of(
    st.builds(Ping, incs, ids, update_lists),
    st.builds(Ack, incs, update_lists),
    st.builds(Nack, incs),
    st.builds(PingReq, incs, ids, addrs, st.booleans()),
    st.builds(Gossip, update_lists),
    st.builds(PushPull, st.lists(st.builds(NodeState, ids, addrs, incs, st.sampled_from(State), metas),
                                 max_size=5).map(tuple), st.booleans(), st.booleans()),
)


@settings(max_examples=300)
@given(messages, st.text(max_size=30), addrs)
def test_any_message_round_trips_and_its_size_bound_holds(msg: object, network: str, src: str) -> None:
    frame = encode_frame(KEY, network, src, msg)  # type: ignore[arg-type]
    packet = decode_frame(frame, network=network, frame_bytes_max=FRAME_MAX)
    assert packet.msg == msg
    assert (packet.src_id, packet.src_addr, packet.network) == (KEY.agent_id, src, network)
    assert len(frame) <= frame_overhead_bytes(network, src) + message_bytes(msg)


def test_tampered_frame_is_a_bad_signature() -> None:
    frame = encode_frame(KEY, "net", "ws://a", Ping(1, "b"))
    v, pk, sig, body = msgpack.unpackb(frame)
    forged_body = encode_body("net", "ws://a", Ping(2, "b"))
    for bad in ([v, pk, sig, forged_body], [v, pk, bytes(64), body], [v, Identity.generate().public_key, sig, body]):
        with pytest.raises(BadSignature):
            decode_frame(msgpack.packb(bad), network="net", frame_bytes_max=FRAME_MAX)


def test_sender_id_is_the_agent_id_of_the_signing_key() -> None:
    other = Identity.generate()
    packet = decode_frame(encode_frame(other, "n", "a", Nack(3)), network="n", frame_bytes_max=FRAME_MAX)
    assert packet.src_id == other.agent_id != KEY.agent_id


def test_frame_from_another_network_is_refused_before_verifying() -> None:
    frame = encode_frame(KEY, "other", "ws://a", Nack(1))
    with pytest.raises(Forbidden):
        decode_frame(frame, network="mine", frame_bytes_max=FRAME_MAX)
    assert decode_frame(frame, network=None, frame_bytes_max=FRAME_MAX).network == "other"


def test_signature_binds_the_network_id() -> None:
    v, pk, sig, _ = msgpack.unpackb(encode_frame(KEY, "a", "x", Nack(1)))
    relabelled = msgpack.packb([v, pk, sig, encode_body("b", "x", Nack(1))])
    with pytest.raises(BadSignature):
        decode_frame(relabelled, network="b", frame_bytes_max=FRAME_MAX)


def test_oversized_frame_is_too_large() -> None:
    frame = encode_frame(KEY, "n", "a", Gossip(tuple(Dead(f"n{i}", i, "x") for i in range(100))))
    with pytest.raises(TooLarge):
        decode_frame(frame, network="n", frame_bytes_max=len(frame) - 1)


@pytest.mark.parametrize("obj", [
    b"\xc1", 1, [1, b"k" * 32, b"s" * 64], [2, b"k" * 32, b"s" * 64, b""], [1, b"short", b"s" * 64, b""],
])
def test_malformed_frames_are_bad_frames(obj: object) -> None:
    raw = obj if isinstance(obj, bytes) else msgpack.packb(obj)
    with pytest.raises(BadFrame):
        decode_frame(raw, network=None, frame_bytes_max=FRAME_MAX)


@pytest.mark.parametrize("obj", [
    [], [True, 1], [9, 1], [0, -1, "t", []], [0, 1, "t", [[7, "a", 1, "b"]]], [1, 1, [[0, "a", 1, "b", []]]],
    [5, [["a", "b", 1, 9, [[], 0.0, 0, 0.0, "", ""]]], False, False], [3, 1, "t", "a", 1],
    [1, 1, [[1, "a", 1, "b", "extra"]]], [0, 1, "x" * 200, []], [2, 2**64],
])
def test_malformed_messages_are_bad_frames(obj: object) -> None:
    with pytest.raises(BadFrame):
        message_from_obj(obj)


def test_wire_form_is_compact_arrays() -> None:
    assert message_obj(Nack(7)) == [2, 7]
    assert len(msgpack.packb(message_obj(Ping(1, "a" * 32)))) < 40
    frame = encode_frame(KEY, "n", "a", Nack(1))
    assert KEY.public_key in frame and GOSSIP_DOMAIN not in frame


def test_metadata_without_an_admission_token_keeps_its_six_field_form() -> None:
    """Networks without admission send exactly what they sent before the field existed."""
    alive = message_obj(Gossip((Alive("a", 1, "x", Meta(version="1")),)))
    assert alive == [4, [[0, "a", 1, "x", [[], 0.0, 0, 0.0, "", "1"]]]]
    with_token = message_obj(Gossip((Alive("a", 1, "x", Meta(admission="mg1.t")),)))
    assert with_token[1][0][4][6] == "mg1.t"
    assert message_from_obj(with_token) == Gossip((Alive("a", 1, "x", Meta(admission="mg1.t")),))


@pytest.mark.parametrize("meta", [
    [[], 0.0, 0, 0.0, "", "", 5], [[], 0.0, 0, 0.0, "", "", "t" * 1025], [[], 0.0, 0, 0.0, "", "", "t", "extra"],
])
def test_a_malformed_admission_field_is_a_bad_frame(meta: list[object]) -> None:
    with pytest.raises(BadFrame):
        message_from_obj([4, [[0, "a", 1, "x", meta]]])

