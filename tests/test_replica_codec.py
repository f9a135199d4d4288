"""Replica wire codec: every message round-trips, frames are authenticated, bound to one network and
a time window, sized within their estimate, and hostile input raises only the codec's error types."""

from __future__ import annotations

import contextlib
import time
from typing import Any, get_args

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crypto.errors import BadFrame, BadSignature, Expired, Forbidden, InvalidArgument, TooLarge
from crypto.identity import Identity, PublicKeyCache
from gossip.codec import GOSSIP_DOMAIN
from node.peer_messages import PeerError, PeerMessage, SearchQuery, SearchReply
from node.replica_codec import (
    FRAME_OVERHEAD_BYTES,
    MESSAGES_PER_FRAME_MAX,
    REPLICA_DOMAIN,
    VERSION,
    ReplicaCodecConfig,
    decode_frame,
    encode_frame,
    frame_bytes,
    message_bytes,
    message_from_obj,
    message_to_obj,
    split_batch,
)
from ring import messages as rm
from ring.merge import Versioned
from ring.records import _KEY_ARITY, Kind, Record
from tests.crdt_strategies import counter_states, set_states

KEY = Identity.generate()
CACHE = PublicKeyCache(16)
NET = "testnet"
NOW = 1_700_000_000_000
SKEW = 60_000
MAX = 8 * 1024 * 1024
CODEC_ERRORS = (BadFrame, InvalidArgument)

# --- strategies -----------------------------------------------------------------------------------

u63 = st.integers(0, 2**63 - 1)
u64 = st.integers(0, 2**64 - 1)
hlcs = st.integers(0, 2**63 - 1)
texts = st.text(max_size=12)
ids = st.text(min_size=1, max_size=32)
codes = st.text(max_size=20)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1),
                    st.floats(allow_nan=False, allow_infinity=False), texts, st.binary(max_size=8))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(texts, inner, max_size=4)), max_leaves=12)
kinds = st.sampled_from(list(Kind))


def keys_of(kind: Kind) -> st.SearchStrategy[tuple[str, ...]]:
    return st.tuples(*[texts] * _KEY_ARITY[kind])


@st.composite
def records(draw: st.DrawFn, kind: Kind | None = None) -> Record:
    kind = kind if kind is not None else draw(kinds)
    key = draw(keys_of(kind))
    if kind is Kind.MEMORY:
        body: Any = {"id": key[1], "ns": key[0], "hlc": draw(hlcs), "deleted": draw(st.booleans()),
                     "content": draw(st.text(max_size=40)), "metadata": draw(json_values)}
    elif kind in (Kind.REGISTER, Kind.STATE, Kind.LINK):
        body = Versioned(draw(json_values), draw(hlcs), draw(ids), draw(st.booleans()),
                         draw(st.none() | st.integers(-(2**63), 2**63 - 1)))
    else:
        state = draw(counter_states(ids, st.integers(-50, 50), 4) if kind is Kind.COUNTER else
                     set_states(json_values, ids, 4))
        body = {"hlc": draw(hlcs), "epoch": draw(hlcs), "deleted": draw(st.booleans()), "state": state}
    return Record(kind, key, body)


@st.composite
def refs(draw: st.DrawFn) -> rm.ItemRef:
    kind = draw(kinds)
    return kind.value, draw(keys_of(kind))


opt_refs = st.none() | refs()
summaries = st.builds(lambda r, h: (r[0], r[1], h), refs(), u64)
recs = st.lists(records(), max_size=3).map(tuple)
bodies = st.dictionaries(texts, json_values, max_size=4)

