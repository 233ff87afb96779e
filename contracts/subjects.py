"""Every subject name in the mesh is built and parsed here.

    <root>.case.<case_id>.<event_type>        the case log (one stream)
    <root>.work.<partition>.<case_id>.<type>  the case log again, as agents consume it:
                                              the server copies each case event and
                                              computes its partition from the case id
    <root>.registry.<agent_id>.<event_type>   registry / governance history
    <root>.ops.<component>.<event_type>       operational events (breakers, …)
    <root>.ingress.<source>                   initiating events from other systems
    <root>.dlq.<stream>.<consumer>            dead letters, kept with their reason
    <root>.replay.<stream>.<consumer>         a dead letter sent back to its one consumer
    <root>.svc.<service>.<operation>          request/reply with a service (core NATS)
    <root>.svc.<service>.<operation>.<who>    the same, where the broker binds who asks
    <root>.timers.set.<agent>.<case>.<timer>  an agent's timer, held by the broker until due
    <root>.timers.due.<agent>.<case>.<timer>  the broker's firing of it (no client publishes)

Family subjects have a fixed token count, so a consumer filters one event type
across all cases with `<root>.case.*.<event_type>`. The root defaults to "mesh"; tests
use a unique root each so they never see each other's messages.

Parsing: `Subjects.parse*` check a whole subject against its shape and root and raise
`InvalidSubject` otherwise (for a subject that came from outside). `key_of` reads the
key token of a subject the broker already matched (the hot path: no checks).
"""

from __future__ import annotations

import re

import msgspec

from contracts.envelope import Event
from contracts.errors import InvalidSubject

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
FAMILIES = ("case", "registry", "ops")


def check_token(value: str, what: str) -> str:
    if not _TOKEN.fullmatch(value):
        raise InvalidSubject(value, f"{what} must be 1-128 of [A-Za-z0-9_-]")
    return value


class ParsedSubject(msgspec.Struct, frozen=True):
    root: str
    family: str
    key: str
    event_type: str


class ServiceSubject(msgspec.Struct, frozen=True):
    """`<root>.svc.<service>.<operation>[.<principal>]`: principal None when unnamed."""

    root: str
    service: str
    operation: str
    principal: str | None = None


class ConsumerSubject(msgspec.Struct, frozen=True):
    """`<root>.<dlq|replay>.<stream>.<consumer>`: the consumer the broker bound it to."""

    root: str
    kind: str  # "dlq" or "replay"
    stream: str
    consumer: str


def key_of(subject: str) -> str | None:
    """The key token (case id, agent id, component…) of `<root>.<family>.<key>.…`, or
    None for a subject with fewer tokens. Unchecked: for subjects the broker delivered
    on a filter we declared, where the token orders messages (one lane per case)."""
    tokens = subject.split(".", 3)
    return tokens[2] if len(tokens) > 2 else None


def event_type_of(subject: str) -> str:
    """The event type of `<root>.<family>.<key>.<event_type>` (its last token). Unchecked:
    for subjects read back from a stream whose subjects we declared."""
    return subject.rsplit(".", 1)[-1]


def consumer_of(subject: str) -> str:
    """The consumer of `<root>.<dlq|replay>.<stream>.<consumer>` (its last token), which
    the broker binds to the publisher's own name. Unchecked, as `event_type_of`."""
    return subject.rsplit(".", 1)[-1]


def case_subject_of_work(subject: str) -> str:
    """`<root>.work.<partition>.<case_id>.<event_type>` back to the case-log subject the
    event was published and signed on, `<root>.case.<case_id>.<event_type>`. Unchecked:
    for subjects the broker computed from a case subject (a stream no one publishes to)."""
    root, _work, _partition, rest = subject.split(".", 3)
    return f"{root}.case.{rest}"


def partition_of_work(subject: str) -> int:
    """The partition token of a work subject (see `case_subject_of_work`)."""
    return int(subject.split(".", 3)[2])


class TimerSubject(msgspec.Struct, frozen=True):
    """`<root>.timers.<set|due>.<agent>.<case>.<timer>`."""

    kind: str  # "set" (the schedule) or "due" (its firing)
    agent_id: str
    case_id: str
    timer_id: str


