"""Reading a body as JSON within bounds: depth is counted without parsing, member names
are unique, numbers are JSON's."""

from __future__ import annotations

import pytest

from services.ingress.json_body import JsonDocument, Limits, nesting_depth, read_json
from services.ingress.problems import Refusal


@pytest.mark.parametrize(
    ("body", "depth"),
    [
        (b"1", 0),
        (b"{}", 1),
        (b'{"a": [1, {"b": []}]}', 4),
        (b'["[[[[", "\\"[[[", "\\\\"]', 1),  # brackets in strings, escaped quotes
        (b"[]" * 1000, 1),
        (b"[" * 5000 + b"]" * 5000, 5000),
        (b'"unterminated [[[[', 0),
    ],
)
def test_nesting_is_counted_outside_strings(body: bytes, depth: int) -> None:
    assert nesting_depth(body) == depth


def test_a_hostile_body_is_scanned_once() -> None:
    # Quotes and backslashes that make a naive string scan start again at every quote.
    for body in (b'"\\' * 32_000, b'"' + b"\\" * 65_000, b'["' * 20_000):
        assert isinstance(read_json(body, Limits()), Refusal)


def test_numbers_are_json_numbers() -> None:
    document = read_json(b'{"a": 42001.0, "b": 1.5, "c": [2e3], "d": -0.0}', Limits())
    assert isinstance(document, JsonDocument)
    assert document.value == {"a": 42_001, "b": 1.5, "c": [2000], "d": 0}
    assert isinstance(document.value["a"], int)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b'{"a": 1, "a": 1}', "duplicate_key"),
        (b'{"a": {"b": 1, "\\u0062": 2}}', "duplicate_key"),  # the same name, escaped
        (b"NaN", "not_json"),
        (b"\xef\xbb\xbf{}", "not_json"),  # a byte order mark
        (b'"\\udc00"', "not_json"),
        (b"1e400", "range"),
        (b"", "not_json"),
    ],
)
def test_what_is_not_i_json_is_refused(body: bytes, code: str) -> None:
    refusal = read_json(body, Limits())
    assert isinstance(refusal, Refusal)
    assert refusal.problems[0].code == code
