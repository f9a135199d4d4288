"""The signed frame layout shared by gossip and replica links: seal/open round trips, and every shape,
version, extension-type and field error is a bad frame."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crypto.errors import BadFrame
from crypto.identity import Identity, verify_signature
from crypto.signed_frame import array, boolean, integer, number, open_frame, seal, string, unpack

KEY = Identity.generate()


@given(body=st.binary(max_size=512), version=st.integers(0, 2**31))
def test_seal_then_open_gives_the_signed_body_back(body: bytes, version: int) -> None:
    pk, sig, got = open_frame(seal(KEY, b"dom\x00", version, body), version=version, what="t")
    assert (pk, got) == (KEY.public_key, body)
    assert verify_signature(pk, sig, b"dom\x00" + body)
    assert not verify_signature(pk, sig, b"other\x00" + body)  # the domain is part of what is signed


@pytest.mark.parametrize("outer", [
    [2, KEY.public_key, bytes(64), b""],  # other version
    [True, KEY.public_key, bytes(64), b""],  # a bool is not the version 1
    [1, b"short", bytes(64), b""], [1, KEY.public_key, bytes(63), b""], [1, KEY.public_key, bytes(64), "s"],
    [1, KEY.public_key, bytes(64)], "not a list",
])
def test_malformed_outer_frames_are_bad_frames(outer: object) -> None:
    with pytest.raises(BadFrame):
        open_frame(msgpack.packb(outer, use_bin_type=True), version=1, what="t")


def test_extension_types_and_garbage_are_bad_frames() -> None:
    for raw in (msgpack.packb(msgpack.ExtType(5, b"x")), b"\xc1", msgpack.packb({1: 2})):
        with pytest.raises(BadFrame):
            unpack(raw, "t")


def test_field_checks() -> None:
    assert string("ab", 2) == "ab" and integer(5, 9) == 5 and number(1) == 1.0 and boolean(False) is False
    assert array([1, 2], 2) == [1, 2]
    for bad in (lambda: string("abc", 2), lambda: string(b"a", 9), lambda: integer(True), lambda: integer(-1),
                lambda: integer(10, 9), lambda: number(float("nan")), lambda: boolean(0), lambda: array((1,)),
                lambda: array([1], 2)):
        with pytest.raises(BadFrame):
            bad()
