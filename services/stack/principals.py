"""Adding and removing the mesh's static principals (`mesh principals add|list|remove`):
outside systems that open cases, and operators.

The principals file is the registry's configuration; the HTTP tokens file the
ingress's. Both are rewritten here and re-read by their service on SIGHUP (sent to the
processes of the running `mesh up`), so a change takes effect without a restart. A
removed principal keeps its entry, ended: its name and key are never handed out again,
and what it signed before still verifies.

Services are not added here: a service signs the log, and every consumer must know
its key from the first event on — it is part of the deployment (`STATIC_PRINCIPALS`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from mesh._broker.connection import close
from mesh._broker.discovery import RunningMesh, lock_held
from mesh._broker.topology import Topology
from mesh._trust.identity import is_user_public_key
from mesh._trust.onboarding import ONBOARDING_ID, connect_as, inbox_prefix
from mesh._trust.principals import StaticPrincipal, load_principals, write_principals
from mesh._trust.registry_client import RegistryClient
from mesh.errors import ConfigurationError
from services.ingress.domain import source_problem
from services.stack.layout import STATIC_PRINCIPALS, Layout, write_http_tokens
from services.stack.processes import role_of
from services.stack.supervisor import read_status

AddableRole = Literal["external", "operator"]
ADDABLE_ROLES: tuple[AddableRole, ...] = ("external", "operator")
RELOADED = ("registry", "ingress")  # the services that read what is written here
# Names no principal may take: the anonymous onboarding user's (its inbox carries every
# registrant's answer) and the deployment's own services'.
RESERVED = frozenset({ONBOARDING_ID, *(name for name, _ in STATIC_PRINCIPALS)})


@dataclass(frozen=True)
class Credentials:
    """What an operator hands to the principal's team (the seed only if generated)."""

    principal: StaticPrincipal
    seed_file: Path | None
    http_token_file: Path | None
    connection_file: Path


def list_principals(layout: Layout) -> list[StaticPrincipal]:
    return load_principals(layout.principals_file)


