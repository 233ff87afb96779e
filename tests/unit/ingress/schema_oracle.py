"""What the published contract says about a body, worked out without the ingress's
code: the answer the ingress must agree with (accept, or refuse).

The contract is the committed JSON Schema (`ingress_open_case_request.json`, and
`ingress_claim_data.json` for the data of an insurance claim) read by the `jsonschema`
package with format checking, plus the bounds `contracts.ingress` documents: the body
size limit, and I-JSON (RFC 7493: UTF-8, no member name twice in an object, no lone
surrogates). JSON is parsed here by Python's `json`, the ingress parses with msgspec.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import jsonschema
import jsonschema.validators
from jsonschema import Draft202012Validator

from contracts.ingress import CLAIM_KIND
from contracts.schema_export import SCHEMA_DIR


class NotIJson(ValueError):
    pass


def _ecma_pattern(
    validator: Any, pattern: str, instance: Any, schema: dict[str, Any]
) -> Iterator[jsonschema.ValidationError]:
    # A JSON Schema pattern is an ECMA-262 regex: its `$` is the end of the string only.
    # jsonschema hands it to Python's `re`, whose `$` also matches before a final "\n".
    assert "$" not in pattern[:-1], f"{pattern!r}: only a final `$` is translated here"
    python = pattern[:-1] + r"\Z" if pattern.endswith("$") else pattern
    if validator.is_type(instance, "string") and not re.search(python, instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


_Validator = jsonschema.validators.extend(Draft202012Validator, {"pattern": _ecma_pattern})


def _validator(name: str) -> Any:
    schema = json.loads((SCHEMA_DIR / name).read_text())
    return _Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


REQUEST = _validator("ingress_open_case_request.json")
CLAIM_DATA = _validator("ingress_claim_data.json")


def _unique_names(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise NotIJson(f"a member name twice in {names}")
    return dict(pairs)


def _number(text: str) -> int | float:
    # Python's int() refuses more than 4,300 digits; as a float such a number is still
    # out of every range and no integer, which is all the schema can say about it.
    return int(text) if len(text) <= 4000 else float(text)


def _refuse_constant(name: str) -> None:
    raise NotIJson(f"{name} is not JSON")


def _check_strings(value: Any) -> None:
    """No lone surrogates (`"\\ud800"` parses in Python, but is no Unicode text)."""
    if isinstance(value, str):
        value.encode("utf-8")
    elif isinstance(value, dict):
        for name, member in value.items():
            name.encode("utf-8")
            _check_strings(member)
    elif isinstance(value, list):
        for item in value:
            _check_strings(item)


def parse_i_json(body: bytes) -> Any:
    """The body as I-JSON, or NotIJson."""
    try:
        document = json.loads(
            body.decode("utf-8"),  # strict: no invalid UTF-8; a BOM then fails in json
            object_pairs_hook=_unique_names,
            parse_int=_number,
            parse_constant=_refuse_constant,
        )
        _check_strings(document)
    except (UnicodeError, json.JSONDecodeError) as exc:
        raise NotIJson(str(exc)) from exc
    except RecursionError as exc:
        # Python's json gives up near 1,000 levels; the schema accepts 2 levels at most.
        raise NotIJson("too deep for Python's json") from exc
    return document


def acceptable(body: bytes, *, max_body_bytes: int) -> bool:
    """Whether the contract says `body` opens a case."""
    if len(body) > max_body_bytes:
        return False
    try:
        document = parse_i_json(body)
    except NotIJson:
        return False
    if not REQUEST.is_valid(document) or document["kind"] != CLAIM_KIND:
        return False
    return bool(CLAIM_DATA.is_valid(document["data"]))
