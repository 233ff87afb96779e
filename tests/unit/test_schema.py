"""The committed JSON Schema is what other systems code against: it must be current,
and an event this code encodes must validate against it."""

from __future__ import annotations

import json

import jsonschema
import pytest

from contracts import CATALOG, encode
from contracts.schema_export import SCHEMA_DIR, stale_files
from tests.unit.samples import sample_event


def test_committed_schemas_are_current() -> None:
    stale = stale_files()
    assert not stale, f"stale JSON Schema {stale}: run `make schema` and commit"


@pytest.mark.parametrize("name", CATALOG.names())
def test_encoded_events_validate_against_the_committed_schema(name: str) -> None:
    schema = json.loads((SCHEMA_DIR / f"{name}.json").read_text())
    body = json.loads(encode(sample_event(CATALOG.type_of(name))))
    jsonschema.validate(body, schema)


def test_the_schema_rejects_what_the_decoder_rejects() -> None:
    schema = json.loads((SCHEMA_DIR / "case_opened.json").read_text())
    body = json.loads(encode(sample_event(CATALOG.type_of("case_opened"))))
    del body["payload"]["kind"]
    with pytest.raises(jsonschema.ValidationError, match="'kind' is a required property"):
        jsonschema.validate(body, schema)
