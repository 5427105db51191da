"""The sync rules, one table row per rule: pure decide/record, no loop, no network."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from app.events import HookSettings, KnownEvent, parse_envelope
from app.files.policy import FilePolicy
from app.sync.commands import (
    AddRequester,
    Applied,
    CheckTicket,
    Command,
    CreateFollowup,
    CreateTicket,
    EnsureContact,
    EnsureUser,
    EnsureUserEmail,
    Finished,
    Resolved,
    TicketState,
    UpdateItem,
)
from app.sync.decide import decide, record_ids
from app.sync.hook_config import apply_hook_event, validate_hook_settings
from app.sync.record import record, with_intent
from app.sync.state import (
    ContactRecord,
    ConversationRecord,
    HookRecord,
    Intent,
    MessageRecord,
    SyncContext,
    SyncView,
)
from tests.conftest import envelope, load_example

#: Files are tested in test_files.py; here attachments stay links, as the rules below are about the rest.
CTX = SyncContext(chatwoot_base_url="https://chat.northwind.example", allow_http=True, files=FilePolicy(enabled=False))


def hook(**settings: Any) -> HookRecord:
    status = settings.pop("status", "enabled")
    features = settings.pop("features", ("crm_integration",))
    return HookRecord(
        hook_id=7,
        account_id=7,
        status=status,
        account_features=features,
        settings=HookSettings(api_url="https://glpi.example/apirest.php", user_token="u", **settings),
    )


def event(event_name: str, example: str | None = None, **overrides: Any) -> KnownEvent:
    import orjson

    payload = load_example(example or event_name, **overrides)
    parsed = parse_envelope(orjson.dumps(envelope(event_name, payload)))
    assert not hasattr(parsed, "extra")
    return parsed  # type: ignore[return-value]


MARTA = ContactRecord(
    account_id=7,
    contact_id=318,
    glpi_itemtype="User",
    glpi_id=42,
    name="Marta Silva",
    phone="+351912000111",
    emails=("marta.silva@example.org",),
)
TICKET = ConversationRecord(
    account_id=7,
    conversation_id=57,
    ticket_id=1234,
    body_message_id=4410,
    last_synced_message_id=4410,
    status="open",
)


def run(
    view: SyncView, ev: KnownEvent, results: list[Any], ctx: SyncContext = CTX
) -> tuple[list[Command], Finished, SyncView]:
    """Drive decide/record like the shell does, feeding ``results`` as GLPI outcomes."""
    commands: list[Command] = []
    outcomes = iter(results)
    for _ in range(12):
        step = decide(view, ev, ctx)
        if isinstance(step, Finished):
            return commands, step, view
        commands.append(step)
        view = with_intent(view, step, ctx.now)
        view = record(view, step, next(outcomes), ctx.now)
    raise AssertionError("did not finish")


# --------------------------------------------------------------------------------------------------- contacts


def test_anonymous_visitor_is_not_identifiable() -> None:
    step = decide(SyncView(hook=hook()), event("contact_created"), CTX)
    assert step == Finished("skipped", "contact not identifiable (no name, email or phone)")


def test_identified_contact_becomes_a_user_found_by_email_then_phone() -> None:
    step = decide(SyncView(hook=hook()), event("contact_updated"), CTX)
    assert isinstance(step, EnsureUser)
    assert [lookup.describe for lookup in step.lookups] == ["email", "phone"]
    assert [(c.field, c.searchtype, c.value) for c in step.lookups[0].criteria] == [
        (5, "contains", "^marta.silva@example.org$")
    ]
    assert [c.field for c in step.lookups[1].criteria] == [6, 11]
    assert step.input == {
        "name": "marta.silva@example.org",
        "firstname": "Marta",
        "realname": "Silva",
        "is_active": 1,
        "entities_id": 0,
        "phone": "+351912000111",
        "_useremails": ["marta.silva@example.org"],
    }


@pytest.mark.parametrize(
    ("overrides", "login", "first", "last"),
    [
        ({"email": None}, "351912000111", "Marta", "Silva"),  # GLPI refuses a login starting with +
        ({"email": None, "phone_number": None}, "chatwoot-7-318", "Marta", "Silva"),
        ({"name": "Cher"}, "marta.silva@example.org", "", "Cher"),
        ({"name": "Ana Maria de Souza"}, "marta.silva@example.org", "Ana", "Maria de Souza"),
    ],
)
def test_user_login_and_name_split(overrides: dict[str, Any], login: str, first: str, last: str) -> None:
    step = decide(SyncView(hook=hook()), event("contact_updated", **overrides), CTX)
    assert isinstance(step, EnsureUser)
    assert (step.login, step.input["firstname"], step.input["realname"]) == (login, first, last)


def test_contact_update_that_only_touches_activity_is_noise() -> None:
    ev = event(
        "contact_updated",
        changed_attributes=[
            {"last_activity_at": {"previous_value": None, "current_value": "2025-11-03T14:03:12Z"}},
            {"updated_at": {"previous_value": None, "current_value": "2025-11-03T14:03:12Z"}},
        ],
    )
    assert decide(SyncView(hook=hook(), contact=MARTA), ev, CTX) == Finished(
        "skipped", "noise: only last_activity_at, updated_at changed"
    )


def test_contact_update_changes_names_then_adds_the_new_email_once() -> None:
    ev = event("contact_updated", name="Marta Silva Costa", email="marta@work.example")
    commands, finished, view = run(SyncView(hook=hook(), contact=MARTA), ev, [Applied(), Applied()])
    assert commands == [
        UpdateItem("User", 42, {"firstname": "Marta", "realname": "Silva Costa"}, snapshot=commands[0].snapshot),  # type: ignore[union-attr]
        EnsureUserEmail(42, "marta@work.example", commands[1].snapshot),  # type: ignore[union-attr]
    ]
    assert finished.reason == "GLPI already holds this contact"
    assert view.contact is not None
    assert view.contact.emails == (
        "marta.silva@example.org",
        "marta@work.example",
    )
    # Replaying the same update makes no call.
    assert run(view, ev, [])[0] == []


def test_contact_mode_creates_a_glpi_contact_with_last_name_as_name() -> None:
    step = decide(SyncView(hook=hook(sync_type="contact")), event("contact_updated"), CTX)
    assert isinstance(step, EnsureContact)
    assert step.input == {
        "name": "Silva",
        "firstname": "Marta",
        "entities_id": 0,
        "email": "marta.silva@example.org",
        "phone": "+351912000111",
        "comment": "Chatwoot contact [cw-contact:7/318]",  # found exactly after a lost create
    }
    assert [c.field for lookup in step.lookups for c in lookup.criteria] == [6, 3]
    assert [c.value for lookup in step.fallbacks for c in lookup.criteria] == ["[cw-contact:7/318]"]


def test_found_user_is_adopted_and_missing_email_added() -> None:
    ev = event("contact_updated")
    commands, _, view = run(SyncView(hook=hook()), ev, [Resolved(99, created=False), Applied()])
    assert [type(c) for c in commands] == [EnsureUser, EnsureUserEmail]
    assert view.contact is not None
    assert view.contact.glpi_id == 99


def test_pending_user_intent_makes_the_retry_look_first() -> None:
    pending = ContactRecord(
        account_id=7, contact_id=318, pending=Intent(op="ensure_user", marker="marta.silva@example.org")
    )
    step = decide(SyncView(hook=hook(), contact=pending), event("contact_updated"), CTX)
    assert isinstance(step, EnsureUser)
    assert step.lookup_first
    assert [lk.describe for lk in step.lookups] == ["email", "phone"]


# --------------------------------------------------------------------------------------------------- tickets


def test_conversation_creates_user_then_ticket_with_requester_and_summary() -> None:
    ev = event("conversation_created")
    commands, finished, view = run(
        SyncView(hook=hook(category_id="12")), ev, [Resolved(42), Resolved(1234), Resolved(9001)]
    )
    ensure, ticket, carried = commands
    assert isinstance(ensure, EnsureUser)
    assert isinstance(ticket, CreateTicket)
    # The message conversation_created carries is a followup like any other (its own event then finds it synced).
    assert isinstance(carried, CreateFollowup) and carried.message_id == 4410
    assert (
        carried.input["date"] == "2025-11-03 14:01:42" and "VPN client keeps disconnecting" in carried.input["content"]
    )
    assert ticket.marker == "[cw:7/57]"
    assert not ticket.lookup_first
    fields = ticket.input
    assert fields["name"] == "Chat #57: Marta Silva (web chat)"
    assert fields["content"].startswith("<p>Chatwoot conversation #57 with Marta Silva via web chat, started 2025-11")
    # No message is the description: conversation_created carries the latest message, not the first (§9.4).
    assert "VPN client" not in fields["content"]
    assert '<a href="https://chat.northwind.example/app/accounts/7/conversations/57">' in fields["content"]
    assert "[cw:7/57]" in fields["content"]
    assert (fields["type"], fields["entities_id"], fields["urgency"], fields["itilcategories_id"]) == (
        1,
        0,
        3,
        12,
    )
    assert fields["_users_id_requester"] == 42
    assert fields["date"] == "2025-11-03 14:01:42"
    assert "status" not in fields
    assert view.conversation is not None
    assert view.conversation.model_dump(exclude={"ticket_input"}) == ConversationRecord(
        account_id=7,
        conversation_id=57,
        ticket_id=1234,
        last_synced_message_id=4410,
        status="open",
        ticket_checked_at=0.0,  # the clock the run was given: GLPI just showed the ticket usable
    ).model_dump(exclude={"ticket_input"})
    assert view.conversation.ticket_input == fields  # kept for resync
    assert finished == Finished("skipped", "ticket exists", {"user_id": 42, "ticket_id": 1234})


def test_contact_mode_ticket_gets_an_email_only_requester() -> None:
    view = SyncView(hook=hook(sync_type="contact"), contact=MARTA.model_copy(update={"glpi_itemtype": "Contact"}))
    step = decide(view, event("conversation_created"), CTX)
    assert isinstance(step, CreateTicket)
    assert step.input["_users_id_requester"] == 0
    assert step.input["_users_id_requester_notif"] == {
        "use_notification": 0,  # GLPI would mail the customer a copy of their own chat
        "alternative_email": "marta.silva@example.org",
    }
    notified = SyncView(hook=hook(sync_type="contact", notify_requester="true"), contact=view.contact)
    step = decide(notified, event("conversation_created"), CTX)
    assert isinstance(step, CreateTicket)
    assert step.input["_users_id_requester_notif"]["use_notification"] == 1


def test_contact_mode_without_email_has_no_requester_but_details_in_content() -> None:
    conv = load_example("conversation_created")
    conv["meta"]["sender"]["email"] = None
    import orjson

    ev = parse_envelope(orjson.dumps(envelope("conversation_created", conv)))
    view = SyncView(hook=hook(sync_type="contact"), contact=MARTA.model_copy(update={"glpi_itemtype": "Contact"}))
    step = decide(view, ev, CTX)
    assert isinstance(step, CreateTicket)
    assert "_users_id_requester" not in step.input
    assert "From: Marta Silva · +351912000111" in step.input["content"]


@pytest.mark.parametrize(("priority", "urgency"), [("low", 2), ("medium", 3), ("high", 4), ("urgent", 5), (None, 3)])
def test_urgency_follows_priority(priority: str | None, urgency: int) -> None:
    step = decide(SyncView(hook=hook(), contact=MARTA), event("conversation_created", priority=priority), CTX)
    assert isinstance(step, CreateTicket)
    assert step.input["urgency"] == urgency == step.input["priority"]


def test_hostile_html_is_escaped_in_content_and_raw_in_title() -> None:
    conv = load_example("conversation_created")
    conv["meta"]["sender"]["name"] = "<script>alert(1)</script> & co"
    conv["additional_attributes"]["mail_subject"] = "Re: <b>invoice</b> &\n  overdue"
    import orjson

    ev = parse_envelope(orjson.dumps(envelope("conversation_created", conv)))
    step = decide(SyncView(hook=hook(), contact=MARTA), ev, CTX)
    assert isinstance(step, CreateTicket)
    assert step.input["name"] == "Chat #57: Re: <b>invoice</b> & overdue"  # an email's subject, raw, one line
    assert step.input["content"].startswith("<p>Chatwoot conversation #57 with &lt;script&gt;alert(1)&lt;/script&gt;")
    assert "<p>Subject: Re: &lt;b&gt;invoice&lt;/b&gt; &amp; overdue</p>" in step.input["content"]


# --------------------------------------------------------------------------------------------------- messages


def test_message_becomes_a_followup_with_sender_attachments_and_date() -> None:
    view = SyncView(hook=hook(), contact=MARTA, conversation=TICKET)
    step = decide(view, event("message_created"), CTX)
    assert isinstance(step, CreateFollowup)
    assert step.input["itemtype"] == "Ticket"
    assert step.input["items_id"] == 1234
    assert step.input["is_private"] == 0
    assert step.input["date"] == "2025-11-03 14:03:12"
    content = step.input["content"]
    assert content.startswith("<p><strong>Marta Silva</strong> · 2025-11-03 14:03:12</p>")
    assert "vpn-error.png" in content
    assert content.endswith("<p>[cw-msg:4412]</p>")


def test_private_note_is_a_private_followup() -> None:
    view = SyncView(hook=hook(), contact=MARTA, conversation=TICKET)
    step = decide(view, event("message_created", "message_created_private_note"), CTX)
    assert isinstance(step, CreateFollowup)
    assert step.input["is_private"] == 1
    assert "Leo Costa (agent)" in step.input["content"]


def test_synced_message_and_ticket_body_are_not_duplicated() -> None:
    done = MessageRecord(account_id=7, message_id=4412, conversation_id=57, followup_id=901)
    view = SyncView(hook=hook(), contact=MARTA, conversation=TICKET, message=done)
    assert decide(view, event("message_created"), CTX).outcome == "skipped"  # type: ignore[union-attr]
    body = event("message_created", id=4410)
    assert decide(SyncView(hook=hook(), contact=MARTA, conversation=TICKET), body, CTX) == Finished(
        "skipped", "message is the ticket's description", {"user_id": 42, "ticket_id": 1234}
    )


def test_message_below_the_cursor_without_record_is_looked_up_not_dropped() -> None:
    ahead = TICKET.model_copy(update={"last_synced_message_id": 5000})
    step = decide(SyncView(hook=hook(), contact=MARTA, conversation=ahead), event("message_created"), CTX)
    assert isinstance(step, CreateFollowup)
    assert step.lookup_first


def test_message_for_an_unknown_conversation_creates_the_ticket_first() -> None:
    commands, _, view = run(SyncView(hook=hook(), contact=MARTA), event("message_created"), [Resolved(5), Resolved(6)])
    assert [type(c) for c in commands] == [CreateTicket, CreateFollowup]  # the message is a followup too
    assert view.conversation is not None
    assert view.conversation.body_message_id is None
    assert view.message is not None and view.message.followup_id == 6


def test_followup_intent_makes_the_retry_look_first() -> None:
    pending = MessageRecord(
        account_id=7,
        message_id=4412,
        conversation_id=57,
        pending=Intent(op="create_followup", marker="[cw-msg:4412]"),
    )
    step = decide(
        SyncView(hook=hook(), contact=MARTA, conversation=TICKET, message=pending),
        event("message_created"),
        CTX,
    )
    assert isinstance(step, CreateFollowup)
    assert step.lookup_first


def test_deleted_message_becomes_one_private_note() -> None:
    ev = event(
        "message_updated",
        "message_created",
        content="This message was deleted",
        content_attributes={"deleted": True},
    )
    commands, _, view = run(SyncView(hook=hook(), contact=MARTA, conversation=TICKET), ev, [Resolved(77)])
    (note,) = commands
    assert isinstance(note, CreateFollowup)
    assert note.input["is_private"] == 1
    assert note.purpose == "deletion"
    assert "was deleted" in note.input["content"]
    assert view.message is not None
    assert view.message.deletion_followup_id == 77
    assert run(view, ev, [])[0] == []


def test_other_message_updates_do_nothing() -> None:
    ev = event("message_updated", "message_created")
    assert decide(SyncView(hook=hook()), ev, CTX) == Finished("skipped", "message_updated without deletion")


# --------------------------------------------------------------------------------------------------- status


@pytest.mark.parametrize(("status", "glpi"), [("open", 2), ("pending", 4), ("snoozed", 4), ("resolved", 5)])
def test_status_change_maps_to_ticket_status(status: str, glpi: int) -> None:
    current = TICKET.model_copy(update={"status": "resolved" if status == "open" else "open"})
    ev = event("conversation_status_changed", status=status)
    step = decide(SyncView(hook=hook(), contact=MARTA, conversation=current), ev, CTX)
    assert step == UpdateItem("Ticket", 1234, {"status": glpi}, conversation_status=status)


def test_resolve_fires_two_events_but_one_update() -> None:
    view = SyncView(hook=hook(), contact=MARTA, conversation=TICKET)
    commands, _, view = run(view, event("conversation_updated"), [Applied()])
    assert len(commands) == 1
    assert run(view, event("conversation_status_changed"), [])[0] == []


def test_conversation_updated_without_status_is_noise() -> None:
    ev = event(
        "conversation_updated",
        changed_attributes=[{"waiting_since": {"previous_value": 0, "current_value": 1}}],
    )
    assert decide(SyncView(hook=hook()), ev, CTX) == Finished(
        "skipped", "noise: conversation_updated changed waiting_since"
    )


def test_status_event_for_an_unknown_conversation_creates_the_ticket_solved() -> None:
    commands, _, view = run(SyncView(hook=hook(), contact=MARTA), event("conversation_status_changed"), [Resolved(9)])
    (ticket,) = commands
    assert isinstance(ticket, CreateTicket)
    assert ticket.input["status"] == 5
    assert view.conversation is not None
    assert view.conversation.status == "resolved"


# --------------------------------------------------------------------------------------------------- hook config


@pytest.mark.parametrize(
    ("url", "allow_http", "problem"),
    [
        ("https://glpi.example/apirest.php/", False, None),
        ("https://glpi.example", False, "must end with /apirest.php"),
        ("https://glpi.example/glpi", False, "must end with /apirest.php"),
        ("http://glpi.example/apirest.php", False, "plain http"),
        ("http://glpi.example/apirest.php", True, None),
        ("glpi.example/apirest.php", False, "absolute"),
    ],
)
def test_hook_url_validation(url: str, allow_http: bool, problem: str | None) -> None:
    settings, problems = validate_hook_settings(HookSettings(api_url=url, user_token="u"), allow_http=allow_http)
    if problem is None:
        assert problems == []
        assert not settings.api_url.endswith("/")
    else:
        assert any(problem in p for p in problems)


def test_refused_hook_configuration_keeps_the_previous_one() -> None:
    import orjson

    bad = parse_envelope(
        orjson.dumps(
            envelope(
                "hook_configured",
                {"settings": {"api_url": "http://glpi.example/apirest.php", "user_token": "u"}},
            )
        )
    )
    current = hook()
    updated, problems = apply_hook_event(current, bad, SyncContext(allow_http=False))  # type: ignore[arg-type]
    assert updated is current
    assert problems


# ------------------------------------------------------------------------------------- identified after the ticket


def test_a_visitor_identified_after_its_ticket_becomes_its_requester_once() -> None:
    """An anonymous widget visitor gets a ticket without requester; once identified, the user becomes it."""
    anonymous = load_example("conversation_created")
    anonymous["meta"]["sender"].update(name="quiet-river-512", email=None, phone_number=None)
    import orjson

    conv_event = parse_envelope(orjson.dumps(envelope("conversation_created", anonymous)))
    commands, _, view = run(SyncView(hook=hook()), conv_event, [Resolved(1234), Resolved(9001)])
    ticket, _carried = commands
    assert isinstance(ticket, CreateTicket)
    assert "_users_id_requester" not in ticket.input
    assert view.contact is not None and view.contact.tickets_without_requester == (1234,)
    # The pre-chat form identifies her: the user is found or created, then made the ticket's requester.
    commands, _, view = run(view, event("contact_updated"), [Resolved(42), Applied()])
    assert [type(c) for c in commands] == [EnsureUser, AddRequester]
    requester = commands[1]
    assert isinstance(requester, AddRequester)
    assert (requester.ticket_id, requester.user_id, requester.email, requester.notify) == (1234, 42, None, False)
    assert view.contact is not None and view.contact.tickets_without_requester == ()
    assert run(view, event("contact_updated"), [])[0] == []  # replayed: nothing more to do


def test_contact_mode_gives_an_email_only_requester_once_the_email_is_known() -> None:
    known = ContactRecord(account_id=7, contact_id=318, tickets_without_requester=(1234, 1240))
    view = SyncView(hook=hook(sync_type="contact"), contact=known)
    commands, _, view = run(view, event("contact_updated"), [Resolved(5), Applied(), Applied(changed=False)])
    assert [type(c) for c in commands] == [EnsureContact, AddRequester, AddRequester]
    assert [(c.ticket_id, c.user_id, c.email) for c in commands[1:]] == [  # type: ignore[union-attr]
        (1234, None, "marta.silva@example.org"),
        (1240, None, "marta.silva@example.org"),
    ]


# ------------------------------------------------------------------------------------- closed or refused tickets


def test_a_ticket_quiet_for_a_while_is_read_before_the_next_followup() -> None:
    ctx = replace(CTX, now=10_000.0, ticket_recheck_seconds=600)
    fresh = SyncView(hook=hook(), contact=MARTA, conversation=TICKET.model_copy(update={"ticket_checked_at": 9_900}))
    step = decide(fresh, event("message_created"), ctx)
    assert isinstance(step, CreateFollowup)  # an active conversation is not re-read
    quiet = fresh.model_copy(update={"conversation": TICKET.model_copy(update={"ticket_checked_at": 9_000})})
    assert decide(quiet, event("message_created"), ctx) == CheckTicket(1234)


def test_a_closed_ticket_is_continued_in_a_new_linked_ticket() -> None:
    ctx = replace(CTX, now=10_000.0)
    quiet = SyncView(hook=hook(), contact=MARTA, conversation=TICKET.model_copy(update={"ticket_checked_at": 1.0}))
    commands, _, view = run(quiet, event("message_created"), [TicketState(6), Resolved(1300), Resolved(88)], ctx)
    check, new_ticket, followup = commands
    assert check == CheckTicket(1234)
    assert isinstance(new_ticket, CreateTicket)
    assert new_ticket.input["_link"] == {"tickets_id_1": 0, "link": 1, "tickets_id_2": 1234}
    assert "went on after GLPI ticket #1234 was closed" in new_ticket.input["content"]
    # The message that continued the conversation is the new ticket's first followup.
    assert isinstance(followup, CreateFollowup) and followup.ticket_id == 1300
    assert "Screenshot of the error attached" in followup.input["content"]
    assert view.conversation is not None
    assert (view.conversation.ticket_id, view.conversation.replaced_ticket_ids) == (1300, (1234,))


def test_an_open_ticket_read_again_is_written_to_as_before() -> None:
    ctx = replace(CTX, now=10_000.0)
    quiet = SyncView(hook=hook(), contact=MARTA, conversation=TICKET.model_copy(update={"ticket_checked_at": 1.0}))
    commands, _, view = run(quiet, event("message_created"), [TicketState(2), Resolved(77)], ctx)
    assert [type(c) for c in commands] == [CheckTicket, CreateFollowup]
    assert view.conversation is not None and view.conversation.ticket_checked_at == 10_000.0


def test_a_trashed_ticket_is_replaced_without_a_link() -> None:
    ctx = replace(CTX, now=10_000.0)
    quiet = SyncView(hook=hook(), contact=MARTA, conversation=TICKET.model_copy(update={"ticket_checked_at": 1.0}))
    commands, _, _ = run(
        quiet, event("message_created"), [TicketState(2, deleted=True), Resolved(1300), Resolved(7)], ctx
    )
    new_ticket = commands[1]
    assert isinstance(new_ticket, CreateTicket)
    assert "_link" not in new_ticket.input
    assert "replaces GLPI ticket #1234, which was deleted" in new_ticket.input["content"]


# ------------------------------------------------------------------------------------- creates that land late


def test_an_intent_bounds_the_next_post_by_the_late_commit_window() -> None:
    pending = MessageRecord(
        account_id=7,
        message_id=4412,
        conversation_id=57,
        pending=Intent(op="create_followup", marker="[cw-msg:4412]", attempt_at=500.0),
    )
    view = SyncView(hook=hook(), contact=MARTA, conversation=TICKET, message=pending)
    step = decide(view, event("message_created"), replace(CTX, late_commit_window=120))
    assert isinstance(step, CreateFollowup)
    assert step.lookup_first and step.not_before == 620.0


# ------------------------------------------------------------------------------------ Chatwoot's order of messages


def _message(number: int) -> dict[str, Any]:
    """Message m<number> of conversation 57: ids and times grow with the number, as in Chatwoot."""
    payload = load_example("message_created")
    payload.pop("attachments", None)
    payload.update(id=4410 + number, content=f"m{number}: text {number}", created_at=1762178500 + 60 * number)
    return payload


def _carrying(payload: dict[str, Any], latest: int) -> dict[str, Any]:
    """``payload`` whose (nested) conversation carries message m<latest>, as Chatwoot's webhook job builds it."""
    nested = {k: v for k, v in _message(latest).items() if k not in ("conversation", "event", "account")}
    conv = payload.get("conversation", payload)
    conv["messages"] = [nested]
    return payload


