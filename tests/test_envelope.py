"""Signed requests: round trips in both forms, tampering, replay, the window, claimed ids, and fuzzing."""

from __future__ import annotations

import base64
import json
import string
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from crypto.config import EnvelopeConfig
from crypto.envelope import (
    REQUEST_DOMAIN,
    Request,
    RequestVerifier,
    decode_request,
    sign_payload,
    sign_request,
)
from crypto.errors import BadFrame, BadSignature, Expired, InvalidArgument, MnemonetError, Replay, TooLarge
from crypto.identity import Identity, verify_signature

ALICE = Identity.from_private_bytes(b"\x01" * 32)
BOB = Identity.from_private_bytes(b"\x02" * 32)
NOW = 1_700_000_000_000
CONFIG = EnvelopeConfig()
B64 = string.ascii_uppercase + string.ascii_lowercase + string.digits + "+/"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
data_maps = st.dictionaries(st.text(max_size=8), json_values, max_size=5)


def frame(binary: bool = True, **overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"action": "memory.store", "ns": ALICE.agent_id, "data": {"content": "hi"},
                            "rid": 1, "ts_ms": NOW, "binary": binary}
    args.update(overrides)
    return sign_request(ALICE, **args)


def payload(**overrides: Any) -> dict[str, Any]:
    p: dict[str, Any] = {"v": 1, "rid": 9, "action": "memory.search", "ns": None, "data": {}, "ts": NOW,
                         "nonce": "0123456789abcdef", "pk": ALICE.public_key_hex}
    p.update(overrides)
    return {k: v for k, v in p.items() if v is not _DROP}


_DROP = object()


def outcome(f: object, binary: bool, now: int = NOW) -> type[MnemonetError] | Request:
    """Decode and verify with a fresh verifier; the exception type, or the Request."""
    try:
        return RequestVerifier(CONFIG).verify(decode_request(f, binary=binary, config=CONFIG), now)
    except MnemonetError as e:
        return type(e)


@settings(max_examples=150, deadline=None)
@given(data=data_maps, binary=st.booleans(), rid=st.integers(-(2**63), 2**64 - 1) | st.text(max_size=128),
       ns=st.none() | st.text(max_size=40), grants=st.lists(st.text(max_size=30), max_size=16))
def test_round_trip_any_data_in_both_forms(data: dict[str, Any], binary: bool, rid: int | str,
                                           ns: str | None, grants: list[str]) -> None:
    f = sign_request(ALICE, action="memory.store", ns=ns, data=data, rid=rid, ts_ms=NOW, grants=grants,
                     binary=binary)
    assert isinstance(f["p"], bytes if binary else str)
    if not binary:
        assert len(f["s"]) == 88 and base64.b64decode(f["s"]) and json.loads(f["p"])["data"] == data
    u = decode_request(f, binary=binary, config=CONFIG)
    assert u.rid == rid and u.binary is binary
    r = RequestVerifier(CONFIG).verify(u, NOW)
    assert (r.rid, r.action, r.ns, r.data, r.ts_ms) == (rid, "memory.store", ns, data, NOW)
    assert (r.public_key, r.agent_id, r.grants, r.binary) == (ALICE.public_key, ALICE.agent_id, tuple(grants), binary)
    assert len(r.nonce) == 32 and r.payload_bytes == u.payload_bytes


def test_text_form_is_compact_json_and_the_signature_covers_its_utf8_bytes() -> None:
    f = frame(binary=False, data={"text": "café ✓"}, nonce="n0nce-n0nce")
    assert f["p"] == json.dumps(json.loads(f["p"]), separators=(",", ":"), ensure_ascii=False)
    assert "café ✓" in f["p"]
    sig = base64.b64decode(f["s"])
    assert isinstance(outcome(f, False), Request)
    assert verify_signature(ALICE.public_key, sig, REQUEST_DOMAIN + f["p"].encode("utf-8"))


