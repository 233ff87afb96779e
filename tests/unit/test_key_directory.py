"""Key validity at a point in time, as consumers and auditors check it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from contracts.cards import AgentCard, AgentKey, CardPeriod, Period
from contracts.registry_api import PrincipalKeys
from mesh._trust.key_directory import KeyDirectory
from mesh.errors import SignatureError

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


def _card(version: str, produces: list[str], facts: list[str]) -> AgentCard:
    return AgentCard(
        agent_id="fraud",
        name="Fraud",
        version=version,
        owner="claims-team",
        purpose="scores",
        produces=produces,
        facts=facts,
    )


def carded() -> KeyDirectory:
    """A fraud agent whose card widened at T0 + 3h (to produce case_closed and vouch
    for fraud_score)."""
    return directory(
        cards=[
            CardPeriod(
                card=_card("1", ["case_step_completed"], []),
                valid_from=T0 + HOUR / 2,  # activated a while after the key was registered
                valid_until=T0 + 3 * HOUR,
            ),
            CardPeriod(
                card=_card("2", ["case_step_completed", "case_closed"], ["fraud_score"]),
                valid_from=T0 + 3 * HOUR,
            ),
        ]
    )


def test_an_event_type_counts_only_if_the_card_in_force_then_produced_it() -> None:
    keys = carded()
    keys.check(OLD, "fraud", T0 + HOUR, event_type="case_step_completed")
    with pytest.raises(SignatureError, match=r"\(version 1\) does not produce case_closed"):
        keys.check(OLD, "fraud", T0 + HOUR, event_type="case_closed")
    keys.check(NEW, "fraud", T0 + 4 * HOUR, event_type="case_closed")
    with pytest.raises(SignatureError, match="no card of fraud was in force"):
        keys.check(OLD, "fraud", T0 + HOUR / 4, event_type="case_step_completed")


def test_a_fact_counts_only_from_its_authority_at_the_time() -> None:
    keys = carded()
    assert not keys.authoritative("fraud", "fraud_score", T0 + HOUR)
    assert keys.authoritative("fraud", "fraud_score", T0 + 4 * HOUR)
    assert not keys.authoritative("intake", "fraud_score", T0 + 4 * HOUR)
    card = keys.card_at("fraud", T0 + 4 * HOUR)
    assert card is not None
    assert card.version == "2"
