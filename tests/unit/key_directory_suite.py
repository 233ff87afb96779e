"""The key directory's contract, whatever it was loaded from: one abstract suite, run
once per source (tests/unit/test_key_directory_sources.py: a list of principals as an
auditor or a test holds it, and the same list as an exported bundle carries it in JSON;
tests/integration/test_key_directory_registry.py: the registry's answer over NATS).

A source is a fixture, `directory_of(principals, registry_sequence)`, that returns a
directory loaded from those principals by that source. The assertions are the checks
consumers and auditors rely on: which key signs for whom and when, what suspension and
revocation end, which card was in force, and who is the authority for a fact."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest

from contracts.cards import AgentCard, AgentKey, CardPeriod, Period
from contracts.registry_api import PrincipalKeys
from mesh._trust.key_directory import KeyDirectory
from mesh.errors import SignatureError

DirectoryOf = Callable[[list[PrincipalKeys], int], Awaitable[KeyDirectory]]

T0 = datetime(2026, 11, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
OLD, NEW = "U" + "A" * 55, "U" + "B" * 55  # the fraud agent's keys, rotated at T0 + 2h
INTAKE_KEY, ROGUE_KEY = "U" + "C" * 55, "U" + "D" * 55
UNKNOWN = "U" + "E" * 55


def card(agent_id: str, version: str, produces: list[str], facts: list[str]) -> AgentCard:
    return AgentCard(
        agent_id=agent_id,
        name=agent_id.title(),
        version=version,
        owner="claims-team",
        purpose="tests the key directory",
        produces=produces,
        facts=facts,
    )


def principals() -> list[PrincipalKeys]:
    """Three principals: `fraud` (key rotated at 2h, card widened at 3h to produce
    case_closed and vouch for fraud_score, suspended 4h-5h), `intake` (one key, the
    authority for claim_complete throughout) and `rogue` (revoked at 6h)."""
    return [
        PrincipalKeys(
            agent_id="fraud",
            status="active",
            status_changed_at=T0,
            updated_at=T0 + 5 * HOUR,
            key_history=[
                AgentKey(public_key=OLD, valid_from=T0, valid_until=T0 + 2 * HOUR),
                AgentKey(public_key=NEW, valid_from=T0 + 2 * HOUR),
            ],
            suspensions=[Period(start=T0 + 4 * HOUR, end=T0 + 5 * HOUR)],
            cards=[
                CardPeriod(
                    card=card("fraud", "1", ["case_step_completed"], []),
                    valid_from=T0 + HOUR / 2,  # activated a while after its key was registered
                    valid_until=T0 + 3 * HOUR,
                ),
                CardPeriod(
                    card=card(
                        "fraud", "2", ["case_step_completed", "case_closed"], ["fraud_score"]
                    ),
                    valid_from=T0 + 3 * HOUR,
                ),
            ],
        ),
        PrincipalKeys(
            agent_id="intake",
            status="active",
            status_changed_at=T0,
            updated_at=T0,
            key_history=[AgentKey(public_key=INTAKE_KEY, valid_from=T0)],
            cards=[
                CardPeriod(
                    card=card("intake", "1", ["case_step_completed"], ["claim_complete"]),
                    valid_from=T0,
                )
            ],
        ),
        PrincipalKeys(
            agent_id="rogue",
            status="revoked",
            status_changed_at=T0 + 6 * HOUR,
            updated_at=T0 + 6 * HOUR,
            key_history=[AgentKey(public_key=ROGUE_KEY, valid_from=T0)],
            cards=[
                CardPeriod(
                    card=card("rogue", "1", ["case_step_completed"], ["fraud_score"]),
                    valid_from=T0,
                )
            ],
        ),
    ]


class KeyDirectorySourceSuite:
    """Subclass once per source, with a `directory_of` fixture (see the module doc)."""

    @pytest.fixture
    async def keys(self, directory_of: DirectoryOf) -> KeyDirectory:
        return await directory_of(principals(), 42)

    async def test_a_loaded_directory_says_so_and_how_current_it_is(
        self, keys: KeyDirectory
    ) -> None:
        assert keys.loaded.is_set()
        assert keys.registry_sequence == 42

    async def test_each_key_signs_in_its_own_period_only(self, keys: KeyDirectory) -> None:
        keys.check(OLD, "fraud", T0)
        keys.check(OLD, "fraud", T0 + HOUR)
        keys.check(NEW, "fraud", T0 + 2 * HOUR)  # valid_from is inclusive
        with pytest.raises(SignatureError, match=f"key {OLD} of fraud was not valid at"):
            keys.check(OLD, "fraud", T0 + 2 * HOUR)  # valid_until is exclusive
        with pytest.raises(SignatureError, match="was not valid at"):
            keys.check(NEW, "fraud", T0 + HOUR)
        with pytest.raises(SignatureError, match="was not valid at"):
            keys.check(OLD, "fraud", T0 - timedelta(seconds=1))

    async def test_a_key_signs_only_for_its_own_agent(self, keys: KeyDirectory) -> None:
        with pytest.raises(SignatureError, match="belongs to intake, not to actor fraud"):
            keys.check(INTAKE_KEY, "fraud", T0 + HOUR)
        with pytest.raises(SignatureError, match=f"signer key {UNKNOWN} is not registered"):
            keys.check(UNKNOWN, "fraud", T0 + HOUR)

    async def test_a_suspension_invalidates_what_was_signed_during_it(
        self, keys: KeyDirectory
    ) -> None:
        keys.check(NEW, "fraud", T0 + 4 * HOUR - timedelta(seconds=1))
        with pytest.raises(SignatureError, match="signed by agent fraud while suspended"):
            keys.check(NEW, "fraud", T0 + 4 * HOUR)
        keys.check(NEW, "fraud", T0 + 5 * HOUR)  # the suspension's end is exclusive

    async def test_revocation_ends_everything_signed_from_then_on(self, keys: KeyDirectory) -> None:
        keys.check(ROGUE_KEY, "rogue", T0 + 6 * HOUR - timedelta(seconds=1))
        with pytest.raises(SignatureError, match="signed by revoked agent rogue after"):
            keys.check(ROGUE_KEY, "rogue", T0 + 6 * HOUR)

    async def test_an_event_type_counts_only_if_the_card_then_in_force_produced_it(
        self, keys: KeyDirectory
    ) -> None:
        keys.check(OLD, "fraud", T0 + HOUR, event_type="case_step_completed")
        with pytest.raises(SignatureError, match=r"\(version 1\) does not produce case_closed"):
            keys.check(OLD, "fraud", T0 + HOUR, "mesh.case.c1.case_closed", "case_closed")
        keys.check(NEW, "fraud", T0 + 3 * HOUR, event_type="case_closed")
        with pytest.raises(SignatureError, match="no card of fraud was in force"):
            keys.check(OLD, "fraud", T0 + HOUR / 4, event_type="case_step_completed")

    async def test_a_refusal_names_the_subject(self, keys: KeyDirectory) -> None:
        with pytest.raises(SignatureError) as refused:
            keys.check(UNKNOWN, "fraud", T0, "mesh.case.c1.case_closed")
        assert "mesh.case.c1.case_closed" in str(refused.value)

    async def test_the_card_in_force_is_the_one_of_that_time(self, keys: KeyDirectory) -> None:
        assert keys.card_at("fraud", T0) is None  # before its first card
        first, second = keys.card_at("fraud", T0 + HOUR), keys.card_at("fraud", T0 + 3 * HOUR)
        assert first is not None
        assert second is not None
        assert (first.version, second.version) == ("1", "2")
        assert keys.card_at("nobody", T0 + HOUR) is None

    async def test_a_fact_counts_only_from_its_authority_at_the_time(
        self, keys: KeyDirectory
    ) -> None:
        assert not keys.authoritative("fraud", "fraud_score", T0 + HOUR)
        assert keys.authoritative("fraud", "fraud_score", T0 + 3 * HOUR)
        assert not keys.authoritative("intake", "fraud_score", T0 + 3 * HOUR)
        assert not keys.authoritative("nobody", "fraud_score", T0 + 3 * HOUR)
        assert keys.authorities("fraud_score", T0 + HOUR) == ["rogue"]
        assert keys.authorities("fraud_score", T0 + 3 * HOUR) == ["fraud", "rogue"]
        assert keys.authorities("claim_complete", T0 + 3 * HOUR) == ["intake"]
        assert keys.authorities("payout_cents", T0 + 3 * HOUR) == []

    async def test_an_empty_source_knows_nobody(self, directory_of: DirectoryOf) -> None:
        empty = await directory_of([], 0)
        assert empty.loaded.is_set()
        with pytest.raises(SignatureError, match="not registered"):
            empty.check(OLD, "fraud", T0 + HOUR)
        assert empty.authorities("fraud_score", T0 + HOUR) == []