def test_verifier_accepts_any_json_text_it_did_not_produce() -> None:
    # Another language's encoder: spaces, other key order. No canonical form is needed.
    text = (f'{{ "pk": "{ALICE.public_key_hex}", "nonce": "abcdefgh", "ts": {NOW}, "data": {{"a": [1, 2]}}, '
            '"ns": null, "action": "memory.get", "rid": "r-1", "v": 1 }')
    sig = ALICE.sign(REQUEST_DOMAIN + text.encode())
    r = outcome({"p": text, "s": base64.b64encode(sig).decode()}, False)
    assert isinstance(r, Request) and r.rid == "r-1" and r.data == {"a": [1, 2]}


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_tampering_any_payload_byte_never_verifies_binary(data: st.DataObject) -> None:
    f = frame(binary=True)
    i = data.draw(st.integers(0, len(f["p"]) - 1))
    b = data.draw(st.integers(0, 255).filter(lambda x: x != f["p"][i]))
    tampered = {"p": f["p"][:i] + bytes([b]) + f["p"][i + 1:], "s": f["s"]}
    try:
        u = decode_request(tampered, binary=True, config=CONFIG)
    except (BadFrame, TooLarge):
        return  # no longer a well-formed payload
    with pytest.raises(BadSignature):  # decodes: then exactly the signature check fails
        RequestVerifier(CONFIG).verify(u, NOW)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_tampering_any_payload_char_never_verifies_text(data: st.DataObject) -> None:
    f = frame(binary=False)
    i = data.draw(st.integers(0, len(f["p"]) - 1))
    c = data.draw(st.characters(codec="utf-8").filter(lambda x: x != f["p"][i]))
    tampered = {"p": f["p"][:i] + c + f["p"][i + 1:], "s": f["s"]}
    try:
        u = decode_request(tampered, binary=False, config=CONFIG)
    except (BadFrame, TooLarge):
        return
    with pytest.raises(BadSignature):
        RequestVerifier(CONFIG).verify(u, NOW)


@pytest.mark.parametrize("binary", [True, False])
def test_tampering_inside_a_value_is_bad_signature_and_breaking_structure_is_bad_frame(binary: bool) -> None:
    f = frame(binary=binary, nonce="aaaaaaaaaaaaaaaa")
    p = f["p"]
    inside = p.replace(b"aaaaaaaaaaaaaaaa", b"aaaaaaaaaaaaaaab") if binary else p.replace("aaaaaaaaaaaaaaaa", "aaaaaaaaaaaaaaab")
    assert outcome({"p": inside, "s": f["s"]}, binary) is BadSignature
    broken = b"\xc1" + p[1:] if binary else "[" + p[1:]  # 0xc1 is never used by msgpack
    assert outcome({"p": broken, "s": f["s"]}, binary) is BadFrame


@settings(max_examples=200, deadline=None)
@given(i=st.integers(0, 63), x=st.integers(1, 255))
def test_tampering_any_signature_byte_is_exactly_bad_signature_binary(i: int, x: int) -> None:
    f = frame(binary=True)
    s = bytearray(f["s"])
    s[i] ^= x
    assert outcome({"p": f["p"], "s": bytes(s)}, True) is BadSignature


@settings(max_examples=300, deadline=None)
@given(i=st.integers(0, 87), c=st.characters(codec="utf-8"))
def test_tampering_any_signature_char_text_is_bad_signature_or_bad_frame_exactly(i: int, c: str) -> None:
    f = frame(binary=False)
    assume(c != f["s"][i])
    s = f["s"][:i] + c + f["s"][i + 1:]
    # 64 bytes = 21 groups of 3 + 1: chars 0..84 carry 6 signature bits each, char 85 carries the last
    # 2 (its low 4 bits must be 0 to be canonical), 86 and 87 are the '==' padding. Anything outside
    # the alphabet is malformed.
    still_valid_b64 = c in B64 and (i < 85 or (i == 85 and B64.index(c) % 16 == 0))
    assert outcome({"p": f["p"], "s": s}, False) is (BadSignature if still_valid_b64 else BadFrame)


@pytest.mark.parametrize("binary", [True, False])
def test_the_same_frame_twice_is_a_replay(binary: bool) -> None:
    verifier = RequestVerifier(CONFIG)
    f = frame(binary=binary, rid="first")
    verifier.verify(decode_request(f, binary=binary, config=CONFIG), NOW)
    with pytest.raises(Replay) as e:
        verifier.verify(decode_request(f, binary=binary, config=CONFIG), NOW + 5)
    assert e.value.details["rid"] == "first"
    assert verifier.statistics()["verified"] == 1 and verifier.statistics()["replay"] == 1


@pytest.mark.parametrize("skew", [CONFIG.window_ms + 1, -CONFIG.window_ms - 1, 10**12])
def test_timestamp_outside_the_window_is_expired(skew: int) -> None:
    assert outcome(frame(ts_ms=NOW + skew), True) is Expired


