"""The registry's answers to reads, as pure functions of its state: one agent's record,
the agents a query matches, and every principal's keys (agents and the static
principals), each in pages that fit one reply. No I/O, no await.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TypeVar

import msgspec

from contracts.cards import AgentKey, AgentRecord
from contracts.registry_api import PrincipalKeys, RegistryQuery
from mesh.service import Refused, StaticPrincipal, static_cards
from services.registry.state import RegistryState

# A reply must fit in one NATS message (1 MiB by default): pages stay well below it. A
# card is at most 4 KiB and an agent holds at most 32, so one principal always fits.
PAGE_BYTES = 256 * 1024

T = TypeVar("T")

_encoder = msgspec.json.Encoder()


def registered(state: RegistryState, agent_id: str | None) -> AgentRecord:
    record = state.records.get(agent_id or "")
    if record is None:
        raise Refused(f"no agent {agent_id!r} is registered")
    return record


def matching(state: RegistryState, query: RegistryQuery) -> tuple[list[AgentRecord], str | None]:
    """A page of the agents `query` asks for, by id, and the id to continue after."""
    records = [
        (agent_id, record)
        for agent_id, record in sorted(state.records.items())
        if _matches(record, query) and (query.after is None or agent_id > query.after)
    ]
    return _page(records)


def principal_keys(
    state: RegistryState, principals: list[StaticPrincipal], query: RegistryQuery
) -> tuple[list[PrincipalKeys], str | None]:
    """A page of every principal's keys and cards over time, by id, and the id to
    continue after."""
    agents = [
        PrincipalKeys(
            agent_id=record.card.agent_id,
            status=record.status,
            status_changed_at=record.status_changed_at,
            key_history=record.key_history,
            updated_at=record.updated_at,
            suspensions=record.suspensions,
            cards=record.card_history,
            delegations=[
                d
                for d in state.delegations.values()
                if d.delegation.delegate == record.card.agent_id
            ],
        )
        for record in state.records.values()
    ]
    # Services and operators sign events too (the registry its history, ingress the
    # cases it opens): their fixed keys are vouched for from the principals file.
    static = [
        PrincipalKeys(
            agent_id=principal.name,
            status="active" if principal.active else "revoked",
            status_changed_at=principal.valid_until or principal.valid_from,
            key_history=[
                AgentKey(
                    public_key=principal.public_key,
                    valid_from=principal.valid_from,
                    valid_until=principal.valid_until,
                )
            ],
            updated_at=principal.valid_until or principal.valid_from,
            cards=static_cards(principal),
        )
        for principal in principals
    ]
    everyone = sorted(
        (
            (p.agent_id, p)
            for p in agents + static
            if query.after is None or p.agent_id > query.after
        ),
        key=lambda item: item[0],  # never compares two principals (one name twice)
    )
    return _page(everyone)


def with_liveness(
    record: AgentRecord, seen: datetime | None, now: datetime, stale_after: timedelta
) -> AgentRecord:
    """`record` with its last heartbeat (`seen`), stale if none came within `stale_after`."""
    stale = seen is None or now - seen > stale_after
    return msgspec.structs.replace(record, last_heartbeat=seen, stale=stale)


def _page(items: list[tuple[str, T]]) -> tuple[list[T], str | None]:
    """The first items (sorted by id) that fit a page, and the id to continue after."""
    page: list[T] = []
    size = 0
    for index, (_, item) in enumerate(items):
        size += len(_encoder.encode(item))
        if page and size > PAGE_BYTES:
            return page, items[index - 1][0]
        page.append(item)
    return page, None


def _matches(record: AgentRecord, query: RegistryQuery) -> bool:
    card = record.card
    return (
        (query.status is None or record.status == query.status)
        and (
            query.event_type is None
            or query.event_type in card.consumes
            or query.event_type in card.produces
        )
        and (
            query.action_type is None
            or any(a.action_type == query.action_type for a in card.actions)
        )
        and (query.role is None or query.role in card.roles)
        and (query.agent_id is None or card.agent_id == query.agent_id)
    )
