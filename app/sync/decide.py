"""The business rules: given the sync state and one event, what is the next GLPI step?

``decide(view, event, ctx)`` returns either the next :data:`~app.sync.commands.Command` or :class:`Finished`.
The shell runs the command, folds its outcome into the view with :func:`app.sync.record.record`, and calls
``decide`` again until it returns ``Finished``. Because every step is derived from the state, a replayed or
half-done event resumes where it stopped and never repeats a completed create.

Rules (see README "Sync rules"); which events get here at all is :mod:`app.sync.admission`'s decision:
- a contact is synced when identifiable (a real name, an email or a phone); Users are found by email, then phone,
  and created only when none matches; Contacts (``sync_type=contact``) likewise by email;
- a conversation becomes one ticket (created lazily by any later event when its ``conversation_created`` is
  missing); each message one followup; a status change one ``PUT status`` when it differs from the last applied;
- a ticket not seen usable for ``ticket_recheck_seconds`` is read before it is written to; a closed, deleted or
  refused ticket is replaced by a new one that links to it, and the conversation goes on there;
- a contact identified after its ticket was created becomes that ticket's requester (and of its other tickets
  created while it was anonymous).
"""

from __future__ import annotations

from typing import Any

from app.events import (
    ECHO_ATTRIBUTE,
    Contact,
    ContactEvent,
    Conversation,
    ConversationEvent,
    HookSettings,
    KnownEvent,
    Message,
    MessageEvent,
    UnknownEvent,
)
from app.sync import mapping
from app.sync.commands import (
    CheckTicket,
    Command,
    CreateFollowup,
    CreateTicket,
    Finished,
    Step,
    UpdateItem,
)
from app.sync.contacts import contact_ids, contact_sync_step, decide_contact, identity, requester_step
from app.sync.files import attachment_lines, link_step, store_step
from app.sync.record import earlier_attempt, looks_first
from app.sync.state import HookRecord, SyncContext, SyncView

# ------------------------------------------------------------------------------------------------------ routing


def record_ids(event: KnownEvent | UnknownEvent) -> tuple[int | None, int | None, int | None]:
    """``(contact_id, conversation_id, message_id)`` whose records the decision for ``event`` needs."""
    match event:
        case ContactEvent():
            return event.payload.id, None, None
        case ConversationEvent():
            sender = event.payload.meta.sender
            carried = carried_message(event)
            return (sender.id if sender else None), event.payload.id, (carried.id if carried else None)
        case MessageEvent():
            conv = event.payload.conversation
            sender = conv.meta.sender
            return (sender.id if sender else None), conv.id, event.payload.id
        case _:
            return None, None, None


def gate(hook: HookRecord | None, event: KnownEvent | UnknownEvent, ctx: SyncContext) -> Finished | None:
    """A safety net behind :func:`app.sync.admission.admit`: events decide() must never act on."""
    if isinstance(event, UnknownEvent):
        return Finished("skipped", f"unknown event {event.event[:60]!r}")
    if hook is None:
        return Finished("skipped", "unknown hook")
    if hook.status != "enabled" or event.account_id != hook.account_id:
        return Finished("skipped", "hook not admitted")
    return None


def decide(view: SyncView, event: KnownEvent | UnknownEvent, ctx: SyncContext) -> Step:
    """The next GLPI command for ``event``, or Finished when nothing (more) is needed."""
    skipped = gate(view.hook, event, ctx)
    if skipped is not None:
        return skipped
    assert view.hook is not None  # gate() guarantees it
    settings = view.hook.settings
    match event:
        case ContactEvent():
            return decide_contact(view, event, settings, ctx)
        case ConversationEvent():
            return _decide_conversation(view, event, settings, ctx)
        case MessageEvent():
            return _decide_message(view, event, settings, ctx)
        case _:
            return Finished("skipped", f"{event.event} is a control event")


# ------------------------------------------------------------------------------------------------------ tickets


def _contact_line(contact: Contact | None, settings: HookSettings) -> str:
    if contact is None:
        return ""
    name, email, phone = identity(contact, settings)
    details = " · ".join(mapping.html_text(v) for v in (name, email, phone) if v)
    return f"<p>From: {details}</p>" if details else ""


