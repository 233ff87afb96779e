"""Event store settings (`MESH_EVENTSTORE_*`), beside the shared `MESH_*` ones."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class EventStoreSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MESH_EVENTSTORE_", extra="ignore")

    service_id: str = Field(default="eventstore", description="signs checkpoints and seals")
    seed_file: Path | None = Field(default=None, description="the event store's nkey seed")
    dsn: str | None = Field(
        default=None,
        description="sqlite:///path or postgresql://…; default <data_dir>/eventstore.db",
    )
    batch: int = Field(default=500, ge=1, le=5000, description="messages per transaction")
    fetch_wait: float = Field(default=0.5, gt=0, description="long-poll of one fetch")
    checkpoint_every: int = Field(
        default=1000, ge=1, description="publish a checkpoint after this many new messages"
    )
    checkpoint_interval: float = Field(
        default=2.0, ge=0, description="and, once caught up, at most this often"
    )

    # Active/standby on PostgreSQL (views/lease.py): replicas share the service id and
    # the seed, one of them projects and signs; the others take over when it is gone.
    lease_timeout: float = Field(
        default=10.0,
        ge=1,
        description="the database ends a silent active's lease after this many seconds",
    )
    standby_poll: float = Field(
        default=0.5,
        gt=0,
        description="how often a standby tries for the lease (well under lease_timeout)",
    )

    def database_url(self, data_dir: Path) -> str:
        return self.dsn or f"sqlite:///{(data_dir / 'eventstore.db').resolve()}"
