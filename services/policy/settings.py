"""Policy service settings (`MESH_POLICY_*`), beside the shared `MESH_*` ones."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class PolicySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MESH_POLICY_", extra="ignore")

    service_id: str = Field(default="policy", description="actor of decision events")
    seed_file: Path | None = Field(default=None, description="the policy service's nkey seed")
    bundle_dir: Path = Field(default=Path("deploy/policies"), description="Cedar bundle")