#: Chatwoot's channel classes as a technician reads them in a ticket title.
_CHANNELS = {
    "Channel::WebWidget": "web chat",
    "Channel::Whatsapp": "WhatsApp",
    "Channel::Email": "email",
    "Channel::Api": "API",
    "Channel::FacebookPage": "Facebook",
    "Channel::Instagram": "Instagram",
    "Channel::TwitterProfile": "X",
    "Channel::TwilioSms": "SMS",
    "Channel::Sms": "SMS",
    "Channel::Telegram": "Telegram",
    "Channel::Line": "LINE",
}


def _channel(conv: Conversation) -> str | None:
    channel = conv.channel or ""
    return _CHANNELS.get(channel) or (channel.removeprefix("Channel::") or None)


#: What a replacement ticket says about the one it continues (``ConversationRecord.replaced_because``).
_REPLACED_TEXT = {
    "deleted": "This ticket replaces GLPI ticket {ids}, which was deleted; earlier messages are in Chatwoot.",
    "closed": "The conversation went on after GLPI ticket {ids} was closed: this ticket continues it.",
    "refused": (
        "GLPI no longer lets this integration write to ticket {ids} (moved to another entity, or closed for its "
        "profile): this ticket continues the conversation."
    ),
}


def _create_ticket_command(
    view: SyncView, account_id: int, conv: Conversation, settings: HookSettings, ctx: SyncContext
) -> CreateTicket:
    """The conversation's ticket: a fixed summary; every message of the conversation then becomes a followup.

    No message is the ticket's description: Chatwoot's ``conversation_created`` carries the conversation's *latest*
    message when its webhook job runs (chatwoot-events.md §9.4), and any event may arrive first, so a message taken
    as the description could be the third one. Followups carry each message's Chatwoot date, so the ticket's
    timeline reads in Chatwoot's order whatever order the events arrive in.
    """
    record = view.conversation
    sender = conv.meta.sender
    name, email, _ = identity(sender, settings) if sender else (None, None, None)
    who = name or email or (sender.phone_number if sender else None) or "a Chatwoot contact"
    channel = _channel(conv)
    subject = conv.additional_attributes.get("mail_subject")
    headline = (
        " ".join(str(subject).split())
        if isinstance(subject, str) and subject.strip()
        else (f"{who} ({channel})" if channel else who)
    )
    marker = mapping.ticket_marker(account_id, conv.id)
    started = f", started {mapping.glpi_datetime(conv.created_at, settings.timezone)}" if conv.created_at else ""
    via = f" via {channel}" if channel else ""
    body = f"<p>Chatwoot conversation #{conv.id} with {mapping.html_text(who)}{via}{started}.</p>"
    if isinstance(subject, str) and subject.strip():
        body += f"<p>Subject: {mapping.html_text(headline)}</p>"
    body += _contact_line(sender, settings)
    body += "<p>The conversation's messages follow as followups, in Chatwoot's order.</p>"
    url = mapping.conversation_url(ctx.chatwoot_base_url, account_id, conv.id)
    if url:
        body += "<p>" + mapping.html_link(url, f"Open conversation #{conv.id} in Chatwoot") + "</p>"
    urgency = mapping.urgency_for(conv.priority)
    ticket: dict[str, Any] = {
        "name": f"Chat #{conv.id}: {headline}",
        "type": settings.ticket_type,
        "entities_id": settings.entity_id,
        "urgency": urgency,
        "priority": urgency,
    }
    if record is not None and record.replaced_ticket_ids:
        because = record.replaced_because or "deleted"
        previous = ", ".join(f"#{tid}" for tid in record.replaced_ticket_ids)
        body += f"<p>{mapping.html_text(_REPLACED_TEXT[because].format(ids=previous))}</p>"
        if because != "deleted":
            # GLPI links the new ticket to the old one (Ticket_Ticket "linked to") while creating it.
            ticket["_link"] = {"tickets_id_1": 0, "link": 1, "tickets_id_2": record.replaced_ticket_ids[-1]}
    ticket["content"] = body + f"<p>Chatwoot reference: {marker}</p>"
    if conv.created_at is not None:
        ticket["date"] = mapping.glpi_datetime(conv.created_at, settings.timezone)
    if settings.category_id:
        ticket["itilcategories_id"] = settings.category_id
    if conv.status and conv.status != "open":
        ticket["status"] = mapping.TICKET_STATUS[conv.status]
    contact = view.contact if view.contact is not None and sender is not None else None
    notify = 1 if settings.notify_requester else 0
    without_requester = None
    if settings.sync_type == "user" and contact is not None and contact.glpi_id is not None:
        ticket["_users_id_requester"] = contact.glpi_id
        ticket["_users_id_requester_notif"] = {"use_notification": notify}
    elif settings.sync_type == "contact" and email:
        ticket["_users_id_requester"] = 0
        ticket["_users_id_requester_notif"] = {"use_notification": notify, "alternative_email": email}
    elif sender is not None:
        without_requester = sender.id
    earlier, not_before = earlier_attempt(record.pending if record else None, marker, ctx)
    return CreateTicket(
        ticket,
        marker,
        account_id,
        conv.id,
        conv.status,
        lookup_first=looks_first(view) or earlier,
        not_before=not_before,
        contact_without_requester=without_requester,
    )


