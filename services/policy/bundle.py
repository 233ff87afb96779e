"""A policy bundle: Cedar policies and their schema, validated and hashed as one unit.

A directory holds `*.cedar` files and `schema.cedarschema.json`. Loading validates
every policy against the schema; a bundle with any error is refused with all the
errors (the service keeps the previous bundle in force). The bundle hash — sha256 over
each file's name and bytes, in name order — is what decisions cite, so an auditor can
tell exactly which policy text decided.

Each policy names itself with `@id("…")` and may carry `@rationale("…")`; a permit
annotated `@outcome("require_approval")` (optionally `@approver_role("…")`,
`@approval_sla("4h")` and `@escalate_to("…")`) allows the action only once a human
approves; past the SLA the request escalates to that role, or expires.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import cedarpy

from mesh.service import ConfigurationError

SCHEMA_FILE = "schema.cedarschema.json"
OUTCOMES = ("require_approval",)
DEFAULT_APPROVER_ROLE = "approver"
DEFAULT_APPROVAL_SLA = timedelta(hours=24)
_DURATION = re.compile(r"^(\d+)([smhd])$")


def parse_duration(text: str | None) -> timedelta | None:
    """`30m`, `4h`, `2d`: how the @approval_sla annotation is written."""
    if not text:
        return None
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not a duration like 30m, 4h or 2d: {text!r}")
    unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[match.group(2)]
    return timedelta(**{unit: int(match.group(1))})


class PolicyBundleInvalid(ConfigurationError):
    """The bundle cannot be activated; `errors` says why, each naming its policy."""

    def __init__(self, source: str, errors: list[str]) -> None:
        self.source = source
        self.errors = errors
        super().__init__(f"policy bundle {source} is invalid: " + "; ".join(errors))


@dataclass(frozen=True)
class PolicyRule:
    cedar_id: str  # what Cedar calls it in its reasons ("policy3")
    policy_id: str  # its @id, or the Cedar id when it has none
    effect: str  # "permit" or "forbid"
    annotations: dict[str, str]


@dataclass(frozen=True)
class PolicyBundle:
    source: str
    hash: str
    rules: dict[str, PolicyRule]  # by Cedar id
    policy_set: Any  # cedarpy.PolicySet (untyped)
    schema: Any  # cedarpy.Schema (untyped)
    # The case attributes the schema declares: which facts from the log policy may see.
    case_attributes: frozenset[str] = frozenset()

    @classmethod
    def load(cls, directory: Path) -> PolicyBundle:
        files = sorted(directory.glob("*.cedar"))
        schema_path = directory / SCHEMA_FILE
        if not files:
            raise PolicyBundleInvalid(str(directory), ["no *.cedar files"])
        if not schema_path.is_file():
            raise PolicyBundleInvalid(str(directory), [f"no {SCHEMA_FILE}"])
        # Read each file once: what is hashed is exactly what is parsed.
        contents = {path: path.read_bytes() for path in [*files, schema_path]}
        digest = hashlib.sha256()
        for path, data in contents.items():
            digest.update(path.name.encode() + b"\0" + data + b"\0")
        text = "\n".join(contents[path].decode() for path in files)
        schema = contents[schema_path].decode()
        return cls.from_text(str(directory), text, schema, digest.hexdigest())

    @classmethod
    def from_text(cls, source: str, text: str, schema_json: str, digest: str) -> PolicyBundle:
        try:
            validation = cedarpy.validate_policies(text, schema_json)
        except (ValueError, RuntimeError) as exc:
            raise PolicyBundleInvalid(source, [f"cannot parse: {exc}"]) from None
        if not validation.validation_passed:
            raise PolicyBundleInvalid(source, [str(error) for error in validation.errors])
        parsed = json.loads(cedarpy.policies_to_json_str(text))["staticPolicies"]
        rules = {
            cedar_id: PolicyRule(
                cedar_id=cedar_id,
                policy_id=policy["annotations"].get("id", cedar_id),
                effect=policy["effect"],
                annotations=dict(policy["annotations"]),
            )
            for cedar_id, policy in parsed.items()
        }
        problems = []
        ids = [rule.policy_id for rule in rules.values()]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            problems.append(f"@id used twice: {duplicates}")
        for rule in rules.values():
            problems += _annotation_problems(rule)
        if problems:
            raise PolicyBundleInvalid(source, problems)
        return cls(
            source=source,
            hash=digest,
            rules=rules,
            policy_set=cedarpy.PolicySet.from_str(text),
            schema=cedarpy.Schema.from_json_str(schema_json),
            case_attributes=_case_attributes(schema_json),
        )


def _annotation_problems(rule: PolicyRule) -> list[str]:
    problems = []
    outcome = rule.annotations.get("outcome")
    if outcome is not None and outcome not in OUTCOMES:
        problems.append(f"{rule.policy_id}: unknown @outcome {outcome!r} (known: {OUTCOMES})")
    if outcome is not None and rule.effect != "permit":
        problems.append(f"{rule.policy_id}: @outcome belongs on a permit, not a {rule.effect}")
    try:
        parse_duration(rule.annotations.get("approval_sla"))
    except ValueError as exc:
        problems.append(f"{rule.policy_id}: @approval_sla {exc}")
    return problems


def _case_attributes(schema_json: str) -> frozenset[str]:
    entity_types = json.loads(schema_json).get("", {}).get("entityTypes", {})
    shape = entity_types.get("Case", {}).get("shape", {})
    return frozenset(shape.get("attributes", {}))
