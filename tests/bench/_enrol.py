"""What a benchmark's registry needs to enrol agents: an operator, and grants."""

from __future__ import annotations

from pathlib import Path

from contracts.cards import AgentCard, SignedStatement
from mesh._trust.enrolment import issue_grant
from mesh._trust.identity import Identity
from mesh._trust.principals import StaticPrincipal, write_principals
from services.registry.settings import RegistrySettings


class BenchOperator:
    def __init__(self, directory: Path, owners: list[str]) -> None:
        self.identity = Identity.generate()
        principals = directory / "principals.json"
        write_principals(
            principals, [StaticPrincipal("operator", self.identity.public_key, "operator")]
        )
        self.settings = RegistrySettings(known_owners=owners, principals_file=principals)

    def grant(self, card: AgentCard) -> SignedStatement:
        return issue_grant(card, self.identity, "operator")