@pytest.mark.parametrize("skew", [CONFIG.window_ms, -CONFIG.window_ms, 0])
def test_window_bounds_are_inclusive(skew: int) -> None:
    assert isinstance(outcome(frame(ts_ms=NOW + skew), True), Request)


def test_replaying_after_the_window_is_expired_not_accepted() -> None:
    verifier = RequestVerifier(CONFIG)
    f = frame()
    verifier.verify(decode_request(f, binary=True, config=CONFIG), NOW)
    with pytest.raises(Expired):
        verifier.verify(decode_request(f, binary=True, config=CONFIG), NOW + CONFIG.window_ms + 1)


@pytest.mark.parametrize("binary", [True, False])
def test_claimed_agent_id_must_be_the_signing_keys(binary: bool) -> None:
    assert isinstance(outcome(sign_payload(ALICE, payload(aid=ALICE.agent_id), binary=binary), binary), Request)
    assert outcome(sign_payload(ALICE, payload(aid=BOB.agent_id), binary=binary), binary) is BadSignature


@pytest.mark.parametrize("binary", [True, False])
def test_signing_with_one_key_and_naming_another_is_bad_signature(binary: bool) -> None:
    forged = sign_payload(ALICE, payload(pk=BOB.public_key_hex, aid=BOB.agent_id), binary=binary)
    assert outcome(forged, binary) is BadSignature


def test_checks_run_in_order_signature_aid_window_replay() -> None:
    # Bad signature wins over a bad aid, a stale ts and a replay; a bad aid wins over a stale ts.
    stale = NOW - 10 * CONFIG.window_ms
    bad_sig = sign_payload(BOB, payload(aid=BOB.agent_id, ts=stale))
    assert outcome(bad_sig, True) is BadSignature
    assert outcome(sign_payload(ALICE, payload(aid=BOB.agent_id, ts=stale)), True) is BadSignature
    verifier = RequestVerifier(CONFIG)
    f = sign_payload(ALICE, payload())
    verifier.verify(decode_request(f, binary=True), NOW)
    with pytest.raises(Expired):  # a replay that is also stale reports the window
        verifier.verify(decode_request(f, binary=True), NOW + 2 * CONFIG.window_ms)
    stats = verifier.statistics()
    assert (stats["verified"], stats["expired"], stats["replay"]) == (1, 1, 0)


@pytest.mark.parametrize(
    ("override", "error"),
    [
        ({"v": 2}, BadFrame), ({"v": True}, BadFrame), ({"v": _DROP}, BadFrame),
        ({"action": ""}, BadFrame), ({"action": 3}, BadFrame), ({"ns": 5}, BadFrame),
        ({"data": [1]}, BadFrame), ({"ts": 1.5}, BadFrame), ({"ts": "1"}, BadFrame), ({"ts": True}, BadFrame),
        ({"nonce": "short"}, BadFrame), ({"nonce": "n" * 65}, TooLarge), ({"nonce": 12345678}, BadFrame),
        ({"pk": ALICE.public_key_hex.upper()}, BadFrame), ({"pk": ALICE.public_key_hex[:-2]}, BadFrame),
        ({"aid": 7}, BadFrame), ({"grants": "tok"}, BadFrame), ({"grants": [1]}, BadFrame),
        ({"grants": ["g"] * 17}, TooLarge), ({"extra": 1}, BadFrame),
    ],
)
@pytest.mark.parametrize("binary", [True, False])
def test_bad_fields_after_rid_are_reported_with_the_rid(
    override: dict[str, Any], error: type[MnemonetError], binary: bool
) -> None:
    f = sign_payload(ALICE, payload(**override), binary=binary)
    with pytest.raises(error) as e:
        decode_request(f, binary=binary, config=CONFIG)
    assert type(e.value) is error and e.value.details["rid"] == 9


@pytest.mark.parametrize(("rid", "error"), [("r" * 129, TooLarge), (2**64, TooLarge), (-(2**63) - 1, TooLarge),
                                            (None, BadFrame), (True, BadFrame), (1.0, BadFrame), ([1], BadFrame)])
