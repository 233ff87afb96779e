"""Ingress settings (`MESH_INGRESS_*`), beside the shared `MESH_*` ones."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

KIB = 1024
MIB = 1024 * KIB


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
    http_tokens_file: Path | None = Field(
        default=None,
        description='JSON {"<source>": "sha256:<hex of the token>"}, re-read on SIGHUP '
        "(what `mesh principals add|remove` writes)",
    )
    status_requests_per_second: float = Field(
        default=20.0,
        gt=0,
        description="status reads each source may make a second (bursts of twice that); "
        "more are answered `rate_limited` (HTTP 429)",
    )
    events_per_second: float = Field(
        default=20.0,
        gt=0,
        description="events each source may add to its cases a second (bursts of twice "
        "that); more are answered `rate_limited` (HTTP 429), and kept",
    )
    max_body_bytes: int = Field(
        default=64 * KIB,
        ge=KIB,
        # A refused body is kept whole below this size: it must fit the broker's
        # max_payload (1 MB) with its headers.
        le=512 * KIB,
        description="a larger request body is refused (HTTP 413) and kept truncated; "
        "the largest claim, every character escaped, is about 52 KiB",
    )
    max_depth: int = Field(
        default=32,
        ge=2,
        le=256,
        description="a body nesting deeper is refused before it is parsed (a claim nests 2)",
    )
    dead_letter_keep_bytes: int = Field(
        default=8 * KIB,
        ge=0,
        le=512 * KIB,
        description="of a body over max_body_bytes, the dead-letter stream keeps this many "
        "first bytes, with the full size and sha256 digest in headers",
    )
    http_drain_bytes: int = Field(
        default=32 * MIB,
        ge=0,
        description="an HTTP body over max_body_bytes is still read (hashed, never held) "
        "up to this many bytes, so that its size and digest are kept and the sender reads "
        "the 413; the connection of a longer one is cut",
    )
