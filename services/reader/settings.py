"""Case reader settings (`MESH_READER_*`), beside the shared `MESH_*` ones."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ReaderSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MESH_READER_", extra="ignore")

    service_id: str = Field(default="reader", description="the reader's principal id")
    seed_file: Path | None = Field(default=None, description="the reader's nkey seed")