@contextlib.contextmanager
def _editing(layout: Layout) -> Iterator[None]:
    """One `mesh principals` change at a time per mesh: each reads, changes and writes
    the principals and tokens files whole, and two at once would lose one."""
    with (layout.data_dir / "principals.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


async def agent_conflict(found: RunningMesh, layout: Layout, name: str, key: str | None) -> str:
    """Why `name` (or `key`) cannot be a principal's, asking the running mesh's registry
    (as its operator): an agent holds that id, or holds or held that key. "" if none."""
    nc = await connect_as(found.nats_url, "operator", layout.identity("operator"))
    try:
        everyone = await RegistryClient(nc, Topology(found.subject_root).subjects).keys()
    finally:
        await close(nc)
    for principal in everyone:
        if principal.agent_id == name:
            return f"{name!r} is taken by a principal of the registry"
        if key is not None and any(k.public_key == key for k in principal.key_history):
            return f"that key is (or was) {principal.agent_id}'s"
    return ""


def add_principal(
    layout: Layout,
    topology: Topology,
    name: str,
    role: AddableRole,
    *,
    public_key: str | None = None,
    nats_url: str = "",
    ingress_http: str = "",
) -> Credentials:
    """Adds `name`; with no `public_key` a key pair is made and its seed written (to
    hand over), else the principal's team keeps its seed and gives only the key."""
    if role not in ADDABLE_ROLES:
        raise ConfigurationError(f"role {role!r}: only {', '.join(ADDABLE_ROLES)} can be added")
    if (found := source_problem(name)) is not None:
        raise ConfigurationError(f"name {name!r}: {found.message}")
    if name in RESERVED:
        raise ConfigurationError(f"{name!r} is reserved")
    with _editing(layout):
        return _add(layout, topology, name, role, public_key, nats_url, ingress_http)


def _add(
    layout: Layout,
    topology: Topology,
    name: str,
    role: AddableRole,
    public_key: str | None,
    nats_url: str,
    ingress_http: str,
) -> Credentials:
    principals = list_principals(layout)
    if any(p.name == name for p in principals):
        raise ConfigurationError(f"{name!r} is taken (names are never reused, even removed)")
    seed_file: Path | None = None
    if public_key is None:
        seed_file = layout.seed(name)
        if seed_file.exists():
            raise ConfigurationError(f"{seed_file} exists: a key of an earlier principal")
        public_key = layout.identity(name).public_key
    elif not is_user_public_key(public_key):
        raise ConfigurationError(f"{public_key!r} is not an nkey user public key (U…)")
    if any(p.public_key == public_key for p in principals):
        raise ConfigurationError("that key belongs to another principal")
    principal = StaticPrincipal(name, public_key, role, valid_from=datetime.now(UTC))
    write_principals(layout.principals_file, [*principals, principal])
    token_file: Path | None = None
    if role == "external":
        layout.http_token(name)
        token_file = layout.http_token_file(name)
    write_http_tokens(layout, list_principals(layout))
    connection = layout.keys / f"{name}.connection.json"
    connection.write_text(
        json.dumps(connection_details(principal, topology, nats_url, ingress_http), indent=2) + "\n"
    )
    return Credentials(principal, seed_file, token_file, connection)


def remove_principal(layout: Layout, name: str) -> StaticPrincipal:
    with _editing(layout):
        return _remove(layout, name)


def _remove(layout: Layout, name: str) -> StaticPrincipal:
    principals = list_principals(layout)
    found = next((p for p in principals if p.name == name), None)
    if found is None:
        raise ConfigurationError(f"no principal {name!r}")
    if found.role not in ADDABLE_ROLES:
        raise ConfigurationError(f"{name!r} is the mesh's {found.role}: part of the deployment")
    if not found.active:
        raise ConfigurationError(f"{name!r} was removed at {found.valid_until}")
    ended = replace(found, valid_until=datetime.now(UTC))
    write_principals(layout.principals_file, [ended if p is found else p for p in principals])
    layout.http_token_file(name).unlink(missing_ok=True)
    write_http_tokens(layout, list_principals(layout))
    return ended


def reload_services(layout: Layout) -> list[str]:
    """SIGHUP to the registry and the ingress of the mesh running from `layout`; the
    names of those signalled (none if no mesh runs there). A pid is signalled only
    while the supervisor that wrote the status holds the mesh's lock, and only if that
    process is still the supervisor's child: a status file left by a killed mesh names
    pids that may be anyone's by now."""
    if not lock_held(layout.data_dir):
        return []
    try:
        status = read_status(layout.status_file)
    except (OSError, ValueError):
        return []
    signalled = []
    for child in status.processes:
        if role_of(child.name) not in RELOADED or child.state != "running" or child.pid is None:
            continue
        if _parent_of(child.pid) != status.supervisor_pid:
            continue
        try:
            os.kill(child.pid, signal.SIGHUP)
        except ProcessLookupError:
            continue
        signalled.append(child.name)
    return signalled


def _parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid …": comm may hold spaces and parentheses.
    return int(stat.rsplit(")", 1)[1].split()[1])


def connection_details(
    principal: StaticPrincipal, topology: Topology, nats_url: str, ingress_http: str
) -> dict[str, object]:
    """Everything the principal's team needs besides its secrets, in one file."""
    subjects = topology.subjects
    details: dict[str, object] = {
        "principal": principal.name,
        "role": principal.role,
        "public_key": principal.public_key,
        "nats_url": nats_url,
        "credential": f"{principal.name}.nk: an nkey seed file (nats-py: nkeys_seed=…, "
        "nats CLI: --nkey …, Go: nats.NkeyOptionFromSeed(…))",
        "inbox_prefix": inbox_prefix(principal.name),
    }
    if principal.role == "external":
        details |= {
            "open_a_case": {
                "nats_request": subjects.service("ingress", principal.name),
                "http_post": f"{ingress_http}/v1/cases/{principal.name}",
                "request_schema": "contracts/schema/ingress_open_case_request.json",
                "reply_schema": "contracts/schema/ingress_reply.json",
            },
            "case_status": {
                "nats_request": subjects.service_as("ingress", "status", principal.name),
                "http_get": f"{ingress_http}/v1/cases/{principal.name}/<external_ref>",
                "request_schema": "contracts/schema/ingress_case_status_request.json",
                "reply_schema": "contracts/schema/ingress_case_status_reply.json",
            },
            "add_to_a_case": {
                "nats_request": subjects.service_as("ingress", "events", principal.name),
                "http_post": f"{ingress_http}/v1/cases/<case_source>/<external_ref>/events",
                "request_schema": "contracts/schema/ingress_case_event_request.json",
                "reply_schema": "contracts/schema/ingress_reply.json",
                "data_schemas": "contracts/schema/ingress_<kind>.json, e.g. "
                "ingress_police_report.json",
            },
            "http_token": f"{principal.name}.http-token (Authorization: Bearer …)",
        }
    return details
