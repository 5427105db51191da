"""Chatwoot's side on its own: webhook signatures, the envelope a delivery becomes, secrets, backfill plans, and
the API client against the Chatwoot emulator (a real HTTP server, in process)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from aiohttp.test_utils import TestServer

from app.backfill.plan import conversation_envelopes
from app.chatwoot.api import ChatwootClient, ChatwootNotFoundError, ChatwootRefusedError
from app.chatwoot.webhooks import MAX_SKEW_SECONDS, account_of, envelope_for, sign, verify
from app.events import ConversationEvent, MessageEvent, parse_envelope
from app.ingress.secrets import WebhookSecrets
from tests.chatwoot_emulator import Chatwoot, build_app

NOW = 1_790_000_000.0
BODY = b'{"event":"message_created","id":1,"account":{"id":7}}'


def test_a_signature_made_the_way_chatwoot_makes_it_verifies() -> None:
    timestamp = str(int(NOW))
    signature = sign("s3cret", timestamp, BODY)
    assert signature.startswith("sha256=") and len(signature) == 7 + 64
    assert verify(["s3cret"], signature, timestamp, BODY, NOW).refusal is None
    assert verify(["old", "s3cret"], signature, timestamp, BODY, NOW).refusal is None  # during a rotation


@pytest.mark.parametrize(
    ("secrets", "signature", "timestamp", "body", "refusal"),
    [
        (["s3cret"], None, str(int(NOW)), BODY, "missing_signature"),
        (["s3cret"], "sha256=" + "0" * 64, str(int(NOW)), BODY, "bad_signature"),
        (["other"], "SIGN", str(int(NOW)), BODY, "bad_signature"),
        (["s3cret"], "SIGN", str(int(NOW)), BODY + b" ", "bad_signature"),
        (["s3cret"], "SIGN", None, BODY, "missing_timestamp"),
        (["s3cret"], "SIGN", "yesterday", BODY, "missing_timestamp"),
        (["s3cret"], "SIGN", str(int(NOW - MAX_SKEW_SECONDS - 1)), BODY, "stale_timestamp"),
        (["s3cret"], "SIGN", str(int(NOW + MAX_SKEW_SECONDS + 1)), BODY, "stale_timestamp"),
    ],
)
def test_deliveries_that_are_not_authentic_are_refused_with_the_reason(
    secrets: list[str], signature: str | None, timestamp: str | None, body: bytes, refusal: str
) -> None:
    if signature == "SIGN":
        signature = sign("s3cret", timestamp or "0", BODY)
    assert verify(secrets, signature, timestamp, body, NOW).refusal == refusal


def test_the_envelope_carries_the_body_byte_for_byte_and_the_delivery_id() -> None:
    raw = b'{"event": "message_created", "id": 4412, "content": "caf\\u00e9 \xc3\xa9", "account": {"id": 7},'
    raw += b' "message_type": "incoming", "conversation": {"id": 57}}'
    value = envelope_for(7, orjson.loads(raw), raw, "d-1", str(int(NOW)))
    assert value.endswith(b'"payload":' + raw + b"}")
    envelope = orjson.loads(value)
    assert (envelope["hook_id"], envelope["account_id"], envelope["event_id"]) == (7, 7, "d-1")
    assert envelope["occurred_at"].startswith("2026-09-21")
    parsed = parse_envelope(value)
    assert isinstance(parsed, MessageEvent) and parsed.payload.id == 4412


def test_a_conversation_body_has_no_account_and_the_envelope_leaves_it_to_the_hook() -> None:
    body = {"event": "conversation_created", "id": 57, "messages": [], "meta": {}}
    assert account_of(body) is None
    parsed = parse_envelope(envelope_for(7, body, orjson.dumps(body), None, None))
    assert isinstance(parsed, ConversationEvent) and parsed.account_id is None and parsed.event_id is None
    assert account_of({"messages": [{"account_id": 9}]}) == 9
    assert account_of({"account": {"id": True}}) is None


def test_secrets_come_from_the_environment_or_files_and_bad_names_are_refused(tmp_path: Path) -> None:
    (tmp_path / "8").write_text("new-secret\nold-secret\n")
    (tmp_path / "9.url-token").write_text("t" * 40)
    secrets = WebhookSecrets({"GLPI_SYNC_WEBHOOK_SECRET_7": "env-secret"}, tmp_path)
    assert secrets.secrets_for(7) == ["env-secret"]
    assert secrets.secrets_for(8) == ["new-secret", "old-secret"]
    assert secrets.secrets_for(9) == [] and secrets.url_token_for(9) == "t" * 40
    assert secrets.url_token_for(7) is None
    bad = WebhookSecrets({"GLPI_SYNC_WEBHOOK_SECRET_x": "a", "GLPI_SYNC_WEBHOOK_URL_TOKEN_3": "short"}, None)
    problems = bad.problems()
    assert len(problems) == 2 and "end in the hook id" in problems[0] and "at least 32" in problems[1]


def test_a_backfilled_conversation_becomes_the_envelopes_its_webhooks_would_have_made() -> None:
    chatwoot = Chatwoot("t")
    contact = chatwoot.add_contact("Marta", "marta@example.org", None)
    conversation = chatwoot.add_conversation(contact, status="resolved")
    first = chatwoot.add_message(conversation["id"], "hello")
    chatwoot.add_message(conversation["id"], "joined", "activity")
    second = chatwoot.add_message(conversation["id"], "answer", "outgoing")
    api_conversation = chatwoot.api_conversation(conversation["id"])
    messages = [chatwoot.api_message(conversation["id"], m) for m in chatwoot.messages[conversation["id"]]]
    envelopes = conversation_envelopes(7, 7, api_conversation, list(reversed(messages)), contact)
    assert [e["event"] for e in envelopes] == [
        "contact_created",
        "conversation_created",
        "message_created",
        "message_created",
        "conversation_status_changed",
    ]
    ids = [e["event_id"] for e in envelopes]
    assert ids[2:4] == [f"backfill:message:{first['id']}", f"backfill:message:{second['id']}"]
    parsed = [parse_envelope(orjson.dumps(e)) for e in envelopes]
    assert [type(p).__name__ for p in parsed] == [
        "ContactEvent",
        "ConversationEvent",
        "MessageEvent",
        "MessageEvent",
        "ConversationEvent",
    ]
    message = parsed[3]
    assert isinstance(message, MessageEvent) and message.payload.message_type == "outgoing"
    assert message.payload.conversation.id == conversation["id"]
    assert conversation_envelopes(7, 7, api_conversation, messages, contact) == envelopes  # stable: safe to rerun


async def test_the_api_client_pages_messages_and_honours_429(tmp_path: Path) -> None:
    chatwoot = Chatwoot("agent-token")
    contact = chatwoot.add_contact("A", "a@example.org", None)
    conversation = chatwoot.add_conversation(contact)
    for number in range(45):
        chatwoot.add_message(conversation["id"], f"m{number}")
    chatwoot.rate_limit, chatwoot.retry_after = 2, True
    async with TestServer(build_app(chatwoot)) as server:
        base = str(server.make_url("")).rstrip("/")
        async with ChatwootClient(base, 7, "agent-token", rate=0) as client:
            messages = await client.messages(conversation["id"])
            assert [m["content"] for m in messages] == [f"m{n}" for n in range(45)]  # oldest first, all pages
            assert client.throttled >= 1 and chatwoot.requests["429"] == client.throttled  # retried after each 429
            with pytest.raises(ChatwootNotFoundError):
                await client.conversation(999)
        async with ChatwootClient(base, 7, "wrong-token", rate=0) as client:
            with pytest.raises(ChatwootRefusedError, match="refused the access token") as refused:
                await client.conversations_page("open", 1)
            assert "wrong-token" not in str(refused.value)


def test_a_glpi_11_signature_is_the_hmac_of_the_body_then_the_timestamp() -> None:
    import hashlib
    import hmac

    from app.chatwoot.webhooks import verify_glpi

    body, stamp = b'{"event":"new"}', str(int(NOW) - 3000)
    good = hmac.new(b"s", body + stamp.encode(), hashlib.sha256).hexdigest()
    assert verify_glpi(["s"], good, stamp, body, NOW, max_age=3600).refusal is None
    assert verify_glpi(["s"], good.upper(), stamp, body, NOW, max_age=3600).refusal is None
    assert verify_glpi(["s"], good, stamp, body, NOW, max_age=60).refusal == "stale_timestamp"  # queued too long
    assert verify_glpi(["t"], good, stamp, body, NOW, max_age=3600).refusal == "bad_signature"
    swapped = hmac.new(b"s", stamp.encode() + body, hashlib.sha256).hexdigest()  # Chatwoot's order is not GLPI's
    assert verify_glpi(["s"], swapped, stamp, body, NOW, max_age=3600).refusal == "bad_signature"
    assert verify_glpi(["s"], None, stamp, body, NOW, max_age=3600).refusal == "missing_signature"


@pytest.mark.parametrize(
    ("content", "text"),
    [
        ("<p>R&amp;D says a &amp;lt; b</p>", "R&D says a &lt; b"),  # what the technician typed, decoded once
        ("<p>line one</p><p>line <b>two</b></p>", "line one\nline two"),
        ("Merci Zoë & Łukasz 👍\nline two", "Merci Zoë & Łukasz 👍\nline two"),  # plain text posted through the API
        ("&#60;p&#62;R&#38;amp;D&#60;/p&#62;", "R&D"),  # GLPI 10's storage encoding (the decode header was lost)
    ],
)
def test_a_technicians_text_reaches_the_customer_as_typed(content: str, text: str) -> None:
    from app.twoway.plan import change_events

    row = {"id": 5, "itemtype": "Ticket", "items_id": 100, "content": content, "users_id": 4}
    (event,) = change_events("glpi_followup_added", [row], {100: 57}, 7, 7)
    assert event["payload"]["content"] == text


def test_a_glpi_user_is_named_by_first_and_last_name_else_login() -> None:
    from app.twoway.plan import display_name

    assert display_name({"name": "tech", "firstname": "Ana", "realname": "Tech"}) == "Ana Tech"
    assert display_name({"name": "tech", "firstname": None, "realname": None}) == "tech"
    assert display_name({"name": "", "firstname": "", "realname": ""}) is None


def test_two_way_plans_keep_our_own_followups_and_unmapped_tickets_out() -> None:
    from app.twoway.plan import Cursor, action_for, change_events, newer_rows, status_events

    rows = [
        {"id": 12, "items_id": 100, "date_mod": "2026-12-02 10:00:05", "content": "<p>Reinstall</p>", "users_id": 4},
        {"id": 11, "items_id": 100, "date_mod": "2026-12-02 10:00:05", "content": "seen already"},
        {"id": 13, "items_id": 100, "date_mod": "2026-12-02 10:00:06", "content": "from chat [cw-msg:4412]"},
        {"id": 14, "items_id": 999, "date_mod": "2026-12-02 10:00:07", "content": "not our ticket"},
    ]
    fresh, cursor = newer_rows(rows, Cursor("2026-12-02 10:00:05", 11))  # same second: the id breaks the tie
    assert [r["id"] for r in fresh] == [12, 13, 14] and cursor == Cursor("2026-12-02 10:00:07", 14)
    events = change_events("glpi_followup_added", fresh, {100: 57}, 7, 7, {4: "Ana Tech"})
    assert [(e["event_id"], e["payload"]["content"]) for e in events] == [("glpi:ITILFollowup:12", "Reinstall")]
    assert events[0]["payload"]["author"] == "Ana Tech"
    # An expanded row (items_id as the ticket's name, users_id as a login) is never taken for a ticket of ours.
    expanded = {**rows[0], "id": 15, "items_id": "Chat #57: Marta Silva (web chat)", "users_id": "tech"}
    assert change_events("glpi_followup_added", [expanded], {100: 57}, 7, 7) == []
    tickets = [{"id": 100, "status": 5, "date_mod": "x"}, {"id": 101, "status": 2, "date_mod": "x"}]
    changed = status_events(tickets, {100: 57, 101: 58}, {100: "open", 101: "open"}, 7, 7)
    assert [(e["payload"]["conversation_id"], e["payload"]["status"]) for e in changed] == [(57, 5)]
    assert status_events(tickets, {100: 57}, {100: "resolved"}, 7, 7) == []  # already resolved: nothing to do
    private = {"itemtype": "ITILFollowup", "item_id": 3, "content": "x", "is_private": True, "author": "ana"}
    assert isinstance(
        action_for("glpi_followup_added", private, private_followups="skip", resolve_on_solution=True), str
    )
    note = action_for("glpi_followup_added", private, private_followups="note", resolve_on_solution=True)
    assert not isinstance(note, str) and note.private and note.content == "x\n\n— ana (GLPI)"
