"""Registry settings (`MESH_REGISTRY_*`), beside the shared `MESH_*` ones."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    stale_after: float = Field(default=30.0, gt=0, description="seconds without a heartbeat")