@pytest.mark.parametrize(
    "arrivals",
    [
        # conversation_created delivered first, already carrying m3 (its webhook job ran late); so do the first
        # messages' nested conversations.
        ["conversation_created@3", "m1@3", "m2@3", "m3@3", "m4@4"],
        # conversation_created delivered after the third message.
        ["m1@1", "m2@2", "m3@3", "conversation_created@3", "m4@4"],
        # messages out of order (Chatwoot's job queue), one delivered twice.
        ["m2@2", "conversation_created@2", "m1@2", "m4@4", "m3@4", "m2@4"],
    ],
)
def test_a_ticket_reads_in_chatwoots_order_whatever_order_the_events_arrive_in(arrivals: list[str]) -> None:
    import orjson

    from app.sync.state import message_key

    contact, conversation = MARTA, None
    messages: dict[int, MessageRecord] = {}
    tickets: list[CreateTicket] = []
    followups: list[CreateFollowup] = []
    ids = iter(range(2000, 2100))
    for arrival in arrivals:
        name, latest = arrival.split("@")
        if name == "conversation_created":
            payload = _carrying(load_example("conversation_created"), int(latest))
        else:
            payload = _carrying(_message(int(name[1:])), int(latest))
        ev = parse_envelope(orjson.dumps(envelope(payload["event"], payload)))
        message_id = record_ids(ev)[2]  # the records the store loads for this event
        view = SyncView(
            hook=hook(),
            contact=contact,
            conversation=conversation,
            message=messages.get(message_id) if message_id else None,
        )
        commands, _, view = run(view, ev, [Resolved(next(ids)) for _ in range(3)])
        tickets += [c for c in commands if isinstance(c, CreateTicket)]
        followups += [c for c in commands if isinstance(c, CreateFollowup)]
        conversation = view.conversation
        if view.message is not None:
            messages[view.message.message_id] = view.message
            assert message_key(7, view.message.message_id)
    (ticket,) = tickets
    assert not any(f"text {n}" in ticket.input["content"] for n in range(1, 5))  # no message as the description
    # Each message exactly once, dated as in Chatwoot: GLPI's timeline (by date) reads m1, m2, m3, m4.
    assert sorted(f.message_id for f in followups) == [4411, 4412, 4413, 4414]
    by_date = sorted(followups, key=lambda f: f.input["date"])
    assert [f.message_id for f in by_date] == [4411, 4412, 4413, 4414]
    assert all(f"m{f.message_id - 4410}: text" in f.input["content"] for f in followups)
