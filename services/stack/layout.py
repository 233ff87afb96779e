"""Where a running mesh keeps its files, and the static principals' keys."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from mesh._broker.permissions import authorization_config
from mesh._broker.topology import Topology
from mesh._trust.identity import Identity
from mesh._trust.principals import (
    PrincipalRole,
    StaticPrincipal,
    load_principals,
    write_principals,
)
from services.ingress.tokens import token_digest, write_token_digests

REPO = Path(__file__).resolve().parents[2]
POLICIES = REPO / "deploy" / "policies"

# The services and operators with fixed keys (agents register their own).
STATIC_PRINCIPALS: tuple[tuple[str, PrincipalRole], ...] = (
    ("registry", "registry"),
    ("operator", "operator"),
    ("policy", "policy"),
    ("eventstore", "eventstore"),
    ("ingress", "ingress"),
    ("reader", "reader"),  # the case reader agents read cases through
    ("crm", "external"),  # the claims system that opens cases
)


@dataclass(frozen=True)
class Layout:
    data_dir: Path

    @property
    def keys(self) -> Path:
        return self.data_dir / "keys"

    @property
    def nats_dir(self) -> Path:
        return self.data_dir / "nats"

    @property
    def auth_file(self) -> Path:
        return self.nats_dir / "auth.conf"  # beside the server config that includes it

    @property
    def principals_file(self) -> Path:
        return self.data_dir / "principals.json"

    @property
    def status_file(self) -> Path:
        """What the supervisor says of each process (`mesh status` reads it)."""
        return self.data_dir / "processes.json"

    @property
    def logs(self) -> Path:
        return self.data_dir / "logs"

    def grant_file(self, agent_id: str) -> Path:
        return self.keys / f"{agent_id}.grant.json"

    def seed(self, name: str) -> Path:
        return self.keys / f"{name}.nk"

    def identity(self, name: str) -> Identity:
        return Identity.load_or_create(self.seed(name))

    @property
    def http_tokens_file(self) -> Path:
        """The ingress's: a digest of each outside system's HTTP token."""
        return self.data_dir / "http-tokens.json"

    def http_token_file(self, source: str) -> Path:
        return self.keys / f"{source}.http-token"

    def http_token(self, source: str) -> str:
        path = self.http_token_file(source)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(24))
            path.chmod(0o600)
        return path.read_text().strip()


def write_http_tokens(layout: Layout, principals: list[StaticPrincipal]) -> None:
    """The ingress's tokens file: a digest per outside system in force."""
    digests = {
        p.name: token_digest(layout.http_token(p.name))
        for p in principals
        if p.role == "external" and p.active
    }
    write_token_digests(layout.http_tokens_file, digests)


def bootstrap(layout: Layout, topology: Topology) -> list[StaticPrincipal]:
    """Keys for every static principal (kept across restarts), the principals file,
    and a first authorization config for the server (the registry rewrites it)."""
    for directory in (layout.keys, layout.nats_dir, layout.logs):
        directory.mkdir(parents=True, exist_ok=True)
    # Those an operator added to (or removed from) this mesh earlier stay as they are.
    principals = load_principals(layout.principals_file) if layout.principals_file.exists() else []
    named = {p.name for p in principals}
    principals += [
        StaticPrincipal(name, layout.identity(name).public_key, role)
        for name, role in STATIC_PRINCIPALS
        if name not in named
    ]
    write_principals(layout.principals_file, principals)
    write_http_tokens(layout, principals)
    if not layout.auth_file.exists():
        active = [p for p in principals if p.active]
        layout.auth_file.write_text(authorization_config([], active, topology))
    return principals