STRATEGIES: dict[type, st.SearchStrategy[Any]] = {
    rm.PutRecord: st.builds(rm.PutRecord, u63, records(), st.none() | ids),
    rm.PutAck: st.builds(rm.PutAck, u63, st.booleans(), codes),
    rm.GetRecord: kinds.flatmap(lambda k: st.builds(rm.GetRecord, u63, st.just(k), keys_of(k))),
    rm.GetReply: st.builds(rm.GetReply, u63, st.none() | records(), st.booleans(), codes),
    rm.AeOpen: st.builds(rm.AeOpen, u63, u64, u63, u63, u64),
    rm.AeOpened: st.builds(rm.AeOpened, u63, st.lists(u64, max_size=5).map(tuple)),
    rm.AeReject: st.builds(rm.AeReject, u63, codes),
    rm.AeTreeQuery: st.builds(rm.AeTreeQuery, u63, u63, u63, st.lists(u63, max_size=5).map(tuple)),
    rm.AeTreeHashes: st.builds(rm.AeTreeHashes, u63, u63, st.lists(u64, max_size=5).map(tuple)),
    rm.AeSummaryQuery: st.builds(rm.AeSummaryQuery, u63, u63, st.lists(st.tuples(u63, opt_refs), max_size=3).map(tuple)),
    rm.AeSummaries: st.builds(rm.AeSummaries, u63, u63, st.lists(st.builds(
        rm.SummaryPage, u63, st.lists(summaries, max_size=3).map(tuple), st.booleans()), max_size=3).map(tuple)),
    rm.AeFetch: st.builds(rm.AeFetch, u63, u63, st.lists(refs(), max_size=3).map(tuple)),
    rm.AeRecords: st.builds(rm.AeRecords, u63, u63, recs, st.lists(refs(), max_size=3).map(tuple)),
    rm.AePush: st.builds(rm.AePush, u63, u63, recs),
    rm.AeAck: st.builds(rm.AeAck, u63, u63),
    rm.AeClose: st.builds(rm.AeClose, u63),
    rm.RbPull: st.builds(rm.RbPull, u63, u63, opt_refs),
    rm.RbPage: st.builds(rm.RbPage, u63, u63, opt_refs, recs, opt_refs, st.tuples(u64, u64)),
    rm.RbConfirm: st.builds(rm.RbConfirm, u63, st.tuples(u64, u64)),
    rm.RbConfirmed: st.builds(rm.RbConfirmed, u63, st.booleans(), st.booleans()),
    rm.RbPullMany: st.builds(rm.RbPullMany, u63, st.lists(u63, max_size=5).map(tuple)),
    rm.RbPages: u63.flatmap(lambda t: st.builds(rm.RbPages, st.just(t), st.lists(
        st.builds(rm.RbPage, st.just(t), u63, opt_refs, recs, opt_refs, st.tuples(u64, u64)), max_size=3).map(tuple))),
    rm.RbSweepMe: st.builds(rm.RbSweepMe, st.lists(u63, max_size=5).map(tuple)),
    SearchQuery: st.builds(SearchQuery, u63, bodies),
    SearchReply: st.builds(SearchReply, u63, st.booleans(), bodies, codes),
    PeerError: st.builds(PeerError, u63, codes, st.text(max_size=100)),
}
messages = st.one_of(list(STRATEGIES.values()))
REPLICA_MESSAGES = {*get_args(rm.CoordinatorMessage), *get_args(rm.AntiEntropyMessage),
                    *get_args(rm.RebalanceMessage), *get_args(PeerMessage)}


def wire(obj: object) -> Any:
    return msgpack.unpackb(msgpack.packb(obj, use_bin_type=True), raw=False)


def decode(frame: bytes, **kw: Any) -> tuple[str, list[object]]:
    args: dict[str, Any] = {"network": NET, "now_ms": NOW, "skew_ms": SKEW, "keys": CACHE, "bytes_max": MAX}
    return decode_frame(frame, **(args | kw))


# --- messages -------------------------------------------------------------------------------------

def test_every_replica_message_type_has_a_strategy() -> None:
    # Tags are told apart by the round trip below (a shared tag would decode to the wrong type).
    assert set(STRATEGIES) == REPLICA_MESSAGES


