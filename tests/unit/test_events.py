"""The envelope parser: valid payloads become typed events; anything else a clear InvalidEnvelopeError."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.events import (
    ContactEvent,
    ConversationEvent,
    HookConfigured,
    InvalidEnvelopeError,
    MessageEvent,
    UnknownEvent,
    parse_envelope,
)
from app.sync.decide import decide
from app.sync.state import SyncContext, SyncView
from tests.conftest import envelope, hook_envelope, load_example
from tests.unit.test_decide import hook


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("contact_created", ContactEvent),
        ("contact_updated", ContactEvent),
        ("conversation_created", ConversationEvent),
        ("conversation_updated", ConversationEvent),
        ("conversation_status_changed", ConversationEvent),
        ("message_created", MessageEvent),
    ],
)
def test_every_example_parses(name: str, cls: type) -> None:
    body = load_example(name)
    parsed = parse_envelope(orjson.dumps(envelope(body["event"], body)))
    assert isinstance(parsed, cls)


def test_times_are_aware_utc() -> None:
    msg = parse_envelope(orjson.dumps(envelope("message_created", load_example("message_created"))))
    assert isinstance(msg, MessageEvent)
    assert msg.payload.created_at is not None
    assert msg.payload.created_at.utcoffset() is not None
    assert msg.payload.conversation.created_at is not None
    assert msg.payload.conversation.created_at.timestamp() == 1762178502


def test_hook_settings_accept_strings_and_token_references() -> None:
    raw = hook_envelope(
        "https://g.example/apirest.php",
        user_token={"env": "GLPI_USER"},
        app_token={"file": "/s/app"},
        category_id="",
        ticket_type="2",
    )
    parsed = parse_envelope(orjson.dumps(raw))
    assert isinstance(parsed, HookConfigured)
    settings = parsed.payload.settings
    assert settings.ticket_type == 2
    assert settings.category_id is None
    assert settings.entity_id == 0
    assert "GLPI_USER" not in repr(settings)
    assert "emulator" not in repr(settings)


def test_unknown_event_is_not_an_error() -> None:
    assert isinstance(parse_envelope(orjson.dumps(envelope("conversation_typing_on", {}))), UnknownEvent)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "not UTF-8 JSON"),
        (b"\xff\xfe", "not UTF-8 JSON"),
        (b"[1,2]", "must be a JSON object"),
        (b'{"payload": {}}', "no 'event' name"),
        (orjson.dumps({"event": "message_created", "payload": {}}), "hook_id"),
        (orjson.dumps(envelope("message_created", {"id": "x"})), "payload"),
        (b"{" + b" " * 1_000_001 + b"}", "exceeds"),
    ],
)
def test_invalid_records_say_why(raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidEnvelopeError, match=reason):
        parse_envelope(raw)


def test_validation_errors_never_echo_token_values() -> None:
    raw = hook_envelope("https://g.example/apirest.php", user_token="s3cr3t-token-value", ticket_type="9")
    with pytest.raises(InvalidEnvelopeError) as caught:
        parse_envelope(orjson.dumps(raw))
    assert "s3cr3t" not in caught.value.reason


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_crash_the_parser(raw: bytes) -> None:
    reason = "parsed"
    try:
        parse_envelope(raw)
    except InvalidEnvelopeError as exc:
        reason = exc.reason
    assert reason


def _mutations() -> st.SearchStrategy[Any]:
    scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=30), st.floats(allow_nan=False))
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
        max_leaves=8,
    )


EXAMPLES = [
    "contact_updated",
    "conversation_created",
    "conversation_updated",
    "message_created",
    "message_created_private_note",
    "conversation_status_changed",
]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(EXAMPLES), st.lists(st.tuples(st.text(max_size=20), _mutations()), max_size=4), st.data())
def test_mutated_payloads_parse_or_fail_cleanly_and_decide_never_crashes(
    name: str, mutations: list[tuple[str, Any]], data: st.DataObject
) -> None:
    body = load_example(name)
    targets = [body, body.get("conversation") or body, (body.get("meta") or {}).get("sender") or body]
    for key, value in mutations:
        target = data.draw(st.sampled_from(targets))
        field = data.draw(st.sampled_from([key, *list(target)[:20]]))
        target[field] = value
    try:
        parsed = parse_envelope(orjson.dumps(envelope(body.get("event", name), body)))
    except (InvalidEnvelopeError, orjson.JSONEncodeError):
        return
    view = SyncView(hook=hook())
    step = decide(view, parsed, SyncContext())  # must not raise
    assert step is not None