def _conversation_prelude(
    view: SyncView, account_id: int, conv: Conversation, settings: HookSettings, ctx: SyncContext
) -> Command | None:
    """What every conversation or message event needs first: the contact in GLPI, the ticket, its requester."""
    sender = conv.meta.sender
    if sender is not None:
        contact_step = contact_sync_step(view, account_id, sender, settings, ctx, update=False)
        if contact_step is not None:
            return contact_step
    record = view.conversation
    if record is None or record.ticket_id is None:
        return _create_ticket_command(view, account_id, conv, settings, ctx)
    return requester_step(view, sender, settings) if sender is not None else None


def _recheck_step(view: SyncView, ctx: SyncContext) -> CheckTicket | None:
    """Read the ticket before writing to it when GLPI has not shown it usable for a while (it may be closed).

    An active conversation writes often and is never re-read; the first write after a quiet spell is.
    """
    record = view.conversation
    if record is None or record.ticket_id is None or record.ticket_checked_at is None:
        return None
    if ctx.now - record.ticket_checked_at <= ctx.ticket_recheck_seconds:
        return None
    return CheckTicket(record.ticket_id)


def _ticket_ids(view: SyncView) -> dict[str, int]:
    ids = contact_ids(view)
    if view.conversation and view.conversation.ticket_id is not None:
        ids["ticket_id"] = view.conversation.ticket_id
    return ids


def _decide_conversation(view: SyncView, event: ConversationEvent, settings: HookSettings, ctx: SyncContext) -> Step:
    conv = event.payload
    is_status_change = event.event == "conversation_status_changed" or "status" in conv.changed_keys()
    if event.event == "conversation_updated" and not is_status_change:
        changed = ", ".join(sorted(conv.changed_keys())) or "nothing"
        return Finished("skipped", f"noise: conversation_updated changed {changed}")
    step = _conversation_prelude(view, event.account, conv, settings, ctx)
    if step is not None:
        return step
    record = view.conversation
    assert record is not None
    assert record.ticket_id is not None
    carried = carried_message(event)
    if carried is not None:
        followup = _message_step(view, carried, event.account, settings, ctx, deleted=False)
        if not isinstance(followup, Finished):
            return followup
    if not is_status_change or conv.status is None:
        return Finished("skipped", "ticket exists", _ticket_ids(view))
    if record.status == conv.status:
        return Finished("skipped", f"ticket status already matches {conv.status}", _ticket_ids(view))
    return _recheck_step(view, ctx) or UpdateItem(
        "Ticket",
        record.ticket_id,
        {"status": mapping.TICKET_STATUS[conv.status]},
        conversation_status=conv.status,
    )


# ----------------------------------------------------------------------------------------------------- followups


def _sender_label(msg: Message, conv: Conversation) -> str:
    sender = msg.sender or {}
    name = sender.get("name") if isinstance(sender.get("name"), str) else None
    if msg.message_type == "incoming":
        contact = conv.meta.sender
        return mapping.real_name(name) or (mapping.real_name(contact.name) if contact else None) or "Customer"
    if msg.message_type == "template":
        return name or "Chatwoot template"
    kind = sender.get("type")
    if kind == "agent_bot":
        return f"{name or 'Bot'} (bot)"
    return f"{name} (agent)" if name else "Chatwoot"


def _followup_content(msg: Message, settings: HookSettings, marker: str, attachments: str) -> str:
    conv = msg.conversation
    when = f" · {mapping.glpi_datetime(msg.created_at, settings.timezone)}" if msg.created_at else ""
    note = " · private note" if msg.private else ""
    header = f"<p><strong>{mapping.html_text(_sender_label(msg, conv))}</strong>{note}{when}</p>"
    text = mapping.html_paragraphs(msg.content)
    if not text and not attachments:
        text = "<p><em>(no text)</em></p>"
    return f"{header}{text}{attachments}<p>{marker}</p>"