@pytest.mark.parametrize("cls", sorted(STRATEGIES, key=str), ids=str)
@settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors])
@given(data=st.data())
def test_every_message_round_trips_through_msgpack(cls: type, data: st.DataObject) -> None:
    msg = data.draw(STRATEGIES[cls])
    obj = message_to_obj(msg)
    assert type(obj[0]) is int and 0 <= obj[0] < 128  # a one-byte tag
    back = message_from_obj(wire(obj))
    assert back == msg and type(back) is cls
    assert message_bytes(msg) == len(msgpack.packb(obj, use_bin_type=True))


def test_item_refs_come_back_as_tuples_of_strings() -> None:
    ref = ("link", ("ns", "a", "ns2", "b", "rel"))
    back = message_from_obj(wire(message_to_obj(rm.RbPage(1, 2, ref, (), None, (3, 4)))))
    assert isinstance(back, rm.RbPage)
    assert back.after == ref and type(back.after) is tuple and type(back.after[1]) is tuple
    assert back.digest == (3, 4) and type(back.digest) is tuple


@pytest.mark.parametrize("obj", [
    [0, -1, ["memory", ["ns", "m"], {"id": "m", "hlc": 1}], None],       # negative req
    [0, 2**63, ["memory", ["ns", "m"], {"id": "m", "hlc": 1}], None],    # req out of range
    [0, 1, ["memory", ["ns"], {"id": "m", "hlc": 1}], None],             # wrong key arity
    [0, 1, ["memory", ["ns", "m"], {"id": "m", "hlc": "1"}], None],      # hlc a string
    [0, 1, ["memory", ["ns", "m"], {"id": "m", "hlc": 1, "x": float("nan")}], None],
    [0, 1, ["bogus", ["ns", "m"], {"id": "m", "hlc": 1}], None],
    [0, 1, ["register", ["ns", "k"], {"hlc": 1, "writer": ""}], None],
    [0, 1, ["counter", ["ns", "c"], {"hlc": 1, "state": {"p": {"w": -1}, "n": {}}}], None],
    [0, 1, ["set", ["ns", "s"], {"hlc": 1, "state": {"e": [[1, [""], []]]}}], None],
    [1, 1, 1, "ok"],                                                      # ok is not a bool
    [2, 1, "memory", ["ns", "m"], "extra"],                               # field count
    [11, 1, [2**64]],                                                     # hash out of range
    [31, 1, 2, None, [], None, [1]],                                      # digest is a pair
    [40, 1, {"k": msgpack.Timestamp(1)}],                                 # no ext types
    [40, 1, {1: 2}],                                                      # map keys are strings
    [42, 1, "x" * 65, "m"],                                               # code too long
    [99], [], "PutRecord", None,
])
def test_malformed_messages_are_refused(obj: Any) -> None:
    with pytest.raises(CODEC_ERRORS):
        message_from_obj(obj)


def test_deep_nesting_is_refused() -> None:
    v: Any = 1
    for _ in range(70):
        v = [v]
    with pytest.raises(BadFrame):
        message_from_obj([40, 1, {"v": v}])


msgpack_objects = st.recursive(
    st.one_of(scalars, st.integers(-(2**63), 2**64 - 1), st.sampled_from([*range(45), *(k.value for k in Kind)])),
    lambda inner: st.one_of(st.lists(inner, max_size=7), st.dictionaries(st.text(max_size=4) | st.binary(max_size=2),
                                                                         inner, max_size=4)),
    max_leaves=30,
)


@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
@given(obj=msgpack_objects)
def test_arbitrary_objects_raise_only_codec_errors(obj: Any) -> None:
    with contextlib.suppress(*CODEC_ERRORS):
        message_from_obj(wire(obj))


def _mutate(obj: Any, path: list[int], new: Any) -> Any:
    if not path or not isinstance(obj, list | dict) or not obj:
        return new
    items = list(obj.items()) if isinstance(obj, dict) else list(enumerate(obj))
    k, v = items[path[0] % len(items)]
    out: Any = dict(obj) if isinstance(obj, dict) else list(obj)
    out[k] = _mutate(v, path[1:], new)
    return out


