"""Ingress settings (`MESH_INGRESS_*`), beside the shared `MESH_*` ones."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class IngressSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MESH_INGRESS_", extra="ignore")

    service_id: str = Field(default="ingress", description="actor of case_opened events")
    seed_file: Path | None = Field(default=None, description="the ingress's nkey seed")
    http_host: str = Field(default="127.0.0.1")
    http_port: int | None = Field(
        default=None, ge=0, le=65535, description="serve HTTP on this port (unset: no HTTP)"
    )
    http_tokens: dict[str, SecretStr] = Field(
        default_factory=dict,
        description='JSON {"<source>": "<bearer token>"}: who may POST, as which source',
    )
