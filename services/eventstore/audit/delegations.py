"""Delegations, checked offline (pure): each one the sealed principals hold was signed by
its delegator with a key valid when it took effect, says what was signed, and gave no
more than the delegator held then (a person: the role, as a human approver, within
their own limit; an agent passing one on: no wider than the parent it held). The same
rules the registry applied (`mesh.service.root_problems`, `widening`), so a forged,
altered or over-wide delegation is named even if the registry was fooled."""

from __future__ import annotations

import msgspec

from contracts.audit_bundle import AuditPrincipal
from contracts.delegation import Delegation, DelegationRecord
from mesh.service import KeyDirectory, SignatureError, root_problems, verify, widening

_delegation = msgspec.json.Decoder(Delegation)


def delegation_findings(
    principals: list[AuditPrincipal], keys: KeyDirectory
) -> list[tuple[str, str]]:
    findings: list[tuple[str, str]] = []
    for principal in principals:
        for record in principal.keys.delegations:
            d = record.delegation
            where = f"delegation {d.delegation_id} from {d.delegator} to {d.delegate}"
            findings += [(where, p) for p in _problems(record, principal, keys)]
    return findings


def _problems(record: DelegationRecord, holder: AuditPrincipal, keys: KeyDirectory) -> list[str]:
    d, statement = record.delegation, record.statement
    if d.delegate != holder.keys.agent_id:
        return [f"held by {holder.keys.agent_id}, but names {d.delegate} as its delegate"]
    try:
        verify(statement.signer, statement.subject, statement.body, statement.signature)
        signed = _delegation.decode(statement.body)
    except (SignatureError, ValueError, msgspec.DecodeError, RecursionError) as exc:
        return [f"its signature does not hold (forged or altered): {exc}"]
    if signed != d:
        return ["what was signed is another delegation than the one recorded"]
    try:
        keys.check(statement.signer, d.delegator, record.granted_at, statement.subject)
    except SignatureError as exc:
        return [f"not signed by {d.delegator} with a key valid when it took effect: {exc.reason}"]
    if d.parent is None:
        return root_problems(d, keys.card_at(d.delegator, record.granted_at))
    parent = keys.delegation(d.parent)
    if parent is None or not parent.in_force(record.granted_at):
        return [f"passes on {d.parent}, which was not in force when it took effect"]
    return widening(d, parent.delegation)