def test_a_bad_rid_is_never_echoed(rid: object, error: type[MnemonetError]) -> None:
    f = sign_payload(ALICE, payload(rid=rid), binary=False)
    with pytest.raises(error) as e:
        decode_request(f, binary=False, config=CONFIG)
    assert type(e.value) is error and "rid" not in e.value.details


def test_a_bad_signature_encoding_is_reported_with_the_rid() -> None:
    f = frame(binary=False, rid="abc")
    unpadded = {"p": f["p"], "s": f["s"].rstrip("=")}
    urlsafe = {"p": f["p"], "s": f["s"].replace("+", "-").replace("/", "_")}
    as_bytes = {"p": f["p"], "s": base64.b64decode(f["s"])}
    for bad in (unpadded, as_bytes) + ((urlsafe,) if urlsafe["s"] != f["s"] else ()):
        with pytest.raises(BadFrame) as e:
            decode_request(bad, binary=False, config=CONFIG)
        assert e.value.details["rid"] == "abc"
    with pytest.raises(BadFrame) as e:
        decode_request({"p": frame(rid=4)["p"], "s": b"\x00" * 63}, binary=True, config=CONFIG)
    assert e.value.details["rid"] == 4


@pytest.mark.parametrize("text", ['{"v":NaN}', '{"v":Infinity}', "[1]", '"x"', "", "{", "1" * 5000, "[" * 100_000])
def test_undecodable_or_non_map_json_payloads_are_bad_frame(text: str) -> None:
    with pytest.raises(BadFrame):
        decode_request({"p": text, "s": "A" * 86 + "=="}, binary=False, config=CONFIG)


def test_form_mismatch_is_bad_frame() -> None:
    with pytest.raises(BadFrame):
        decode_request(frame(binary=True), binary=False, config=CONFIG)
    with pytest.raises(BadFrame):
        decode_request(frame(binary=False), binary=True, config=CONFIG)


def test_hostile_msgpack_is_bad_frame() -> None:
    hostile = [
        msgpack.packb(msgpack.ExtType(5, b"x")),  # extension types are not part of the contract
        msgpack.packb({"a": 1}) + b"\x00",  # trailing bytes
        b"\x91" * 100_000,  # nesting deeper than any stack
        b"\xdb\xff\xff\xff\xff",  # a 4 GiB string announced, absent
        b"\x81\x01\x02",  # non-string map key
        b"\xa2\xff\xfe",  # invalid UTF-8 string
    ]
    for p in hostile:
        with pytest.raises(BadFrame):
            decode_request({"p": p, "s": b"\x00" * 64}, binary=True, config=CONFIG)


def test_sign_request_refuses_what_it_cannot_encode() -> None:
    with pytest.raises(InvalidArgument):
        frame(binary=False, data={"x": float("nan")})
    with pytest.raises(InvalidArgument):
        frame(binary=True, data={"x": object()})


garbage = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20) | st.binary(max_size=80),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["p", "s", "v", "rid", "x"]) | st.text(max_size=4), children, max_size=4),
    max_leaves=15,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(obj=garbage, binary=st.booleans())
def test_decode_any_object_raises_only_mnemonet_errors(obj: object, binary: bool) -> None:
    outcome(obj, binary)
    outcome({"p": obj, "s": obj}, binary)


@settings(max_examples=300, deadline=None)
@given(p=st.binary(max_size=300), s=st.binary(min_size=64, max_size=64))
def test_decode_random_bytes_in_p_raises_only_mnemonet_errors(p: bytes, s: bytes) -> None:
    outcome({"p": p, "s": s}, True)


@settings(max_examples=300, deadline=None)
@given(p=st.text(max_size=300), s=st.text(max_size=90))
def test_decode_random_text_in_p_raises_only_mnemonet_errors(p: str, s: str) -> None:
    outcome({"p": p, "s": s}, False)


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from(["v", "rid", "action", "ns", "data", "ts", "nonce", "pk", "aid", "grants"]),
       value=garbage, binary=st.booleans(), now=st.integers(-(2**70), 2**70))
def test_valid_looking_payloads_with_one_garbage_field_raise_only_mnemonet_errors(
    field: str, value: object, binary: bool, now: int
) -> None:
    p = payload(**{field: value})
    try:
        f = sign_payload(ALICE, p, binary=binary)
    except InvalidArgument:
        return  # unencodable (e.g. bytes in JSON); cannot reach a node
    result = outcome(f, binary, now)
    assert isinstance(result, Request) or issubclass(result, MnemonetError)
