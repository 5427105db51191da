"""Write-back's decisions (app/twoway/attributes.py), the settings that turn it on, and the client's calls against
the Chatwoot emulator's custom attribute endpoints (assign on conversations, merge on contacts, definitions)."""

from __future__ import annotations

from pathlib import Path

from aiohttp.test_utils import TestServer

from app.chatwoot.api import ChatwootClient, define_missing, missing_definitions
from app.events import HookSettings
from app.sync.hook_config import grant_problems, validate_hook_settings
from app.sync.state import HookPolicy
from app.twoway.attributes import (
    CONTACT_KEYS,
    CONVERSATION_KEYS,
    DEFINITIONS,
    contact_attributes,
    conversation_attributes,
    glpi_root,
    merged,
    technicians,
    ticket_changes,
)
from tests.chatwoot_emulator import Chatwoot, build_app

ROOT = "https://glpi.example.com"


def test_our_attributes_name_the_ticket_its_link_status_and_technicians() -> None:
    assert glpi_root("https://glpi.example.com/apirest.php") == ROOT
    assert glpi_root("https://glpi.example.com/api.php/v1") == ROOT
    assert conversation_attributes(ROOT, 42, 2, "Ana Tech") == {
        "glpi_ticket": 42,
        "glpi_ticket_url": f"{ROOT}/front/ticket.form.php?id=42",
        "glpi_ticket_status": "Processing (assigned)",
        "glpi_technician": "Ana Tech",
    }
    assert conversation_attributes(ROOT, 42, 9, None)["glpi_ticket_status"] == "status 9"
    assert conversation_attributes(ROOT, 42, 1, None)["glpi_technician"] == ""
    assert contact_attributes(ROOT, "User", 7, "Marta") == {
        "glpi_requester": "Marta (User 7)",
        "glpi_requester_url": f"{ROOT}/front/user.form.php?id=7",
    }
    assert contact_attributes(ROOT, "Contact", 3, None)["glpi_requester_url"].endswith("/contact.form.php?id=3")
    assert set(CONVERSATION_KEYS) | set(CONTACT_KEYS) == {key for key, *_ in DEFINITIONS}
    assert all(key.startswith("glpi_") for key, *_ in DEFINITIONS)


def test_only_assigned_technicians_are_named_once_each() -> None:
    rows = [
        {"users_id": 5, "type": 1},  # the requester
        {"users_id": 8, "type": 2},
        {"users_id": 9, "type": 2},
        {"users_id": 8, "type": 2},
        {"users_id": 0, "type": 2, "alternative_email": "x@example.org"},
        {"users_id": True, "type": 2},
        {"users_id": 11, "type": 3},  # an observer
    ]
    assert technicians(rows, {8: "Ana Tech"}) == "Ana Tech, user 9"
    assert technicians([{"users_id": 5, "type": 1}], {}) is None


def test_merging_keeps_the_operators_attributes_and_says_when_nothing_changes() -> None:
    ours = conversation_attributes(ROOT, 42, 1, None)
    theirs = {"order_id": "A-17", "glpi_ticket": 41}
    assert merged(theirs, ours) == {**ours, "order_id": "A-17"}
    assert merged({**ours, "order_id": "A-17"}, ours) is None  # a repeat, or Chatwoot's echo of our write
    assert merged(None, ours) == ours
    assert merged(["not", "an", "object"], ours) == ours


def test_the_poll_queues_a_ticket_only_when_its_status_or_technicians_differ_from_what_was_written() -> None:
    rows = [
        {"id": 10, "status": 2, "date_mod": "2026-12-03 10:00:00"},
        {"id": 11, "status": 1, "date_mod": "2026-12-03 10:00:01"},
        {"id": 12, "status": 5, "date_mod": "2026-12-03 10:00:02"},
        {"id": 13, "status": 1, "date_mod": "2026-12-03 10:00:03"},  # not ours
        {"id": 14, "status": 1, "date_mod": "2026-12-03 10:00:04"},  # ours, actors not read
    ]
    conversations = {10: 100, 11: 101, 12: 102, 14: 104}
    written = {
        10: {"ticket_id": 10, "status": 2, "technician": "Ana"},  # unchanged
        11: None,  # never written
        12: {"ticket_id": 12, "status": 2, "technician": "Ana"},  # solved since
    }
    technician_of = {10: "Ana", 11: None, 12: "Ana"}
    events = ticket_changes(rows, conversations, written, technician_of, hook_id=7, account_id=3)
    assert [(e["payload"]["ticket_id"], e["payload"]["conversation_id"]) for e in events] == [(11, 101), (12, 102)]
    assert events[1]["event"] == "glpi_ticket_changed" and events[1]["payload"]["status"] == 5
    assert events[1]["event_id"] == "glpi:Ticket:12:attributes:2026-12-03 10:00:02"
    assert events[0]["hook_id"] == 7 and events[0]["account_id"] == 3
    # The technician changed while the status did not.
    again = ticket_changes(rows[:1], conversations, written, {10: "Bruno"}, hook_id=7, account_id=3)
    assert [e["payload"]["technician"] for e in again] == ["Bruno"]


