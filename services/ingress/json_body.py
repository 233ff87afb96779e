"""Reading another system's body as a JSON document, within bounds (pure).

The bounds are checked before anything parses: the size, then how deep the body
nests (by counting brackets, which needs no recursion: a parser that recurses fails
on 5,000 levels). What is taken is I-JSON (RFC 7493): msgspec refuses invalid UTF-8,
a byte order mark and lone surrogate escapes; a member name twice in one object is
refused here, since parsers disagree about which value counts.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

import msgspec

from services.ingress.problems import Refusal, problem

_decode = msgspec.json.Decoder().decode

# A JSON string, or an unterminated one up to the end (so the scan never backtracks);
# possessive, so that a body of quotes and backslashes is still read once.
_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"?', re.DOTALL)
_NESTING_STEP = [0] * 256
_NESTING_STEP[ord("[")] = _NESTING_STEP[ord("{")] = 1
_NESTING_STEP[ord("]")] = _NESTING_STEP[ord("}")] = -1


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 64 * 1024
    max_depth: int = 32


@dataclass(frozen=True)
class JsonDocument:
    value: Any  # dicts, lists, str, int, float, bool, None


def read_json(body: bytes, limits: Limits, *, size: int | None = None) -> JsonDocument | Refusal:
    """`body` as a JSON document, or why not. `size` is the whole body's when `body`
    is only its start (a sender's body is not held whole once it is over the limit)."""
    size = len(body) if size is None else size
    if size > limits.max_body_bytes:
        message = f"the body is {size} bytes; at most {limits.max_body_bytes} are taken"
        return Refusal([problem("$", "too_large", message)])
    depth = nesting_depth(body)
    if depth > limits.max_depth:
        message = f"the body nests {depth} levels deep; at most {limits.max_depth} are taken"
        return Refusal([problem("$", "too_deep", message)])
    try:
        value = _decode(body)
        duplicate = _repeated_name(body)
    except msgspec.DecodeError as exc:
        code = "range" if "out of range" in str(exc) else "not_json"
        return Refusal([problem("$", code, f"{exc}")])
    except RecursionError:  # the depth check above should have refused it
        message = f"the body nests too deep; at most {limits.max_depth} levels are taken"
        return Refusal([problem("$", "too_deep", message)])
    except ValueError as exc:  # msgspec took it, Python's json did not: do not guess
        return Refusal([problem("$", "not_json", f"unreadable JSON: {exc}")])
    if duplicate is not None:
        message = f"the member name {duplicate!r} appears twice in one object"
        return Refusal([problem("$", "duplicate_key", message)])
    return JsonDocument(_json_numbers(value))


def nesting_depth(body: bytes) -> int:
    """How deep `body` nests: brackets outside strings, counted in one linear pass. For
    a body that is not JSON the count can be off; the parser refuses that body anyway."""
    steps = map(_NESTING_STEP.__getitem__, _STRING.sub(b"", body))
    return max(accumulate(steps, initial=0))


class _RepeatedName(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _names_once(pairs: list[tuple[str, Any]]) -> None:
    seen: set[str] = set()
    for name, _ in pairs:
        if name in seen:
            raise _RepeatedName(name)
        seen.add(name)


def _ignored(_: str) -> None:
    return None


def _repeated_name(body: bytes) -> str | None:
    """A member name that appears twice in one object, if any. msgspec keeps the last
    value silently; Python's json shows every pair, so it looks (values unconverted)."""
    try:
        json.loads(
            body.decode("utf-8"),
            object_pairs_hook=_names_once,
            parse_int=_ignored,
            parse_float=_ignored,
            parse_constant=_ignored,
        )
    except _RepeatedName as found:
        return found.name
    return None


def _json_numbers(value: Any) -> Any:
    """JSON has one kind of number: 42001.0 is the integer 42001, as JSON Schema reads
    it, while msgspec's strict conversion takes only 42001 for an `int`."""
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    if isinstance(value, dict):
        return {name: _json_numbers(member) for name, member in value.items()}
    if isinstance(value, list):
        return [_json_numbers(item) for item in value]
    return value
