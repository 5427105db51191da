"""schemas/ is generated from the pydantic models and every example satisfies it."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from app.events import parse_envelope
from app.schema_export import render

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "schemas" / "examples").glob("*.json"))
EVENTS = (
    "contact_created",
    "contact_updated",
    "conversation_created",
    "conversation_updated",
    "conversation_status_changed",
    "message_created",
    "message_updated",
    "hook_configured",
    "hook_removed",
)


def test_schemas_are_up_to_date() -> None:
    for name, content in render().items():
        path = ROOT / "schemas" / "chatwoot" / name
        assert path.exists(), f"{name} missing: run `make schemas`"
        assert path.read_bytes() == content, f"{name} is stale: run `make schemas`"


def test_there_is_an_example_for_every_event() -> None:
    events = {json.loads(p.read_text())["event"] for p in EXAMPLES}
    assert events >= set(EVENTS)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_examples_validate_against_the_schema_and_parse(path: Path) -> None:
    schema = json.loads((ROOT / "schemas" / "chatwoot" / "envelope.schema.json").read_text())
    document = json.loads(path.read_text())
    jsonschema.validate(document, schema)
    assert parse_envelope(path.read_bytes()).event == document["event"]
