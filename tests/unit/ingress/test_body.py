"""What the dead-letter stream keeps of a refused body."""

from __future__ import annotations

import hashlib

from services.ingress.body import CUT_OFF, DIGEST, SIZE, TRUNCATED, ReceivedBody


def test_a_body_within_the_limit_is_kept_whole() -> None:
    body = b'{"kind": 1}'
    kept, headers = ReceivedBody.of(body).kept(whole_up_to=64, prefix=4)
    assert kept == body
    assert headers == {SIZE: "11", DIGEST: f"sha256:{hashlib.sha256(body).hexdigest()}"}


def test_a_larger_body_is_kept_as_its_start_with_the_whole_ones_size_and_digest() -> None:
    body = bytes(range(256)) * 40
    kept, headers = ReceivedBody.of(body).kept(whole_up_to=1024, prefix=100)
    assert kept == body[:100]
    assert headers[SIZE] == str(len(body))
    assert headers[DIGEST] == f"sha256:{hashlib.sha256(body).hexdigest()}"
    assert headers[TRUNCATED] == "true"
    assert CUT_OFF not in headers


def test_a_body_read_only_in_part_says_so() -> None:
    received = ReceivedBody(head=b"abc", size=10, sha256="00", complete=False)
    kept, headers = received.kept(whole_up_to=1024, prefix=100)
    assert kept == b"abc"
    assert headers[TRUNCATED] == headers[CUT_OFF] == "true"
