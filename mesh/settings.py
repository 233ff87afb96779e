"""Runtime settings, read from the environment (`MESH_*`) by pydantic-settings."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from contracts.subjects import check_token


class MeshSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MESH_", extra="ignore")

    nats_url: str | None = Field(
        default=None, description="NATS server URL; unset starts an embedded nats-server"
    )
    subject_root: str = Field(default="mesh", description="first token of every subject")
    data_dir: Path = Field(default=Path(".mesh"), description="embedded store, keys, logs")
    embedded_port: int = Field(default=0, ge=0, le=65535, description="0 takes a free port")
    nats_server_bin: Path | None = Field(default=None, description="override the binary")
    stream_replicas: int = Field(default=1, ge=1, le=5)
    partitions: int = Field(
        default=8,
        ge=1,
        le=64,
        description="partitions of the work stream: the most replicas of one agent that "
        "can share its work (fixed for a mesh's life; every process must agree)",
    )

    agent_seed: SecretStr | None = Field(default=None, description="nkey seed 'SU…'")
    agent_seed_file: Path | None = None

    nkey_auth: bool = Field(default=False, description="authenticate to NATS with the agent's nkey")
    onboard: bool = Field(
        default=False,
        description="register the card with the registry first, then run with the "
        "credentials it grants (implies nkey_auth)",
    )
    onboard_wait: float = Field(default=60.0, gt=0, description="wait for activation")
    enrolment_grant_file: Path | None = Field(
        default=None,
        description="an operator's enrolment grant (mesh registry grant): a new agent "
        "presents it with its first registration",
    )
    check_signers: bool = Field(
        default=False,
        description="refuse events whose signer the registry does not vouch for "
        "(unknown, another actor's, suspended or revoked)",
    )
    heartbeat_interval: float = Field(default=10.0, gt=0)
    operator_name: str = Field(
        default="operator", description="the operator principal the CLI acts as"
    )
    operator_seed_file: Path | None = Field(
        default=None, description="the operator's nkey seed (default <data_dir>/keys/)"
    )
    connect_timeout: float = Field(default=5.0, gt=0)
    request_timeout: float = Field(default=5.0, gt=0)

    fetch_batch: int = Field(default=64, ge=1, le=1024, description="messages in flight")
    fetch_wait: float = Field(default=1.0, gt=0, description="long-poll of one fetch")
    ack_wait: float = Field(default=30.0, gt=0)
    pin_timeout: float = Field(
        default=5.0,
        gt=0,
        description="a replica that has not pulled a partition for this long loses it "
        "to another (the server's priority_timeout); failover takes this plus ack_wait",
    )
    replica: str | None = Field(
        default=None,
        description="'i/N': this process is replica i (0-based) of N, and prefers the "
        "partitions p with p % N == i; unset, it takes whatever partitions are free",
    )
    max_deliver: int = Field(
        default=6, ge=2, description="deliveries before a message is dead-lettered"
    )
    handler_timeout: float = Field(
        default=60.0, gt=0, description="a handler running longer is retried"
    )
    retry_base_delay: float = Field(default=0.5, gt=0)
    retry_max_delay: float = Field(default=60.0, gt=0)
    breaker_failure_threshold: int = Field(default=5, ge=1)
    breaker_reset_timeout: float = Field(default=30.0, gt=0)
    verify_signatures: bool = Field(
        default=False, description="re-verify inbound signatures (costs ~55us/event)"
    )
    timer_sweep_every: float = Field(
        default=60.0,
        gt=0,
        description="how often an agent re-arms timers whose schedule something foreign "
        "disarmed (mesh._runtime.timers)",
    )
    clock_rate: float = Field(
        default=1.0,
        ge=1.0,
        le=10_000_000.0,
        description="DEMO AND TESTS ONLY: business time passes this many times faster "
        "than real time for durable timers (86400: a day a second). Every timer records "
        "the rate it was set under, and `mesh audit verify` names each compressed one; a "
        "real mesh keeps 1",
    )

    @field_validator("replica")
    @classmethod
    def _replica_is_index_of_count(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        index, _, count = value.partition("/")
        if not (index.isdigit() and count.isdigit() and 0 <= int(index) < int(count)):
            raise ValueError(f"replica must be 'i/N' with 0 <= i < N, not {value!r}")
        return value

    @field_validator("subject_root")
    @classmethod
    def _root_is_token(cls, value: str) -> str:
        return check_token(value, "subject root")
