"""An auditor's replay: a case as it stood at time T, from the log alone. No agent
runs and nothing is written; the fold is the projector's own (`domain.evolve`)."""

from __future__ import annotations

from datetime import datetime

from nats.js.client import JetStreamContext

from contracts.eventstore_api import CaseDetail
from mesh.service import KeyDirectory, Topology, read_raw
from services.eventstore.checking import MessageChecker
from services.eventstore.domain import LogRecord, fold_case


async def replay_case(
    js: JetStreamContext,
    topology: Topology,
    keys: KeyDirectory,
    case_id: str,
    at: datetime | None = None,
) -> CaseDetail | None:
    """The case after every message the log held at `at` (all of them when None);
    None if the case had no message by then."""
    checker = MessageChecker(topology.subjects, keys)
    records: list[LogRecord] = []
    subject = topology.subjects.case_history(case_id)
    async for batch in read_raw(js, topology.cases_stream, subject):
        for message in batch:
            if at is not None and message.stored_at > at:
                break  # the log is in time order: nothing after this was there at `at`
            records.append(
                checker.check(
                    message.sequence,
                    message.subject,
                    message.body,
                    message.headers,
                    message.stored_at,
                )
            )
    state = fold_case(records)
    if state is None:
        return None
    actions = sorted(state.actions.values(), key=lambda a: (a.requested_at, a.request_id))
    return CaseDetail(case=state.view, actions=actions)
