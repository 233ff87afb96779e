"""Why input is refused, member by member, as `Problem`s (pure).

msgspec says what is wrong in English and stops at the first wrong member; here each
member of a contract is checked on its own, so one answer names every problem, and
each gets a code a machine can act on and a JSON path to where it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeVar

import msgspec
import msgspec.inspect

from contracts.ingress import Problem

S = TypeVar("S", bound=msgspec.Struct)

_MAX_MESSAGE = 300  # a message can quote the sender's value; that value can be long
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# msgspec's messages, by what they mean; the first that matches names the code.
_CODES = (
    (re.compile(r"Expected `str` matching regex"), "pattern"),
    (re.compile(r"Expected `(str|array|object)` of length"), "length"),
    (re.compile(r"Expected `(int|float)` [<>]=?"), "range"),
    (re.compile(r"out of range"), "range"),
    (re.compile(r"Invalid enum value"), "enum"),
    (re.compile(r"Invalid RFC3339"), "format"),
    (re.compile(r"missing required field"), "required"),
    (re.compile(r"unknown field"), "unknown_field"),
    (re.compile(r"Expected `[^`]+`, got `[^`]+`"), "type"),
)
# Body problems read "<part>: <message> (at <path>)"; these are not about the body.
_ABOUT_THE_REQUEST = frozenset({"invalid_source", "conflict", "unavailable", "internal"})


@dataclass(frozen=True)
class Refusal:
    """Input that does not open a case, and every reason why."""

    problems: list[Problem]

    @property
    def errors(self) -> list[str]:
        return [describe(problem) for problem in self.problems]


def problem(path: str, code: str, message: str) -> Problem:
    if len(message) > _MAX_MESSAGE:
        message = message[: _MAX_MESSAGE - 1] + "…"
    return Problem(path=path, code=code, message=message)


def describe(found: Problem) -> str:
    """One line for a person, e.g. "data: Expected `int`, got `str` (at $.data.amount_cents)"."""
    if found.code in _ABOUT_THE_REQUEST:
        return found.message
    part = "data" if found.path.startswith(("$.data.", "$.data[")) else "request"
    where = "" if found.path == "$" else f" (at {found.path})"
    return f"{part}: {found.message}{where}"


def member(path: str, name: str) -> str:
    """The JSON path of member `name` of the object at `path`; a name that is not a plain
    identifier is quoted (as in RFC 9535's normalized paths), in ASCII."""
    if _IDENTIFIER.fullmatch(name):
        return f"{path}.{name}"
    quoted = name.encode("unicode_escape").decode("ascii").replace("'", "\\'")
    return f"{path}['{quoted}']"


def json_type(value: Any) -> str:
    match value:
        case dict():
            return "object"
        case list():
            return "array"
        case str():
            return "string"
        case bool():
            return "boolean"
        case int() | float():
            return "number"
        case _:
            return "null"


def from_msgspec(error: msgspec.MsgspecError, at: str) -> Problem:
    """A msgspec error about the value at `at` as a Problem; its own path (" - at `$…`",
    relative to that value) is joined to `at`."""
    text = str(error)
    message, marker, where = text.rpartition(" - at `")
    if marker and where.startswith("$") and where.endswith("`"):
        path = at + where[1:-1]
    else:
        message, path = text, at
    code = next((code for pattern, code in _CODES if pattern.search(message)), "type")
    return problem(path, code, message)


def convert_struct(value: Any, contract: type[S], at: str) -> tuple[S | None, list[Problem]]:
    """`value` (decoded JSON) as a `contract`, or every problem with it. Strict, as JSON
    Schema is: no string is taken for a number, nor a number for a string."""
    if not isinstance(value, dict):
        found = problem(at, "type", f"Expected `object`, got `{json_type(value)}`")
        return None, [found]
    try:
        converted = msgspec.convert(value, contract, strict=True)
    except msgspec.ValidationError as exc:
        # msgspec names the first problem it met; name them all. (The whole contract
        # has the last word: a rule across members would show only in `exc`.)
        return None, _member_problems(value, contract, at) or [from_msgspec(exc, at)]
    anchored = [
        found
        for field in _fields(contract)
        if field.encode_name in value
        for found in _pattern_problems(value[field.encode_name], field, at)
    ]
    return (None, anchored) if anchored else (converted, [])


def _member_problems(value: dict[str, Any], contract: type[S], at: str) -> list[Problem]:
    problems: list[Problem] = []
    fields = _fields(contract)
    for field in fields:
        where = member(at, field.encode_name)
        if field.encode_name not in value:
            if field.required:
                message = f"Object missing required field `{field.encode_name}`"
                problems.append(problem(where, "required", message))
            continue
        try:
            msgspec.convert(value[field.encode_name], field.type, strict=True)
        except msgspec.ValidationError as exc:
            problems.append(from_msgspec(exc, where))
            continue
        problems += _pattern_problems(value[field.encode_name], field, at)
    if contract.__struct_config__.forbid_unknown_fields:
        known = {field.encode_name for field in fields}
        problems += [
            problem(member(at, name), "unknown_field", f"Object contains unknown field {name!r}")
            for name in value
            if name not in known
        ]
    return problems


@lru_cache(maxsize=64)
def _fields(contract: type[msgspec.Struct]) -> tuple[msgspec.structs.FieldInfo, ...]:
    return msgspec.structs.fields(contract)  # it evaluates the annotations every time


def _pattern_problems(value: Any, field: msgspec.structs.FieldInfo, at: str) -> list[Problem]:
    """msgspec matched a pattern with Python's `$`, which also matches before a final
    "\n"; JSON Schema's `$` is the end of the string."""
    where = member(at, field.encode_name)
    pattern = _pattern_of(field.type)
    if pattern is not None:
        if not isinstance(value, str) or pattern[0].search(value):
            return []
        return [problem(where, "pattern", f"Expected `str` matching regex {pattern[1]!r}")]
    items = _item_pattern_of(field.type)  # a list of patterned strings: each item
    if items is None or not isinstance(value, list):
        return []
    return [
        problem(f"{where}[{index}]", "pattern", f"Expected `str` matching regex {items[1]!r}")
        for index, item in enumerate(value)
        if isinstance(item, str) and not items[0].search(item)
    ]


@lru_cache(maxsize=64)
def _item_pattern_of(annotation: Any) -> tuple[re.Pattern[str], str] | None:
    """The pattern of a list member's items, if they have one."""
    info = msgspec.inspect.type_info(annotation)
    if isinstance(info, msgspec.inspect.ListType):
        item = info.item_type
        if isinstance(item, msgspec.inspect.StrType) and item.pattern is not None:
            return re.compile(ecma_anchors(item.pattern)), item.pattern
    return None


@lru_cache(maxsize=64)
def _pattern_of(annotation: Any) -> tuple[re.Pattern[str], str] | None:
    """A string member's pattern as JSON Schema reads it (ECMA-262: `$` is the end of
    the string) compiled for Python's `re`, and as the contract writes it."""
    info = msgspec.inspect.type_info(annotation)
    if isinstance(info, msgspec.inspect.StrType) and info.pattern is not None:
        return re.compile(ecma_anchors(info.pattern)), info.pattern
    return None


def ecma_anchors(pattern: str) -> str:
    """`pattern` with each `$` outside a character class written `\\Z`: the end of the
    string, which is all an ECMA-262 `$` (without the multiline flag) matches."""
    out: list[str] = []
    escaped = in_class = False
    for char in pattern:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "[":
            in_class = True
        elif char == "]":
            in_class = False
        elif char == "$" and not in_class:
            out.append(r"\Z")
            continue
        out.append(char)
    return "".join(out)
