"""Key validity at a point in time, as consumers and auditors check it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from contracts.cards import AgentKey, Period
from contracts.registry_api import PrincipalKeys
from mesh.errors import SignatureError
from mesh.key_directory import KeyDirectory

T0 = datetime(2026, 11, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
OLD, NEW = "U" + "A" * 55, "U" + "B" * 55


def directory(**changes: object) -> KeyDirectory:
    fields: dict[str, object] = {
        "agent_id": "fraud",
        "status": "active",
        "status_changed_at": T0,
        "updated_at": T0,
        "key_history": [
            AgentKey(public_key=OLD, valid_from=T0, valid_until=T0 + 2 * HOUR),
            AgentKey(public_key=NEW, valid_from=T0 + 2 * HOUR),
        ],
    }
    fields.update(changes)
    keys = KeyDirectory()
    keys.load([PrincipalKeys(**fields)])  # type: ignore[arg-type]
    return keys


def test_each_key_is_valid_in_its_own_period() -> None:
    keys = directory()
    keys.check(OLD, "fraud", T0 + HOUR)
    keys.check(NEW, "fraud", T0 + 3 * HOUR)
    with pytest.raises(SignatureError, match="was not valid at"):
        keys.check(OLD, "fraud", T0 + 3 * HOUR)
    with pytest.raises(SignatureError, match="was not valid at"):
        keys.check(NEW, "fraud", T0 + HOUR)


def test_a_key_signs_only_for_its_own_agent() -> None:
    with pytest.raises(SignatureError, match="belongs to fraud, not to actor payments"):
        directory().check(NEW, "payments", T0 + 3 * HOUR)
    with pytest.raises(SignatureError, match="not registered"):
        directory().check("U" + "C" * 55, "fraud", T0)


def test_a_past_suspension_still_invalidates_what_was_signed_during_it() -> None:
    keys = directory(suspensions=[Period(start=T0 + 3 * HOUR, end=T0 + 4 * HOUR)])
    keys.check(NEW, "fraud", T0 + 5 * HOUR)
    with pytest.raises(SignatureError, match="while suspended"):
        keys.check(NEW, "fraud", T0 + 3.5 * HOUR)


def test_revocation_ends_everything_after_it() -> None:
    keys = directory(status="revoked", status_changed_at=T0 + 6 * HOUR)
    keys.check(NEW, "fraud", T0 + 5 * HOUR)
    with pytest.raises(SignatureError, match="after its revocation"):
        keys.check(NEW, "fraud", T0 + 7 * HOUR)
