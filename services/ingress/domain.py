"""Turning another system's request into a case_opened event, or into reasons why not
(pure).

What opens a case is exactly what the published JSON Schema accepts (the request, and
the data of its kind), within the bounds of `Limits`; see `contracts.ingress`.
"""

from __future__ import annotations

import re

import msgspec

from contracts.errors import ContractError
from contracts.events.case import CaseOpened, CaseOpenedPayload
from contracts.ingress import CLAIM_KIND, ClaimData, OpenCaseRequest, Problem
from contracts.subjects import check_token
from services.ingress.json_body import Limits, read_json
from services.ingress.problems import Refusal, convert_struct, problem

__all__ = [
    "DEFAULT_LIMITS",
    "KINDS",
    "Limits",
    "Refusal",
    "case_id_for",
    "open_case",
    "source_problem",
]

# Each kind of case the mesh can handle, and the contract of its data.
KINDS: dict[str, type[msgspec.Struct]] = {CLAIM_KIND: ClaimData}

DEFAULT_LIMITS = Limits()
_SOURCE = re.compile(r"[A-Za-z0-9_]{1,60}")


def case_id_for(source: str, external_ref: str) -> str:
    """The same reference from the same source always names the same case: a retried
    request cannot open a second one. A source holds no "-", so the id splits back
    into exactly one (source, reference): no source can claim another's references."""
    return check_token(f"{source}-{external_ref}", "case id")


def source_problem(source: str) -> Problem | None:
    """Why `source` (the subject's or URL's last token) names no source, if it does not."""
    if _SOURCE.fullmatch(source):
        return None
    return problem("$", "invalid_source", f"source {source!r} must be 1-60 of [A-Za-z0-9_]")


def open_case(
    source: str,
    body: bytes,
    actor: str,
    *,
    limits: Limits = DEFAULT_LIMITS,
    size: int | None = None,
) -> CaseOpened | Refusal:
    """`size` is the whole body's, when `body` is only its start."""
    if (bad_source := source_problem(source)) is not None:
        return Refusal([bad_source])
    document = read_json(body, limits, size=size)
    if isinstance(document, Refusal):
        return document
    request, problems = convert_struct(document.value, OpenCaseRequest, "$")
    body_value = document.value if isinstance(document.value, dict) else {}
    kind, data = body_value.get("kind"), body_value.get("data")
    contract = KINDS.get(kind) if isinstance(kind, str) else None
    if isinstance(kind, str) and contract is None:
        problems.append(_unknown_kind(kind))
    details: msgspec.Struct | None = None
    if contract is not None and isinstance(data, dict):
        details, data_problems = convert_struct(data, contract, "$.data")
        problems += data_problems
    if problems or request is None or details is None:
        return Refusal(problems)
    try:
        case_id = case_id_for(source, request.external_ref)
    except ContractError as exc:
        return Refusal([problem("$.external_ref", "pattern", str(exc))])
    return CaseOpened(
        case_id=case_id,
        actor=actor,
        payload=CaseOpenedPayload(
            kind=request.kind,
            source=source,
            external_ref=request.external_ref,
            data=msgspec.to_builtins(details),
            parties=sorted(set(request.parties) - {source}),
        ),
    )


def _unknown_kind(kind: str) -> Problem:
    message = f"kind {kind!r} is not handled here; known: {sorted(KINDS)}"
    return problem("$.kind", "unknown_kind", message)