def test_a_chatwoot_connection_turns_write_back_on_and_must_be_whole_and_granted() -> None:
    base = {"api_url": "https://glpi.example.com/apirest.php", "user_token": {"env": "GLPI_SYNC_HOOK_SECRET_U"}}
    assert not HookSettings.model_validate(base).writes_back
    connected = HookSettings.model_validate(
        {**base, "chatwoot_url": "https://chat.example.com", "chatwoot_token": {"env": "GLPI_SYNC_HOOK_SECRET_CW"}}
    )
    assert connected.writes_back and not connected.two_way
    assert not connected.model_copy(update={"write_back": False}).writes_back  # hook set --no-write-back
    assert validate_hook_settings(connected, allow_http=False)[1] == []
    half = HookSettings.model_validate({**base, "chatwoot_url": "https://chat.example.com"})
    assert not half.writes_back
    assert validate_hook_settings(half, allow_http=False)[1] == [
        "a Chatwoot connection (write-back) needs chatwoot_token, an agent's or agent bot's api_access_token reference"
    ]
    plain = connected.model_copy(update={"chatwoot_url": "http://chat.example.com"})
    assert "chatwoot_url uses plain http" in validate_hook_settings(plain, allow_http=False)[1][0]
    # The Chatwoot token goes only to a Chatwoot host the operators allow.
    policy = HookPolicy(allowed_chatwoot_hosts=frozenset({"chat.example.com"}))
    assert grant_problems(connected, policy) == []
    elsewhere = connected.model_copy(update={"chatwoot_url": "https://collector.example.net"})
    assert grant_problems(elsewhere, policy) == [
        "chatwoot_url host 'collector.example.net' is not one of GLPI_SYNC_ALLOWED_CHATWOOT_HOSTS (chat.example.com)"
    ]


async def test_conversation_attributes_are_assigned_contact_attributes_merged_definitions_made_once() -> None:
    chatwoot = Chatwoot("agent-token")
    contact = chatwoot.add_contact("Marta", "marta@example.org", None)
    contact["custom_attributes"] = {"plan": "gold"}
    conversation = chatwoot.add_conversation(contact)
    conversation["custom_attributes"] = {"order_id": "A-17"}
    chatwoot.definitions.append(
        {"attribute_key": "order_id", "attribute_model": "conversation_attribute", "attribute_display_type": "text"}
    )
    async with TestServer(build_app(chatwoot)) as server:
        base = str(server.make_url("")).rstrip("/")
        async with ChatwootClient(base, chatwoot.account["id"], "agent-token", rate=0) as client:
            shown = await client.conversation(conversation["id"])
            assert shown["custom_attributes"] == {"order_id": "A-17"}
            assert shown["meta"]["sender"]["custom_attributes"] == {"plan": "gold"}
            ours = conversation_attributes(ROOT, 42, 1, None)
            await client.set_conversation_attributes(conversation["id"], ours)
            assert conversation["custom_attributes"] == ours  # assigned: what is not sent is gone
            await client.set_conversation_attributes(conversation["id"], {**ours, "order_id": "A-17"})
            await client.update_contact_attributes(contact["id"], contact_attributes(ROOT, "User", 7, "Marta"))
            assert contact["custom_attributes"]["plan"] == "gold"  # merged
            assert contact["custom_attributes"]["glpi_requester"] == "Marta (User 7)"

            assert await define_missing(client, DEFINITIONS) == [key for key, *_ in DEFINITIONS]
            assert await missing_definitions(client, DEFINITIONS) == []
            assert await define_missing(client, DEFINITIONS) == []  # a second hook set defines nothing twice
    assert len(chatwoot.definitions) == len(DEFINITIONS) + 1
    assert [d["attribute_key"] for d in chatwoot.definitions].count("order_id") == 1
    events = [d["event"] for d in chatwoot.deliveries]
    assert events.count("conversation_updated") == 2 and events.count("contact_updated") == 1


