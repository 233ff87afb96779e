"""The ingress accepts exactly what the published JSON Schema accepts, on the inputs
where a JSON parser, msgspec and a JSON Schema validator are most likely to differ.
(tests/integration/test_ingress_fuzz.py asks the same of thousands of generated ones.)
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from contracts import CaseOpened
from services.ingress.domain import DEFAULT_LIMITS, open_case
from tests.unit.ingress.schema_oracle import acceptable
from tests.unit.ingress.test_domain import CLAIM, with_data

LIMIT = DEFAULT_LIMITS.max_body_bytes


def claim(**changes: Any) -> bytes:
    return json.dumps({**CLAIM, **changes}).encode()


TRICKY = {
    "valid": json.dumps(CLAIM).encode(),
    "integral float": with_data(amount_cents=42_001.0),
    "exponent": with_data(amount_cents=4.2001e4),
    "fraction": with_data(amount_cents=42_001.5),
    "number as string": with_data(amount_cents="64250"),
    "bool as number": with_data(amount_cents=True),
    "at the maximum": with_data(amount_cents=1_000_000_000),
    "over the maximum": with_data(amount_cents=1_000_000_001),
    "huge integer": json.dumps(CLAIM).replace("42001", "9" * 5000).encode(),
    "infinite": json.dumps(CLAIM).replace("42001", "1e400").encode(),
    "NaN": json.dumps(CLAIM).replace("42001", "NaN").encode(),
    "trailing newline in a pattern": with_data(policy_number="P-12345\n"),
    "trailing newline in the reference": claim(external_ref="CLM-7\n"),
    "unicode digits": with_data(policy_number="P-\u0661\u0662\u0663\u0664"),
    "astral claimant at the limit": with_data(claimant="\U0001f600" * 200),
    "astral claimant over the limit": with_data(claimant="\U0001f600" * 201),
    "control characters": with_data(description="\x00\x1f\u2028"),
    "lone surrogate": json.dumps(CLAIM).replace("A. Jansen", "\\ud800").encode(),
    "surrogate pair": json.dumps(CLAIM).replace("A. Jansen", "\\ud83d\\ude00").encode(),
    "duplicate member": json.dumps(CLAIM).replace('"kind"', '"kind": "x", "kind"').encode(),
    "byte order mark": b"\xef\xbb\xbf" + json.dumps(CLAIM).encode(),
    "not UTF-8": json.dumps(CLAIM).replace("A. Jansen", "A. J\xe9nsen").encode("latin-1"),
    "leap day": with_data(incident_date="2024-02-29"),
    "no leap day": with_data(incident_date="2026-02-29"),
    "year zero": with_data(incident_date="0000-01-01"),
    "compact date": with_data(incident_date="20261001"),
    "unknown kind": claim(kind="parking"),
    "null data": claim(data=None),
    "currency given": with_data(currency="EUR"),
    "other currency": with_data(currency="USD"),
    "padded to the limit": json.dumps(CLAIM).encode().ljust(LIMIT),
    "padded over the limit": json.dumps(CLAIM).encode().ljust(LIMIT + 1),
    "whitespace around": b" \t\r\n" + json.dumps(CLAIM).encode() + b"\n",
    "trailing garbage": json.dumps(CLAIM).encode() + b"x",
    "array": b"[]",
    "empty": b"",
}


@pytest.mark.parametrize("name", list(TRICKY))
def test_the_ingress_and_the_schema_agree(name: str) -> None:
    body = TRICKY[name]
    opened = isinstance(open_case("crm", body, "ingress"), CaseOpened)
    assert opened == acceptable(body, max_body_bytes=LIMIT), name


def _escaped(text: str) -> str:
    return "".join("".join(f"\\u{unit:04x}" for unit in _utf16(char)) for char in text)


def _utf16(char: str) -> list[int]:
    encoded = char.encode("utf-16-be")
    return [int.from_bytes(encoded[i : i + 2], "big") for i in range(0, len(encoded), 2)]


def test_the_largest_claim_fits_the_limit_with_every_character_escaped() -> None:
    largest = {
        "kind": "insurance_claim",
        "external_ref": "R" * 64,
        "data": {
            "policy_number": "P-" + "9" * 10,
            "claimant": "\U0001f600" * 200,
            "claim_type": "travel",
            "amount_cents": 1_000_000_000,
            "currency": "EUR",
            "incident_date": "2026-10-01",
            "description": "\U0001f600" * 4000,
            "payee_account": "\U0001f600" * 64,
        },
    }

    def write(value: Any) -> str:
        if isinstance(value, dict):
            members = (f'"{_escaped(k)}":{write(v)}' for k, v in value.items())
            return "{" + ",".join(members) + "}"
        if isinstance(value, str):
            return f'"{_escaped(value)}"'
        return json.dumps(value)

    body = write(largest).encode()
    assert len(body) <= LIMIT
    assert isinstance(open_case("crm", body, "ingress"), CaseOpened)
