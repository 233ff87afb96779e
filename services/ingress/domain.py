"""Turning another system's request into a case_opened event, or into reasons why not
(pure)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import msgspec

from contracts.errors import ContractError
from contracts.events.case import CaseOpened, CaseOpenedPayload
from contracts.ingress import CLAIM_KIND, ClaimData, OpenCaseRequest
from contracts.subjects import check_token

# Each kind of case the mesh can handle, and the contract of its data.
KINDS: dict[str, type[msgspec.Struct]] = {CLAIM_KIND: ClaimData}

_request = msgspec.json.Decoder(OpenCaseRequest)


@dataclass(frozen=True)
class Refusal:
    errors: list[str]


_SOURCE = re.compile(r"^[A-Za-z0-9_]{1,60}$")


def case_id_for(source: str, external_ref: str) -> str:
    """The same reference from the same source always names the same case: a retried
    request cannot open a second one. A source holds no "-", so the id splits back
    into exactly one (source, reference): no source can claim another's references."""
    return check_token(f"{source}-{external_ref}", "case id")


def open_case(source: str, body: bytes, actor: str) -> CaseOpened | Refusal:
    if not _SOURCE.fullmatch(source):
        return Refusal([f"source {source!r} must be 1-60 of [A-Za-z0-9_]"])
    try:
        request = _request.decode(body)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        return Refusal([f"request: {exc}"])
    contract = KINDS.get(request.kind)
    if contract is None:
        return Refusal([f"kind {request.kind!r} is not handled here; known: {sorted(KINDS)}"])
    try:
        data = msgspec.convert(request.data, contract, strict=False)
    except msgspec.ValidationError as exc:
        return Refusal([f"data: {exc}"])
    try:
        case_id = case_id_for(source, request.external_ref)
    except ContractError as exc:
        return Refusal([str(exc)])
    return CaseOpened(
        case_id=case_id,
        actor=actor,
        payload=CaseOpenedPayload(
            kind=request.kind,
            source=source,
            external_ref=request.external_ref,
            data=msgspec.to_builtins(data),
        ),
    )