def test_the_dashboard_shows_public_followups_both_ways_and_never_a_private_one() -> None:
    from app.dashboard.shape import requester_view, sync_view, ticket_view, timeline

    ours = {
        "id": 1,
        "date": "2026-12-03 10:00:00",
        "users_id": 2,
        "is_private": 0,
        "content": "<p><strong>Marta Keller</strong> · 2026-12-03 10:00:00</p><p>VPN &amp; Wi-Fi down</p>"
        "<p>[cw-msg:4000]</p>",
    }
    theirs = {"id": 2, "date": "2026-12-03 10:05:00", "users_id": 8, "is_private": 0, "content": "<p>Update it</p>"}
    note = {"id": 3, "date": "2026-12-03 10:06:00", "users_id": 8, "is_private": 1, "content": "<p>internal</p>"}
    solution = {"id": 9, "date": "2026-12-03 10:09:00", "users_id": 8, "content": "<p>Fixed</p>"}
    names = {8: "Ana Tech", 5: "Marta Keller"}
    shown = timeline([note, theirs, ours], [solution], names)
    assert [(e["from"], e["author"], e["text"], e["kind"]) for e in shown] == [
        ("chatwoot", "Marta Keller", "VPN & Wi-Fi down", "followup"),
        ("glpi", "Ana Tech", "Update it", "followup"),
        ("glpi", "Ana Tech", "Fixed", "solution"),
    ]
    actors = [{"users_id": 5, "type": 1}, {"users_id": 8, "type": 2}]
    ticket = ticket_view({"id": 42, "name": "Chat #1", "status": 4, "priority": 5}, actors, names, ROOT)
    assert ticket == {
        "id": 42,
        "title": "Chat #1",
        "status": "Pending",
        "priority": "Very high",
        "technician": "Ana Tech",
        "deleted": False,
        "url": f"{ROOT}/front/ticket.form.php?id=42",
    }
    assert requester_view(actors, names, ROOT) == {"name": "Marta Keller", "url": f"{ROOT}/front/user.form.php?id=5"}
    assert requester_view([{"users_id": 0, "type": 1, "alternative_email": "a@b.c"}], names, ROOT) is None
    history = [
        {"at": "t1", "event": "message_created", "outcome": "synced", "reason": "ok"},
        {"at": "t2", "event": "message_created", "outcome": "dead_lettered", "reason": "GLPI refused it"},
    ]
    assert sync_view({"last_synced_message_id": 7, "history": history}, "running", 0) == {
        "last_synced_message_id": 7,
        "hook": "running",
        "parked_on_hook": 0,
        "problems": [{"at": "t2", "event": "message_created", "outcome": "dead_lettered", "reason": "GLPI refused it"}],
    }


def test_dashboard_keys_are_long_rotatable_and_named_by_hook(tmp_path: Path) -> None:
    from app.ingress.secrets import WebhookSecrets

    long_a, long_b = "a" * 32, "b" * 40
    secrets = WebhookSecrets({"GLPI_SYNC_DASHBOARD_KEY_7": f"{long_a},{long_b}"}, tmp_path)
    assert secrets.dashboard_keys_for(7) == [long_a, long_b]
    (tmp_path / "9.dashboard").write_text("short\n" + long_b + "\n")
    assert secrets.dashboard_keys_for(9) == [long_b]  # a short key never opens anything
    assert secrets.dashboard_keys_for(8) == []
    bad = WebhookSecrets({"GLPI_SYNC_DASHBOARD_KEY_7": "short", "GLPI_SYNC_DASHBOARD_KEY_X": long_a}, tmp_path)
    problems = bad.problems()
    assert any("GLPI_SYNC_DASHBOARD_KEY_7: a dashboard key needs at least 32" in p for p in problems)
    assert any("GLPI_SYNC_DASHBOARD_KEY_X: the name must end in the hook id" in p for p in problems)


def test_a_ticket_row_names_its_conversation_by_the_marker_of_its_account_only() -> None:
    from app.twoway.attributes import conversation_of_ticket

    row = {"id": 5, "content": "<p>Hi</p><p>Chatwoot reference: [cw:7/341]</p>"}
    assert conversation_of_ticket(row, 7) == 341
    assert conversation_of_ticket(row, 8) is None  # another account's ticket
    assert conversation_of_ticket({"id": 6, "content": "typed by hand: [cw:x/1]"}, 7) is None
    assert conversation_of_ticket({"id": 6}, 7) is None