@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
@given(msg=messages, path=st.lists(st.integers(0, 10), min_size=1, max_size=6), new=msgpack_objects)
def test_mutated_messages_raise_only_codec_errors(msg: object, path: list[int], new: Any) -> None:
    with contextlib.suppress(*CODEC_ERRORS):
        message_from_obj(wire(_mutate(wire(message_to_obj(msg)), path, new)))


def test_encoding_an_unknown_or_unencodable_message_is_invalid() -> None:
    with pytest.raises(InvalidArgument):
        message_to_obj(rm.Send("a", rm.AeClose(1)))
    with pytest.raises(InvalidArgument):
        encode_frame(KEY, NET, NOW, [SearchQuery(1, {"s": {1, 2}})])
    with pytest.raises(InvalidArgument):
        encode_frame(KEY, "n" * 65, NOW, [])
    with pytest.raises(InvalidArgument):
        encode_frame(KEY, NET, NOW, [rm.AeClose(1)] * (MESSAGES_PER_FRAME_MAX + 1))


# --- frames ---------------------------------------------------------------------------------------

batches = st.lists(messages, max_size=6)


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(msgs=batches, network=st.text(max_size=64), skew=st.integers(-SKEW, SKEW))
def test_frames_round_trip_within_their_size_bound(msgs: list[object], network: str, skew: int) -> None:
    frame = encode_frame(KEY, network, NOW + skew, msgs)
    assert len(frame) <= frame_bytes(msgs)
    assert decode(frame, network=network) == (KEY.agent_id, msgs)


def test_frame_layout_and_domain() -> None:
    frame = encode_frame(KEY, NET, NOW, [rm.AeClose(7)])
    version, pk, sig, body = msgpack.unpackb(frame)
    assert version == VERSION and pk == KEY.public_key
    assert msgpack.unpackb(body) == [NET, NOW, [[21, 7]]]
    assert CACHE.verify(pk, sig, REPLICA_DOMAIN + body)


def test_a_gossip_signature_does_not_make_a_replica_frame() -> None:
    body = msgpack.packb([NET, NOW, [[21, 7]]], use_bin_type=True)
    forged = msgpack.packb([VERSION, KEY.public_key, KEY.sign(GOSSIP_DOMAIN + body), body], use_bin_type=True)
    with pytest.raises(BadSignature):
        decode(forged)


@settings(max_examples=200)
@given(pos=st.integers(0, 10**6), bit=st.integers(0, 7))
def test_a_flipped_bit_never_decodes(pos: int, bit: int) -> None:
    frame = bytearray(encode_frame(KEY, NET, NOW, [rm.PutAck(5, True), rm.AeClose(9)]))
    frame[pos % len(frame)] ^= 1 << bit
    with pytest.raises((BadSignature, BadFrame, Forbidden)):
        decode(bytes(frame))


def test_tampered_message_or_signature_is_a_bad_signature() -> None:
    r = Record(Kind.MEMORY, ("ns", "m"), {"id": "m", "ns": "ns", "hlc": 1, "content": "a" * 100})
    frame = encode_frame(KEY, NET, NOW, [rm.PutRecord(1, r)])
    i = frame.index(b"a" * 100)
    for tampered in (frame[:i] + b"b" + frame[i + 1:], frame[:40] + bytes([frame[40] ^ 1]) + frame[41:]):
        with pytest.raises(BadSignature):
            decode(tampered)


def test_another_network_is_forbidden() -> None:
    with pytest.raises(Forbidden):
        decode(encode_frame(KEY, "othernet", NOW, [rm.AeClose(1)]))


@pytest.mark.parametrize("sent", [NOW - SKEW - 1, NOW + SKEW + 1, 0])
def test_frames_outside_the_time_window_expire(sent: int) -> None:
    with pytest.raises(Expired):
        decode(encode_frame(KEY, NET, sent, [rm.AeClose(1)]))


