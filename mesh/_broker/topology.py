"""The mesh's streams, declared in code. Provisioning makes the server match them.

One stream is the source of truth for cases (the audit log: `deny_delete` and
`deny_purge`). Registry history, operational events, ingress and dead letters have
streams of their own. Names derive from the subject root, so a test's unique root
gives it private streams.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from contracts.subjects import Subjects

# Redelivery after a crash happens within ack_wait (30 s by default); the window must
# outlast it so a re-published derived event is still recognised as a duplicate.
DUPLICATE_WINDOW_SECONDS = 600.0


@dataclass(frozen=True)
class Topology:
    root: str = "mesh"
    replicas: int = 1
    subjects: Subjects = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "subjects", Subjects(self.root))

    def _name(self, suffix: str) -> str:
        return f"{self.root.upper().replace('-', '_')}_{suffix}"

    @property
    def cases_stream(self) -> str:
        return self._name("CASES")

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
        return [
            log_stream(self.cases_stream, s.family_all("case"), audit=True),
            log_stream(self.registry_stream, s.family_all("registry"), audit=True),
            # Breaker history and policy activations are evidence: append-only too.
            log_stream(self.ops_stream, s.family_all("ops"), audit=True),
            log_stream(self.ingress_stream, s.ingress_all(), audit=False),
            # Dead letters are evidence too: kept until an operator has dealt with them.
            # Replays of dead letters to their one consumer live beside them.
            log_stream(self.dead_letter_stream, s.dead_letter_all(), s.replay_all(), audit=False),
        ]
