"""Whom the verifier trusts: the principals (keys, lifecycles, cards, roles) the event
store sealed in its manifest — never the bundle's loose copy, so an edited principals
list cannot change a verdict — and whether a document is the store's own."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import msgspec

from contracts.audit_bundle import AuditPrincipal, Manifest
from mesh.service import KeyDirectory, SignatureError, verify_headers
from services.eventstore.audit.report import Report


@dataclass
class Trust:
    store_key: str | None  # the event store's key, pinned, instead of trusting the bundle's
    keys: KeyDirectory = field(default_factory=KeyDirectory)
    principals: dict[str, AuditPrincipal] = field(default_factory=dict)

    def load_sealed(
        self, pages: list[Manifest], loose: list[AuditPrincipal], report: Report
    ) -> None:
        """Keys, lifecycles and roles from the store's sealed first page; each principal
        whose loose copy in the bundle differs from it is named."""
        sealed = next((page.principals for page in pages if page.principals), None)
        if sealed is None:
            report.add("integrity", "principals", "not sealed by the store: nothing to trust")
            sealed = []
        else:
            for name, problem in principal_differences(sealed, loose):
                report.add("integrity", f"principal {name}", problem)
        self.keys.load([p.keys for p in sealed])
        self.principals = {p.keys.agent_id: p for p in sealed}

    def signed_by_store(
        self, subject: str, body: bytes, headers: dict[str, str], actor: str, at: datetime
    ) -> str | None:
        """None if the store signed it with a key valid at `at`; else why not."""
        try:
            signer = verify_headers(subject, body, headers)
            self.keys.check(signer, actor, at, subject)
        except SignatureError as exc:
            return exc.reason
        if self.store_key is not None and signer != self.store_key:
            return f"signed by {signer}, not by the pinned event store key {self.store_key}"
        kind = self.principals[actor].kind if actor in self.principals else None
        if kind != "service":
            return f"signed by {actor}, which is not a mesh service"
        return None


def principal_differences(
    sealed: list[AuditPrincipal], loose: list[AuditPrincipal]
) -> list[tuple[str, str]]:
    """Each principal whose copy in the bundle differs from the sealed one, named."""
    mine = {p.keys.agent_id: msgspec.to_builtins(p) for p in sealed}
    theirs = {p.keys.agent_id: msgspec.to_builtins(p) for p in loose}
    found = []
    for name in sorted(set(mine) | set(theirs)):
        if name not in theirs:
            found.append((name, "sealed by the store but missing from the bundle's list"))
        elif name not in mine:
            found.append((name, "in the bundle's list but not sealed by the store: added"))
        elif mine[name] != theirs[name]:
            fields = sorted(
                key
                for key in mine[name]["keys"]
                if mine[name]["keys"][key] != theirs[name]["keys"].get(key)
            ) + sorted(k for k in ("kind", "roles") if mine[name][k] != theirs[name].get(k))
            found.append((name, f"differs from the sealed record in {', '.join(fields)}"))
    return found