#: Chatwoot's integer ``message_type`` in nested messages (``conversation.messages[]``).
_MESSAGE_TYPES = {0: "incoming", 1: "outgoing", 2: "activity", 3: "template"}


def carried_message(event: ConversationEvent) -> Message | None:
    """The message a ``conversation_created`` carries, when it should become a followup (else None).

    Chatwoot puts the conversation's latest message in it (any of them, not the first): it is synced like its own
    ``message_created`` (which then finds it synced), so a message is never lost when its own webhook is.
    """
    if event.event != "conversation_created" or not event.payload.messages:
        return None
    nested = event.payload.messages[0]
    kind = _MESSAGE_TYPES.get(nested.message_type, nested.message_type)  # type: ignore[arg-type]
    if kind not in ("incoming", "outgoing", "template") or nested.private:
        return None
    if ECHO_ATTRIBUTE in nested.content_attributes:
        return None
    return Message(
        id=nested.id,
        content=nested.content,
        message_type=kind,
        private=False,
        created_at=nested.created_at,
        content_attributes=nested.content_attributes,
        sender=nested.sender,
        attachments=nested.attachments,
        conversation=event.payload,
    )


def _decide_message(view: SyncView, event: MessageEvent, settings: HookSettings, ctx: SyncContext) -> Step:
    msg = event.payload
    conv = msg.conversation
    deleted = event.event == "message_updated"
    if deleted and not msg.content_attributes.get("deleted"):
        return Finished("skipped", "message_updated without deletion")
    if msg.message_type == "activity":
        return Finished("skipped", "activity messages are not synced")
    if ECHO_ATTRIBUTE in msg.content_attributes:
        return Finished("skipped", "posted by the two-way sync from GLPI (it is in GLPI already)")
    step = _conversation_prelude(view, event.account, conv, settings, ctx)
    if step is not None:
        return step
    return _message_step(view, msg, event.account, settings, ctx, deleted=deleted)


def _message_step(
    view: SyncView, msg: Message, account: int, settings: HookSettings, ctx: SyncContext, *, deleted: bool
) -> Step:
    """The followup (or deletion note) of ``msg`` once its ticket exists, or Finished when it is in GLPI."""
    conv = msg.conversation
    conversation = view.conversation
    assert conversation is not None
    assert conversation.ticket_id is not None
    record = view.message
    ids = _ticket_ids(view)
    if deleted:
        if record is not None and record.deletion_followup_id is not None:
            return Finished("skipped", "deletion already noted", {**ids, "followup_id": record.deletion_followup_id})
        marker = mapping.followup_marker(msg.id, "deletion")
        content = (
            f"<p>The Chatwoot message #{msg.id} from {mapping.html_text(_sender_label(msg, conv))} "
            f"was deleted.</p><p>{marker}</p>"
        )
        purpose = "deletion"
    else:
        if record is not None and record.followup_id is not None:
            return link_step(record, account) or Finished(
                "skipped", "followup exists", {**ids, "followup_id": record.followup_id}
            )
        if conversation.body_message_id == msg.id:
            # Tickets made before every message became a followup hold one message as their description.
            return Finished("skipped", "message is the ticket's description", ids)
        store = store_step(view, msg, account, ctx)
        if store is not None:
            return store
        marker = mapping.followup_marker(msg.id)
        content = _followup_content(msg, settings, marker, attachment_lines(msg, view, ctx))
        purpose = "message"
    recheck = _recheck_step(view, ctx)
    if recheck is not None:
        return recheck
    followup: dict[str, Any] = {
        "itemtype": "Ticket",
        "items_id": conversation.ticket_id,
        "content": content,
        "is_private": 1 if (msg.private or deleted) else 0,
    }
    if msg.created_at is not None and not deleted:
        followup["date"] = mapping.glpi_datetime(msg.created_at, settings.timezone)
    earlier, not_before = earlier_attempt(record.pending if record else None, marker, ctx)
    # A message at or below the cursor without a record of its own was maybe synced before its record was lost
    # (reset, repair): look before creating. Late deliveries below the cursor are still synced, never dropped.
    below_cursor = (conversation.last_synced_message_id or 0) >= msg.id
    return CreateFollowup(
        conversation.ticket_id,
        followup,
        marker,
        account,
        conv.id,
        msg.id,
        lookup_first=below_cursor or looks_first(view) or earlier,
        purpose="deletion" if purpose == "deletion" else "message",
        not_before=not_before,
    )