class Subjects:
    def __init__(self, root: str = "mesh") -> None:
        self.root = check_token(root, "subject root")

    def family_event(self, family: str, key: str, event_type: str) -> str:
        check_token(key, f"{family} key")
        check_token(event_type, "event type")
        return f"{self.root}.{family}.{key}.{event_type}"

    def for_event(self, event: Event) -> str:
        return self.family_event(event.family, event.subject_key(), event.event_name())

    def case_event(self, case_id: str, event_type: str) -> str:
        return self.family_event("case", case_id, event_type)

    def case_events_of_type(self, event_type: str) -> str:
        return self.events_of_type("case", event_type)

    def events_of_type(self, family: str, event_type: str) -> str:
        """One event type under every key of a family (every case, every breaker…)."""
        return f"{self.root}.{family}.*.{check_token(event_type, 'event type')}"

    def work_of_type(self, partition: int, event_type: str) -> str:
        """One event type of every case in one partition of the work stream."""
        return f"{self.root}.work.{partition}.*.{check_token(event_type, 'event type')}"

    def work_prefix(self) -> str:
        return f"{self.root}.work."

    def work_transform(self, partitions: int) -> tuple[str, str]:
        """(source, destination) of the server's subject transform that files a case
        event under its partition: a hash of the case id, computed by the server, so no
        publisher can choose which replica handles its event."""
        return (
            f"{self.root}.case.*.*",
            f"{self.root}.work.{{{{partition({partitions},1)}}}}.{{{{wildcard(1)}}}}."
            "{{wildcard(2)}}",
        )

    def case_history(self, case_id: str) -> str:
        """Every event of one case: the scope of per-case optimistic concurrency."""
        return self.history("case", case_id)

    def history(self, family: str, key: str) -> str:
        """Every event under one key of a family (a case, an agent, a breaker)."""
        return f"{self.root}.{family}.{check_token(key, f'{family} key')}.*"

    def family_all(self, family: str) -> str:
        return f"{self.root}.{family}.>"

    def ingress(self, source: str) -> str:
        return f"{self.root}.ingress.{check_token(source, 'ingress source')}"

    def ingress_all(self) -> str:
        return f"{self.root}.ingress.>"

    def dead_letter(self, stream: str, consumer: str) -> str:
        return (
            f"{self.root}.dlq.{check_token(stream, 'stream')}.{check_token(consumer, 'consumer')}"
        )

    def dead_letter_all(self) -> str:
        return f"{self.root}.dlq.>"

    def service(self, service: str, operation: str) -> str:
        return (
            f"{self.root}.svc.{check_token(service, 'service')}."
            f"{check_token(operation, 'operation')}"
        )

    def service_as(self, service: str, operation: str, principal: str) -> str:
        """A request that names who asks (`<root>.svc.<service>.<operation>.<principal>`):
        under the registry's enforcement each principal may publish only its own, so
        the service knows who asks without trusting the body."""
        return f"{self.service(service, operation)}.{check_token(principal, 'principal')}"

    def service_all(self, service: str) -> str:
        return f"{self.root}.svc.{check_token(service, 'service')}.>"

    def replay(self, stream: str, consumer: str) -> str:
        return (
            f"{self.replay_prefix()}{check_token(stream, 'stream')}."
            f"{check_token(consumer, 'consumer')}"
        )

    def replay_prefix(self) -> str:
        return f"{self.root}.replay."

    def replay_all(self) -> str:
        return f"{self.root}.replay.>"

    def timer(self, kind: str, agent_id: str, case_id: str, timer_id: str) -> str:
        """Where the broker holds an agent's timer (`set`: one schedule per subject, so
        publishing there again replaces or cancels it) and where it fires it (`due`)."""
        if kind not in ("set", "due"):
            raise InvalidSubject(kind, "a timer subject is 'set' or 'due'")
        return (
            f"{self.root}.timers.{kind}.{check_token(agent_id, 'agent id')}."
            f"{check_token(case_id, 'case key')}.{check_token(timer_id, 'timer id')}"
        )

    def timers_of(self, kind: str, agent_id: str) -> str:
        """Every timer subject of one kind of one agent."""
        return f"{self.root}.timers.{kind}.{check_token(agent_id, 'agent id')}.>"

    def parse_timer(self, subject: str) -> TimerSubject:
        tokens = subject.split(".")
        if (
            len(tokens) != 6
            or tokens[0] != self.root
            or tokens[1] != "timers"
            or tokens[2] not in ("set", "due")
        ):
            raise InvalidSubject(
                subject, f"expected {self.root}.timers.<set|due>.<agent>.<case>.<timer>"
            )
        for token in tokens[3:]:
            check_token(token, "subject token")
        return TimerSubject(tokens[2], tokens[3], tokens[4], tokens[5])

    def parse(self, subject: str) -> ParsedSubject:
        tokens = subject.split(".")
        if len(tokens) != 4 or tokens[0] != self.root or tokens[1] not in FAMILIES:
            raise InvalidSubject(
                subject, f"expected {self.root}.<{'|'.join(FAMILIES)}>.<key>.<event_type>"
            )
        for token in tokens[2:]:
            check_token(token, "subject token")
        return ParsedSubject(tokens[0], tokens[1], tokens[2], tokens[3])

    def parse_service(self, subject: str) -> ServiceSubject:
        """A request subject: `<root>.svc.<service>.<operation>[.<principal>]`."""
        tokens = subject.split(".")
        if len(tokens) not in (4, 5) or tokens[0] != self.root or tokens[1] != "svc":
            raise InvalidSubject(
                subject, f"expected {self.root}.svc.<service>.<operation>[.<principal>]"
            )
        for token in tokens[2:]:
            check_token(token, "subject token")
        principal = tokens[4] if len(tokens) == 5 else None
        return ServiceSubject(tokens[0], tokens[2], tokens[3], principal)

    def parse_consumer(self, subject: str) -> ConsumerSubject:
        """A dead letter's or a replay's subject: `<root>.<dlq|replay>.<stream>.<consumer>`."""
        tokens = subject.split(".")
        if len(tokens) != 4 or tokens[0] != self.root or tokens[1] not in ("dlq", "replay"):
            raise InvalidSubject(subject, f"expected {self.root}.<dlq|replay>.<stream>.<consumer>")
        for token in tokens[2:]:
            check_token(token, "subject token")
        return ConsumerSubject(tokens[0], tokens[1], tokens[2], tokens[3])
