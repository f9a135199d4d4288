"""Identities: the agent id rule, signing, key files (atomic, private) and the public key cache."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from crypto.errors import InvalidArgument
from crypto.identity import Identity, PublicKeyCache, agent_id_of, verify_signature


def test_agent_id_is_first_16_bytes_of_sha256_in_lowercase_hex() -> None:
    ident = Identity.generate()
    assert ident.agent_id == hashlib.sha256(ident.public_key).digest()[:16].hex()
    assert len(ident.agent_id) == 32 and ident.agent_id == ident.agent_id.lower()
    assert agent_id_of(ident.public_key) == ident.agent_id
    assert ident.public_key_hex == ident.public_key.hex() and len(ident.public_key) == 32


@pytest.mark.parametrize("bad", [b"", b"\x00" * 31, b"\x00" * 33, "00" * 32])
def test_agent_id_rejects_anything_but_32_raw_bytes(bad: object) -> None:
    with pytest.raises(InvalidArgument):
        agent_id_of(bad)  # type: ignore[arg-type]


@given(seed=st.binary(min_size=32, max_size=32), data=st.binary(max_size=256))
def test_private_bytes_round_trip_gives_the_same_identity_and_signatures(seed: bytes, data: bytes) -> None:
    a = Identity.from_private_bytes(seed)
    b = Identity.from_private_bytes(a.private_bytes())
    assert a.private_bytes() == seed
    assert (a.public_key, a.agent_id) == (b.public_key, b.agent_id)
    sig = a.sign(data)
    assert sig == b.sign(data) and len(sig) == 64  # Ed25519 is deterministic
    assert verify_signature(a.public_key, sig, data)
    assert not verify_signature(a.public_key, sig, data + b"x")


@pytest.mark.parametrize("bad", [b"", b"\x01" * 31, b"\x01" * 64, "01" * 32])
def test_from_private_bytes_rejects_wrong_sizes(bad: object) -> None:
    with pytest.raises(InvalidArgument):
        Identity.from_private_bytes(bad)  # type: ignore[arg-type]


def test_repr_does_not_leak_the_private_key() -> None:
    ident = Identity.generate()
    assert ident.private_bytes().hex() not in repr(ident)
    assert ident.agent_id in repr(ident)


def test_save_load_round_trip_with_mode_0600(tmp_path) -> None:
    ident = Identity.generate()
    path = tmp_path / "agent.key"
    old_umask = os.umask(0)  # even the most permissive umask must not widen the file
    try:
        ident.save(path)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    loaded = Identity.load(str(path))
    assert loaded.private_bytes() == ident.private_bytes() and loaded.agent_id == ident.agent_id
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent.key"]  # no temp file left behind


def test_save_refuses_to_overwrite_unless_asked(tmp_path) -> None:
    first, second = Identity.generate(), Identity.generate()
    path = tmp_path / "agent.key"
    first.save(path)
    with pytest.raises(InvalidArgument, match="overwrite"):
        second.save(path)
    assert Identity.load(path).agent_id == first.agent_id
    second.save(path, overwrite=True)
    assert Identity.load(path).agent_id == second.agent_id
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent.key"]


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o610, 0o601])
def test_load_refuses_a_key_others_may_access(tmp_path, mode: int) -> None:
    path = tmp_path / "agent.key"
    Identity.generate().save(path)
    os.chmod(path, mode)
    with pytest.raises(InvalidArgument, match="chmod 600"):
        Identity.load(path)
    os.chmod(path, 0o400)  # owner-only read is fine
    Identity.load(path)


def test_load_rejects_garbage_and_non_ed25519_keys(tmp_path) -> None:
    garbage = tmp_path / "garbage.key"
    fd = os.open(garbage, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"not a key")
    os.close(fd)
    with pytest.raises(InvalidArgument):
        Identity.load(garbage)
    ec_key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    other = tmp_path / "ec.key"
    fd = os.open(other, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, ec_key)
    os.close(fd)
    with pytest.raises(InvalidArgument, match="not an Ed25519"):
        Identity.load(other)


def test_key_cache_is_a_bounded_lru_and_counts_hits() -> None:
    idents = [Identity.generate() for _ in range(4)]
    cache = PublicKeyCache(2)
    sigs = [i.sign(b"m") for i in idents]
    for i, s in zip(idents[:2], sigs[:2], strict=True):
        assert cache.verify(i.public_key, s, b"m")
    assert cache.verify(idents[0].public_key, sigs[0], b"m")  # hit; 0 becomes most recent
    assert cache.verify(idents[2].public_key, sigs[2], b"m")  # evicts 1, the least recent
    assert len(cache) == 2
    stats = cache.statistics()
    assert (stats["hits"], stats["misses"]) == (1, 3)
    assert cache.verify(idents[0].public_key, sigs[0], b"m")
    assert cache.statistics()["hits"] == 2
    assert cache.verify(idents[1].public_key, sigs[1], b"m")
    assert cache.statistics()["misses"] == 4


def test_verify_signature_uses_the_cache_it_is_given_even_when_empty() -> None:
    ident = Identity.generate()
    cache = PublicKeyCache(8)
    sig = ident.sign(b"x")
    assert verify_signature(ident.public_key, sig, b"x", cache)
    assert verify_signature(ident.public_key, sig, b"x", cache)
    assert cache.statistics()["misses"] == 1 and cache.statistics()["hits"] == 1


@given(pk=st.one_of(st.binary(max_size=40), st.text(max_size=5), st.none()),
       sig=st.one_of(st.binary(max_size=70), st.text(max_size=5), st.none()),
       data=st.one_of(st.binary(max_size=20), st.text(max_size=5)))
def test_verify_never_raises_and_rejects_garbage(pk: object, sig: object, data: object) -> None:
    cache = PublicKeyCache(4)
    assert cache.verify(pk, sig, data) is False  # type: ignore[arg-type]
    assert len(cache) <= 1


def test_wrong_key_or_data_does_not_verify() -> None:
    a, b = Identity.generate(), Identity.generate()
    sig = a.sign(b"hello")
    assert not verify_signature(b.public_key, sig, b"hello")
    assert not verify_signature(a.public_key, sig[:-1] + bytes([sig[-1] ^ 1]), b"hello")
