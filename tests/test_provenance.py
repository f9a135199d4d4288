"""Record signatures: they verify for exactly the signed (ns, id, memory_type, content)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from crypto.identity import Identity
from crypto.provenance import record_bytes, sign_record, verify_record

AUTHOR, OTHER = Identity.generate(), Identity.generate()
fields = st.tuples(st.text(max_size=20), st.text(max_size=20), st.text(max_size=10), st.text(max_size=200))


@given(fields, fields)
def test_signature_binds_every_field(a: tuple[str, str, str, str], b: tuple[str, str, str, str]) -> None:
    sig = sign_record(AUTHOR, *a)
    assert verify_record(AUTHOR.public_key, sig, *a)
    assert verify_record(AUTHOR.public_key, sig, *b) == (a == b)
    assert not verify_record(OTHER.public_key, sig, *a)


@given(st.text(max_size=10), st.text(max_size=10), st.text(max_size=10))
def test_encoding_is_unambiguous(x: str, y: str, z: str) -> None:
    # Moving characters across a field boundary must change the signed bytes.
    if y:
        assert record_bytes(x + y[0], y[1:], z, "c") != record_bytes(x, y, z, "c")
    assert record_bytes(x, y, z, "c") == record_bytes(x, y, z, "c")
