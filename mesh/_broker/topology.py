"""The mesh's streams, declared in code. Provisioning makes the server match them.

One stream is the source of truth for cases (the audit log: `deny_delete` and
`deny_purge`). Registry history, operational events, ingress and dead letters have
streams of their own. Names derive from the subject root, so a test's unique root
gives it private streams.

Agents consume the case log through the work stream: the server copies every case
event into it, filed under a partition it computes from the case id (a subject
transform with `partition()`). Each agent has one pinned consumer per partition, so
one replica at a time handles a partition, and so a case (see `mesh._runtime.partitions`).
The case log itself is never rewritten: its subjects stay what publishers signed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nats.js.api import (
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamSource,
    SubjectTransform,
)

from contracts.subjects import Subjects, check_token
from mesh.settings import MeshSettings

# Redelivery after a crash happens within ack_wait (30 s by default); the window must
# outlast it so a re-published derived event is still recognised as a duplicate.
DUPLICATE_WINDOW_SECONDS = 600.0
# How many partitions the work stream has. Fixed for a mesh's life: an agent's
# partition consumers are created per partition, and a case's partition is a hash of its
# id modulo this number. More partitions than replicas lets replicas share the work.
DEFAULT_PARTITIONS = 8
# The largest event the case log stores (the server refuses a larger one): every reader
# must be able to pass it on in a NATS message of its own, and the ingress takes no more
# than 64 KiB of any request.
CASE_EVENT_MAX_BYTES = 256 * 1024
# One agent's timers stream holds at most this much (schedules, firings, markers).
TIMER_STREAM_MAX_MSGS = 1_000_000
TIMER_STREAM_MAX_BYTES = 256 * 1024 * 1024
MAX_PARTITIONS = 64


@dataclass(frozen=True)
class Topology:
    root: str = "mesh"
    replicas: int = 1
    partitions: int = DEFAULT_PARTITIONS
    subjects: Subjects = field(init=False)

    def __post_init__(self) -> None:
        if not 1 <= self.partitions <= MAX_PARTITIONS:
            raise ValueError(f"partitions must be 1..{MAX_PARTITIONS}, not {self.partitions}")
        object.__setattr__(self, "subjects", Subjects(self.root))

    def _name(self, suffix: str) -> str:
        return f"{self.root.upper().replace('-', '_')}_{suffix}"

    @property
    def cases_stream(self) -> str:
        return self._name("CASES")

    @property
    def work_stream(self) -> str:
        return self._name("WORK")

    def partition_durables(self, agent_id: str) -> list[str]:
        """The names of an agent's consumers on the work stream, one per partition."""
        return [f"{check_token(agent_id, 'agent id')}_p{k}" for k in range(self.partitions)]

    @property
    def registry_stream(self) -> str:
        return self._name("REGISTRY")

    @property
    def ops_stream(self) -> str:
        return self._name("OPS")

    @property
    def ingress_stream(self) -> str:
        return self._name("INGRESS")

    @property
    def dead_letter_stream(self) -> str:
        return self._name("DLQ")

    def timers_stream(self, agent_id: str) -> str:
        """Where one agent's timers are held (see `timers_stream_config`)."""
        return self._name(f"TIMERS_{check_token(agent_id, 'agent id')}")

    def timer_durable(self, agent_id: str) -> str:
        """The agent's consumer of its own timers' firings."""
        return f"{check_token(agent_id, 'agent id')}_timers"

    def timers_stream_config(self, agent_id: str) -> StreamConfig:
        """One agent's timers, held by the server until due (ADR-51 message schedules;
        see mesh._runtime.timers). A timer's schedule is replaced by the next schedule
        on its subject and cancelled by a rollup of it; each firing has a subject of its
        own. It records nothing (the case log says what was set, fired and cancelled);
        it only wakes the agent. Bounded (nats-server allows schedules only with
        discard old): an agent flooding its own timers loses its own oldest, nobody
        else's.

        A stream per agent, because a stream that allows schedules allows rollups (the
        server insists: it rolls a schedule up itself), and a `Nats-Rollup: all` from any
        publisher empties the whole stream: in a shared stream, one agent could wipe
        every other's timers. Here it can only wipe its own; and a schedule's target
        must lie in the same stream, so it can only ever fire its own."""
        s = self.subjects
        return StreamConfig(
            name=self.timers_stream(agent_id),
            subjects=[s.timers_of("set", agent_id), s.timers_of("due", agent_id)],
            storage=StorageType.FILE,
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.OLD,
            num_replicas=self.replicas,
            duplicate_window=DUPLICATE_WINDOW_SECONDS,
            max_msgs=TIMER_STREAM_MAX_MSGS,
            max_bytes=TIMER_STREAM_MAX_BYTES,
            max_age=0,  # a timer may be due in months: nothing ages out
            # Not one per subject: a foreign message must not replace a firing.
            max_msgs_per_subject=-1,
            allow_msg_schedules=True,
            allow_rollup_hdrs=True,  # what the server sets with schedules, declared
            allow_direct=True,  # the agent's sweep reads its schedule subjects
            deny_delete=False,
            deny_purge=False,
        )

    def stream_for_family(self, family: str) -> str:
        return {
            "case": self.cases_stream,
            "registry": self.registry_stream,
            "ops": self.ops_stream,
        }[family]

    def streams(self) -> list[StreamConfig]:
        def log_stream(name: str, *subjects: str, audit: bool) -> StreamConfig:
            return StreamConfig(
                name=name,
                subjects=list(subjects),
                storage=StorageType.FILE,
                retention=RetentionPolicy.LIMITS,
                discard=DiscardPolicy.OLD,
                num_replicas=self.replicas,
                duplicate_window=DUPLICATE_WINDOW_SECONDS,
                # Declared, not defaulted: a limit added by hand would silently trim
                # the audit log, so provisioning must see and report it.
                max_msgs=-1,
                max_bytes=-1,
                max_age=0,
                max_msgs_per_subject=-1,
                deny_delete=audit,
                deny_purge=audit,
                allow_direct=True,
            )

        s = self.subjects
        source, destination = s.work_transform(self.partitions)
        work = log_stream(self.work_stream, audit=False)
        # No subjects of its own, so no one can publish into it: only the server's copy
        # of the case log, whose `Nats-Stream-Source` header no client can forge.
        work.subjects = None
        work.sources = [
            StreamSource(
                name=self.cases_stream,
                subject_transforms=[SubjectTransform(src=source, dest=destination)],
            )
        ]
        cases = log_stream(self.cases_stream, s.family_all("case"), audit=True)
        cases.max_msg_size = CASE_EVENT_MAX_BYTES
        return [
            cases,
            work,
            log_stream(self.registry_stream, s.family_all("registry"), audit=True),
            # Breaker history and policy activations are evidence: append-only too.
            log_stream(self.ops_stream, s.family_all("ops"), audit=True),
            log_stream(self.ingress_stream, s.ingress_all(), audit=False),
            # Dead letters are evidence too: kept until an operator has dealt with them.
            # Replays of dead letters to their one consumer live beside them.
            log_stream(self.dead_letter_stream, s.dead_letter_all(), s.replay_all(), audit=False),
        ]


def topology_for(settings: MeshSettings) -> Topology:
    """The topology every process of one mesh derives from the same settings."""
    return Topology(settings.subject_root, settings.stream_replicas, settings.partitions)
