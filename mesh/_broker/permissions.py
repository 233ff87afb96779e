"""The nats-server authorization config, generated from the registry's cards and the
static principals (pure).

Every active agent is an nkey user that may publish exactly the case subjects of the
event types its card produces, plus what its runtime needs (its own durable consumers,
its acks and dead letters, its breaker events, registry requests) and nothing else; it
receives replies only on its private inbox prefix. Suspended and revoked agents are
absent, so the broker refuses their connections: the kill switch. Services and
operators are static principals with their own users. Unknown clients land in the
`onboarding` user, which may only ask the registry to register a card.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from contracts.authorship import DECISION_TYPES, TIMER_TYPES
from contracts.cards import AgentRecord
from contracts.reader_api import READER_OPERATIONS
from contracts.registry_api import ASKED_BY_NAME
from mesh._broker.topology import Topology
from mesh._trust.onboarding import ONBOARDING_ID, inbox_prefix
from mesh._trust.principals import StaticPrincipal

ONBOARDING_USER = ONBOARDING_ID
# Used by registration before an agent has credentials; anyone may know it, and all it
# allows is one request subject and replies on the onboarding inbox (which carries
# nothing secret: registration outcomes).
ONBOARDING_PASSWORD = ONBOARDING_ID


def agent_permissions(record: AgentRecord, topology: Topology) -> dict[str, object]:
    agent_id = record.card.agent_id
    s = topology.subjects
    cases, dlq = topology.cases_stream, topology.dead_letter_stream
    work = topology.work_stream
    replay_durable = f"{agent_id}_replay"
    publish = [
        *(s.case_events_of_type(t) for t in sorted(record.card.produces)),
        s.events_of_type("ops", "circuit_state_changed"),
        s.dead_letter(cases, agent_id),
        *(
            s.service("registry", op)
            for op in ("register", "heartbeat", "delegate", "revoke_delegation")
        ),
        # Reads under its own name: answered only on its own inbox, so the registry is
        # no channel from one principal to another's inbox.
        *(s.service_as("registry", op, agent_id) for op in ASKED_BY_NAME),
        s.service_as("policy", "pending", agent_id),  # what waits for it (and it decides)
        # Reading a case goes through the reader, under its own name: only the cases it
        # works on, only the types its card reads. No direct reads of the case stream.
        *(s.service_as("reader", op, agent_id) for op in READER_OPERATIONS),
        "$JS.API.INFO",
        # its own durables only, which the registry created from its card: inspect,
        # fetch, ack. Never create: a consumer config could filter on anything or
        # push into another principal's inbox. A card that consumes nothing has none.
        # One per partition of the work stream (see mesh._runtime.partitions).
        *(
            [
                *(
                    api
                    for durable in topology.partition_durables(agent_id)
                    for api in _durable_api(work, durable)
                ),
                *_durable_api(dlq, replay_durable),
            ]
            if record.card.consumes
            else []
        ),
        # Its own timers: set or cancel them (one schedule per subject), and take their
        # firings from the durable the registry created (mesh._runtime.timers).
        *(
            [
                s.timers_of("set", agent_id),
                *_durable_api(topology.timers_stream(agent_id), topology.timer_durable(agent_id)),
                # its sweep reads its own schedule subjects (mesh._runtime.timers)
                f"$JS.API.DIRECT.GET.{topology.timers_stream(agent_id)}",
            ]
            if record.card.sets_timers and record.card.consumes
            else []
        ),
        # how far the registry's history goes: a consumer never judges a message with
        # a key directory older than it (mesh._trust.key_directory.ensure_current)
        f"$JS.API.DIRECT.GET.{topology.registry_stream}",
    ]
    subscribe = [f"{inbox_prefix(agent_id)}.>", s.family_all("registry")]
    return {"publish": {"allow": publish}, "subscribe": {"allow": subscribe}}


def _durable_api(stream: str, durable: str) -> list[str]:
    return [
        f"$JS.API.CONSUMER.INFO.{stream}.{durable}",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}",
        f"$JS.ACK.{stream}.{durable}.>",
    ]


def principal_permissions(principal: StaticPrincipal, topology: Topology) -> dict[str, object]:
    if principal.role == "registry":
        return {
            "publish": {
                "allow": [
                    topology.subjects.family_all("registry"),
                    "$JS.API.>",
                    "$KV.>",
                    # Replies, to everyone's inbox. Not left to allow_responses, whose
                    # bookkeeping a config reload (which a registration triggers just
                    # before replying) resets.
                    "_INBOX.>",
                ]
            },
            "subscribe": {
                "allow": [
                    topology.subjects.service_all("registry"),
                    f"{inbox_prefix(principal.name)}.>",
                ]
            },
        }
    s = topology.subjects
    if principal.role == "external":
        # Another system: it may open cases through the ingress, as itself, ask the
        # status of the cases it opened (the ingress checks that they are its own), and
        # read the answers. Nothing else of the mesh.
        return {
            "publish": {
                "allow": [
                    s.service("ingress", principal.name),
                    s.service_as("ingress", "status", principal.name),
                    s.service_as("ingress", "events", principal.name),
                ]
            },
            "subscribe": {"allow": [f"{inbox_prefix(principal.name)}.>"]},
        }
    registry_reads = [s.service("registry", op) for op in ("get", "list", "keys")]
    if principal.role == "reader":
        # Reads the case log and the dead letters for the agents that ask, and answers
        # on their inboxes; writes nothing.
        return {
            "publish": {
                "allow": [
                    *registry_reads,
                    *(
                        f"$JS.API.DIRECT.GET.{stream}"
                        for stream in (
                            topology.cases_stream,
                            topology.dead_letter_stream,
                            topology.registry_stream,
                        )
                    ),
                    "_INBOX.>",
                ]
            },
            "subscribe": {
                "allow": [
                    s.service_all("reader"),
                    s.family_all("registry"),
                    f"{inbox_prefix(principal.name)}.>",
                ]
            },
        }
    if principal.role == "eventstore":
        # Reads the logs, writes only its own checkpoints and its replies.
        return {
            "publish": {
                "allow": [
                    s.family_event("ops", "eventstore", "log_checkpointed"),
                    *registry_reads,
                    "$JS.API.>",  # its ack-less readers, stream info, direct gets
                    "_INBOX.>",  # replies to `svc.eventstore.*`
                ]
            },
            "subscribe": {
                "allow": [
                    s.service_all("eventstore"),
                    s.family_all("registry"),
                    f"{inbox_prefix(principal.name)}.>",
                ]
            },
        }
    if principal.role == "ingress":
        # Opens cases, adds what outside systems send to them later, and keeps refused
        # input; nothing else of the log is its to write.
        # It reads a case's log to answer its opener, checked against the registry's
        # cards like every consumer.
        cases = topology.cases_stream
        return {
            "publish": {
                "allow": [
                    s.case_events_of_type("case_opened"),
                    s.case_events_of_type("evidence_received"),
                    s.dead_letter(topology.ingress_stream, principal.name),
                    f"$JS.API.DIRECT.GET.{cases}",
                    f"$JS.API.DIRECT.GET.{cases}.>",
                    f"$JS.API.STREAM.MSG.GET.{cases}",
                    f"$JS.API.DIRECT.GET.{topology.registry_stream}",
                    *registry_reads,
                    "_INBOX.>",  # replies to the systems that open cases
                ]
            },
            "subscribe": {
                "allow": [
                    s.service_all("ingress"),
                    s.family_all("registry"),
                    f"{inbox_prefix(principal.name)}.>",
                ]
            },
        }
    decisions = [s.case_events_of_type(t) for t in DECISION_TYPES]
    if principal.role == "policy":
        return {
            "publish": {
                "allow": [
                    *decisions,
                    s.family_event("ops", "policy", "policy_bundle_activated"),
                    s.events_of_type("ops", "circuit_state_changed"),
                    # its approval deadlines: durable timers of its own
                    *(s.case_events_of_type(t) for t in TIMER_TYPES),
                    s.timers_of("set", principal.name),
                    s.dead_letter_all(),
                    *registry_reads,
                    "$JS.API.>",
                    "$JS.ACK.>",
                    "$KV.>",
                    "_INBOX.>",  # replies to `svc.policy.pending`
                ]
            },
            "subscribe": {
                "allow": [
                    s.service_all("policy"),
                    s.family_all("registry"),
                    f"{inbox_prefix(principal.name)}.>",
                ]
            },
        }
    # Operators and other services have the run of the mesh, except for what only the
    # policy service or the registry may write: decisions, policy activations and
    # registry history.
    return {
        "publish": {
            "allow": [">"],
            "deny": [
                *decisions,
                s.family_event("ops", "policy", "policy_bundle_activated"),
                s.family_all("registry"),
            ],
        },
        "subscribe": {"allow": [">"]},
    }


def onboarding_permissions(topology: Topology) -> dict[str, object]:
    return {
        "publish": {"allow": [topology.subjects.service("registry", "register")]},
        "subscribe": {"allow": [f"{inbox_prefix(ONBOARDING_ID)}.>"]},
    }


def authorization_config(
    records: Iterable[AgentRecord],
    principals: Iterable[StaticPrincipal],
    topology: Topology,
) -> str:
    """The `authorization {}` block and `no_auth_user`, as nats-server config text."""
    users: list[dict[str, object]] = [
        {
            "user": ONBOARDING_USER,
            "password": ONBOARDING_PASSWORD,
            "permissions": onboarding_permissions(topology),
        }
    ]
    for principal in sorted(principals, key=lambda p: p.name):
        users.append(
            {
                "nkey": principal.public_key,
                "permissions": principal_permissions(principal, topology),
            }
        )
    granted = {principal.public_key for principal in principals}
    for record in sorted(records, key=lambda r: r.card.agent_id):
        if record.status != "active":
            continue  # registered-but-not-activated, suspended, revoked: no credentials
        for key in record.key_history:
            # One user per key: nats-server refuses a file naming a key twice, and would
            # then keep the old authorization — revocations included — in force.
            if key.valid_until is None and key.public_key not in granted:
                granted.add(key.public_key)
                users.append(
                    {"nkey": key.public_key, "permissions": agent_permissions(record, topology)}
                )
    # nats-server's config syntax accepts JSON objects, which keeps quoting exact.
    body = json.dumps({"users": users}, indent=2, sort_keys=True)
    return (
        "# generated by the registry from the agent cards; do not edit\n"
        f"authorization {body}\n"
        f"no_auth_user: {ONBOARDING_USER}\n"
    )