def test_oversized_frames_are_refused_before_decoding() -> None:
    frame = encode_frame(KEY, NET, NOW, [rm.AeClose(1)])
    assert decode(frame, bytes_max=len(frame))[1] == [rm.AeClose(1)]
    with pytest.raises(TooLarge):
        decode(frame, bytes_max=len(frame) - 1)
    with pytest.raises(TooLarge):
        decode(b"\xc1" * 100, bytes_max=99)  # garbage, but too large is said first


def test_wrong_version_and_shape_are_bad_frames() -> None:
    _, pk, sig, body = msgpack.unpackb(encode_frame(KEY, NET, NOW, []))
    for outer in ([2, pk, sig, body], [VERSION, pk, sig], [VERSION, pk[:-1], sig, body], [VERSION, pk, sig, "x"]):
        with pytest.raises(BadFrame):
            decode(msgpack.packb(outer, use_bin_type=True))


@settings(max_examples=500)
@given(data=st.binary(max_size=300))
def test_garbage_bytes_raise_only_frame_errors(data: bytes) -> None:
    with contextlib.suppress(BadFrame, TooLarge):
        decode(data, bytes_max=200)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(objs=st.lists(msgpack_objects, max_size=3))
def test_signed_frames_of_garbage_messages_raise_only_codec_errors(objs: list[Any]) -> None:
    body = msgpack.packb([NET, NOW, objs], use_bin_type=True)
    frame = msgpack.packb([VERSION, KEY.public_key, KEY.sign(REPLICA_DOMAIN + body), body], use_bin_type=True)
    with contextlib.suppress(*CODEC_ERRORS):
        decode(frame)


@settings(max_examples=50, suppress_health_check=[HealthCheck.too_slow])
@given(msgs=st.lists(messages, max_size=20), bytes_max=st.integers(4096, 20_000))
def test_split_batch_keeps_order_and_every_frame_under_the_bound(msgs: list[object], bytes_max: int) -> None:
    parts = split_batch(msgs, bytes_max)
    assert [m for p in parts for m in p] == msgs and all(parts)
    for p in parts:
        assert len(encode_frame(KEY, "n" * 64, NOW, p)) <= frame_bytes(p) <= bytes_max


def test_split_batch_refuses_a_message_that_fits_no_frame() -> None:
    big = SearchQuery(1, {"q": "x" * 5000})
    assert split_batch([rm.AeClose(1)] * (MESSAGES_PER_FRAME_MAX + 1), MAX)[1] == [rm.AeClose(1)]
    with pytest.raises(TooLarge):
        split_batch([rm.AeClose(1), big], FRAME_OVERHEAD_BYTES + 4000)


def test_config_defaults_and_checks() -> None:
    cfg = ReplicaCodecConfig()
    assert cfg.frame_bytes_max == 8 * 1024 * 1024 and cfg.skew_ms == 60_000
    with pytest.raises(InvalidArgument):
        ReplicaCodecConfig(frame_bytes_max=10)
    with pytest.raises(InvalidArgument):
        ReplicaCodecConfig(skew_ms=-1)


def test_throughput_of_32_put_records_of_1_kib() -> None:
    """Measured, not asserted (run with -s to see the figure)."""
    batch = [rm.PutRecord(2**62 + i, Record(Kind.MEMORY, ("agents/a1", f"m{i:08d}"), {
        "id": f"m{i:08d}", "ns": "agents/a1", "hlc": 1 << 40, "deleted": False, "owner": KEY.agent_id,
        "memory_type": "note", "content": "lorem ipsum " * 85, "metadata": {"source": "bench", "n": i}}))
        for i in range(32)]
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 0.5:
        assert len(decode(encode_frame(KEY, NET, NOW, batch))[1]) == 32
        n += 1
    dt = time.perf_counter() - t0
    frame = encode_frame(KEY, NET, NOW, batch)
    print(f"\nreplica codec: {n / dt:.0f} frames/s ({32 * n / dt:.0f} records/s) encode+decode, "
          f"frame {len(frame)} bytes, frame_bytes bound {frame_bytes(batch)}")
