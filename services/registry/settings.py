"""Registry settings (`MESH_REGISTRY_*`), beside the shared `MESH_*` ones."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _comma_separated(value: Any) -> Any:
    """`a,b,c` (as an environment variable gives it) or a list."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class RegistrySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MESH_REGISTRY_", extra="ignore")

    service_id: str = Field(default="registry", description="actor of registry events")
    seed_file: Path | None = Field(default=None, description="the registry's nkey seed")
    known_owners: list[str] = Field(
        default_factory=list, description='JSON list; empty accepts any owner, e.g. ["claims"]'
    )
    registrations_per_second: float = Field(
        default=20.0,
        gt=0,
        description="registration requests served a second (bursts of twice that)",
    )
    principals_file: Path | None = Field(
        default=None, description="JSON list of static principals (services, operators)"
    )
    auth_file: Path | None = Field(
        default=None, description="where to write the generated authorization config"
    )
    server_pid_file: Path | None = Field(
        default=None, description="nats-server pid file, to reload it after auth_file changes"
    )
    server_monitor_url: str | None = Field(
        default=None,
        description="nats-server monitoring URL (http://host:8222): confirms each reload",
    )
    server_pid_files: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="every cluster member's pid file, comma-separated (beside server_pid_file)",
    )
    server_monitor_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="each member's monitoring URL, comma-separated, in server_pid_files' order",
    )
    stale_after: float = Field(default=30.0, gt=0, description="seconds without a heartbeat")
    lease_timeout: float = Field(
        # Longer than a JetStream leader election on a loaded cluster (seconds): a
        # writer must not lose its term each time the lease's stream changes leader.
        default=10.0,
        gt=0,
        description="seconds a writer's lease lasts unrenewed: how soon a standby takes over",
    )
    standby_poll: float = Field(
        default=0.5, gt=0, description="how often a standby tries for the writer lease"
    )

    @field_validator("server_pid_files", "server_monitor_urls", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return _comma_separated(value)

    @field_validator("server_pid_file", "server_monitor_url", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @model_validator(mode="after")
    def _one_monitor_url_per_server(self) -> RegistrySettings:
        pid_files, urls = self._reload_lists()
        if urls and len(urls) != len(pid_files):
            raise ValueError(
                f"{len(urls)} server monitor URL(s) for {len(pid_files)} server pid file(s):"
                " give one per server, in the same order, or none"
            )
        return self

    def servers_to_reload(self) -> list[tuple[Path, str | None]]:
        """Every server (a cluster's members) to reload after auth_file changes, each
        with the monitoring URL that confirms its reload (None: not confirmed)."""
        pid_files, urls = self._reload_lists()
        return [(pid_file, urls[i] if urls else None) for i, pid_file in enumerate(pid_files)]

    def _reload_lists(self) -> tuple[list[Path], list[str]]:
        single = [self.server_pid_file] if self.server_pid_file else []
        single_url = [self.server_monitor_url] if self.server_monitor_url else []
        return [*single, *self.server_pid_files], [*single_url, *self.server_monitor_urls]
