"""JSON Schema for every event type: what other systems code against.

The files under contracts/schema/ are generated from the Structs and committed; a test
fails when they are stale. Regenerate with `python -m contracts.schema_export`.
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path
from typing import Any

import msgspec

from contracts.catalog import CATALOG, EventCatalog
from contracts.ingress import (
    CaseEventRequest,
    CaseStatusReply,
    CaseStatusRequest,
    ClaimData,
    IngressReply,
    OpenCaseRequest,
    PoliceReport,
)

SCHEMA_DIR = Path(__file__).parent / "schema"


def event_schemas(catalog: EventCatalog = CATALOG) -> dict[str, dict[str, Any]]:
    """File name -> schema document, one per event type."""
    documents: dict[str, dict[str, Any]] = {}
    for name in catalog.names():
        schema = msgspec.json.schema(catalog.type_of(name))
        schema = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"urn:agent-mesh:event:{name}:v{catalog.current_version(name)}",
            "title": name,
            **schema,
        }
        documents[f"{name}.json"] = schema
    # What other systems send to open a case (not events: requests to the ingress).
    for title, struct in (
        ("ingress_open_case_request", OpenCaseRequest),
        ("ingress_claim_data", ClaimData),
        ("ingress_reply", IngressReply),
        ("ingress_case_status_request", CaseStatusRequest),
        ("ingress_case_status_reply", CaseStatusReply),
        ("ingress_case_event_request", CaseEventRequest),
        ("ingress_police_report", PoliceReport),
    ):
        documents[f"{title}.json"] = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"urn:agent-mesh:ingress:{title}",
            "title": title,
            **msgspec.json.schema(struct),
        }
    return documents


def _normalised(node: Any) -> Any:
    """Descriptions as `inspect.cleandoc` leaves them, whatever msgspec's version does
    to docstring indentation, so the committed files change only when a contract does."""
    if isinstance(node, dict):
        return {
            key: inspect.cleandoc(value)
            if key == "description" and isinstance(value, str)
            else _normalised(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_normalised(item) for item in node]
    return node


def render(document: dict[str, Any]) -> str:
    return json.dumps(_normalised(document), indent=2, sort_keys=True) + "\n"


def stale_files(directory: Path = SCHEMA_DIR) -> list[str]:
    """Names of schema files that are missing, different or no longer generated."""
    expected = {name: render(doc) for name, doc in event_schemas().items()}
    present = {p.name for p in directory.glob("*.json")}
    problems = [
        name
        for name, text in expected.items()
        if not (directory / name).exists() or (directory / name).read_text() != text
    ]
    problems += sorted(present - set(expected))
    return sorted(problems)


def write(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    expected = event_schemas()
    for old in directory.glob("*.json"):
        if old.name not in expected:
            old.unlink()
    written = []
    for name, document in expected.items():
        path = directory / name
        path.write_text(render(document))
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write():
        sys.stdout.write(f"wrote {path}\n")
