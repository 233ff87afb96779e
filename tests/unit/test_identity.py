from __future__ import annotations

import stat
from pathlib import Path

import pytest

from mesh._trust.identity import SIGNATURE_HEADER, SIGNER_HEADER, Identity, verify, verify_headers
from mesh.errors import ConfigurationError, SignatureError


def test_a_signature_verifies_with_the_signer_s_public_key() -> None:
    identity = Identity.generate()
    signature = identity.sign("mesh.case.c-1.case_opened", b'{"a":1}')
    verify(identity.public_key, "mesh.case.c-1.case_opened", b'{"a":1}', signature)
    assert identity.public_key.startswith("U")


@pytest.mark.parametrize(
    ("subject", "body"),
    [
        ("mesh.case.c-1.case_opened", b'{"a":2}'),  # body changed
        ("mesh.case.c-2.case_opened", b'{"a":1}'),  # moved to another case
    ],
)
def test_any_change_to_subject_or_body_is_detected(subject: str, body: bytes) -> None:
    identity = Identity.generate()
    headers = identity.signature_headers("mesh.case.c-1.case_opened", b'{"a":1}')
    with pytest.raises(SignatureError, match="does not match"):
        verify_headers(subject, body, headers)


def test_another_key_s_signature_is_refused() -> None:
    signer, impostor = Identity.generate(), Identity.generate()
    headers = impostor.signature_headers("s", b"x")
    headers[SIGNER_HEADER] = signer.public_key
    with pytest.raises(SignatureError, match="does not match"):
        verify_headers("s", b"x", headers)


def test_unsigned_and_garbled_headers_are_refused() -> None:
    with pytest.raises(SignatureError, match="unsigned"):
        verify_headers("s", b"x", {})
    identity = Identity.generate()
    headers = identity.signature_headers("s", b"x")
    with pytest.raises(SignatureError, match="bad signer key"):
        verify_headers("s", b"x", {**headers, SIGNER_HEADER: "UNOTAKEY"})
    flipped = identity.public_key[:-1] + ("A" if identity.public_key[-1] != "A" else "B")
    with pytest.raises(SignatureError, match="bad signer key"):
        verify_headers("s", b"x", {**headers, SIGNER_HEADER: flipped})
    with pytest.raises(SignatureError, match="does not match"):
        verify_headers("s", b"x", {**headers, SIGNATURE_HEADER: "%%%"})


def test_seeds_are_saved_private_and_load_back(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "agent.nk"
    created = Identity.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Identity.load_or_create(path).public_key == created.public_key


def test_a_bad_seed_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="not a valid nkey seed"):
        Identity("SUNOTASEED")


def test_direct_get_times_match_consumer_metadata_times() -> None:
    import datetime as dt

    from mesh._broker.direct_get import broker_time

    nanos = 1_795_999_843_273_014_885
    stamp = dt.datetime.fromtimestamp(nanos // 10**9, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    # what nats-py's Msg.Metadata computes from the ack subject's nanoseconds
    expected = dt.datetime.fromtimestamp(nanos / 1_000_000_000.0, dt.UTC)
    assert broker_time(f"{stamp}.{nanos % 10**9:09d}Z") == expected
    assert broker_time(f"{stamp}Z") == dt.datetime.fromtimestamp(nanos // 10**9, dt.UTC)
