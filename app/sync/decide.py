"""The business rules: given the sync state and one event, what is the next GLPI step?

``decide(view, event, ctx)`` returns either the next :data:`~app.sync.commands.Command` or :class:`Finished`.
The shell runs the command, folds its outcome into the view with :func:`app.sync.record.record`, and calls
``decide`` again until it returns ``Finished``. Because every step is derived from the state, a replayed or
half-done event resumes where it stopped and never repeats a completed create.

Rules (see README "Sync rules"):
- events of an unknown or disabled hook, or of an account without ``crm_integration``, are skipped;
- a contact is synced when identifiable (a real name, an email or a phone); Users are found by email, then phone,
  and created only when none matches; Contacts (``sync_type=contact``) likewise by email;
- a conversation becomes one ticket (created lazily by any later event when its ``conversation_created`` is
  missing); each message one followup; a status change one ``PUT status`` when it differs from the last applied.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from app.events import (
    Contact,
    ContactEvent,
    Conversation,
    ConversationEvent,
    HookConfigured,
    HookRemoved,
    HookSettings,
    KnownEvent,
    Message,
    MessageEvent,
    NestedMessage,
    UnknownEvent,
)
from app.sync import mapping
from app.sync.commands import (
    Command,
    ContactSnapshot,
    CreateFollowup,
    CreateTicket,
    EnsureContact,
    EnsureUser,
    EnsureUserEmail,
    Finished,
    Lookup,
    SearchCriterion,
    Step,
    UpdateItem,
)
from app.sync.state import HookRecord, SyncContext, SyncView

#: ``contact_updated`` changes that never reach GLPI.
CONTACT_NOISE = frozenset(
    {"last_activity_at", "updated_at", "additional_attributes", "custom_attributes", "avatar", "thumbnail"}
)


# --------------------------------------------------------------------------------------------------- hook config


def validate_hook_settings(settings: HookSettings, *, allow_http: bool) -> tuple[HookSettings, list[str]]:
    """Normalise ``api_url`` and list what is wrong with the settings (empty list = usable).

    Catches the guide's classic mistakes: missing ``/apirest.php``, plain http, a trailing slash (removed).
    """
    problems: list[str] = []
    url = settings.api_url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        problems.append(f"api_url must be an absolute http(s) URL, got {url!r}")
    elif parts.scheme == "http" and not allow_http:
        problems.append("api_url uses plain http; use https (or set GLPI_SYNC_ALLOW_HTTP=true for a local GLPI)")
    if not (url.endswith("/apirest.php") or url.endswith("/api.php/v1")):
        problems.append("api_url must end with /apirest.php (e.g. https://glpi.example.com/apirest.php)")
    if parts.query or parts.fragment:
        problems.append("api_url must not have a query string or fragment")
    try:
        mapping.glpi_datetime(mapping.EPOCH, settings.timezone)
    except (KeyError, ValueError):
        problems.append(f"timezone {settings.timezone!r} is not an IANA time zone name")
    return settings.model_copy(update={"api_url": url}), problems


def apply_hook_event(
    current: HookRecord | None, event: HookConfigured | HookRemoved, ctx: SyncContext
) -> tuple[HookRecord | None, list[str]]:
    """The hook record after a control event, and the problems that made it refuse the change.

    A refused ``hook_configured`` leaves the current record untouched.
    """
    if isinstance(event, HookRemoved):
        return None, []
    settings, problems = validate_hook_settings(event.payload.settings, allow_http=ctx.allow_http)
    if problems:
        return current, problems
    # A new configuration is the operator's fix for a transient or credentials pause; an operator pause stays.
    keep_pause = current.pause if current is not None and current.pause and current.pause.kind == "operator" else None
    return (
        HookRecord(
            hook_id=event.hook_id,
            account_id=event.account_id,
            status=event.payload.status,
            account_features=tuple(event.payload.account_features),
            settings=settings,
            pause=keep_pause,
            parked_first=current.parked_first if current else 0,
            parked_next=current.parked_next if current else 0,
            partition=current.partition if current else None,
            rebuilding=current.rebuilding if current else False,
        ),
        [],
    )


def ticket_gone(view: SyncView, ticket_id: int) -> SyncView:
    """The view after GLPI reported the conversation's ticket missing (deleted or purged).

    The mapping is cleared so the next step creates a new ticket, which names the one it replaces; messages
    synced to the old ticket are not re-sent (their text is in Chatwoot), later ones go to the new ticket.
    """
    conv = view.conversation
    if conv is None or conv.ticket_id != ticket_id:
        return view
    replaced = conv.model_copy(
        update={
            "ticket_id": None,
            "status": None,
            "body_message_id": None,
            "pending": None,
            "replaced_ticket_ids": (*conv.replaced_ticket_ids, ticket_id),
        }
    )
    return view.model_copy(update={"conversation": replaced})


# ------------------------------------------------------------------------------------------------------ routing


def record_ids(event: KnownEvent | UnknownEvent) -> tuple[int | None, int | None, int | None]:
    """``(contact_id, conversation_id, message_id)`` whose records the decision for ``event`` needs."""
    match event:
        case ContactEvent():
            return event.payload.id, None, None
        case ConversationEvent():
            sender = event.payload.meta.sender
            return (sender.id if sender else None), event.payload.id, None
        case MessageEvent():
            conv = event.payload.conversation
            sender = conv.meta.sender
            return (sender.id if sender else None), conv.id, event.payload.id
        case _:
            return None, None, None


def gate(hook: HookRecord | None, event: KnownEvent | UnknownEvent, ctx: SyncContext) -> Finished | None:
    """Why this event must be skipped (a Finished) or None when it may be synced."""
    if isinstance(event, UnknownEvent):
        return Finished("skipped", f"unknown event {event.event[:60]!r}")
    if hook is None:
        return Finished("skipped", "unknown hook")
    if hook.status != "enabled":
        return Finished("skipped", "hook disabled")
    if ctx.required_feature not in hook.account_features:
        return Finished("skipped", f"account lacks feature {ctx.required_feature}")
    if event.account_id != hook.account_id:
        return Finished("skipped", f"event account {event.account_id} is not the hook's account {hook.account_id}")
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
            return _decide_contact(view, event, settings)
        case ConversationEvent():
            return _decide_conversation(view, event, settings, ctx)
        case MessageEvent():
            return _decide_message(view, event, settings, ctx)
        case _:
            return Finished("skipped", f"{event.event} is a control event")


# ------------------------------------------------------------------------------------------------------ contacts


def _rebuilding(view: SyncView) -> bool:
    return view.hook is not None and view.hook.rebuilding


def ensure_contact_command(
    view: SyncView, account_id: int, contact: Contact, settings: HookSettings
) -> EnsureUser | EnsureContact:
    """Find-else-create for a contact (used by ``resync contact`` after its GLPI record vanished)."""
    return _ensure_contact_command(view, account_id, contact, settings)


def _identity(contact: Contact) -> tuple[str | None, str | None, str | None]:
    return (
        mapping.real_name(contact.name),
        mapping.normalise_email(contact.email),
        mapping.normalise_phone(contact.phone_number),
    )


def _snapshot(account_id: int, contact: Contact) -> ContactSnapshot:
    name, email, phone = _identity(contact)
    return ContactSnapshot(account_id, contact.id, name, phone, email)


def _exact(field: int, value: str, link: str = "OR") -> SearchCriterion:
    return SearchCriterion(field, "contains", f"^{value}$", "AND" if link == "AND" else "OR")


def _ensure_contact_command(
    view: SyncView, account_id: int, contact: Contact, settings: HookSettings
) -> EnsureUser | EnsureContact:
    snap = _snapshot(account_id, contact)
    first, last = mapping.split_name(snap.name)
    pending = view.contact.pending if view.contact else None
    if settings.sync_type == "user":
        login = mapping.user_login(account_id, contact.id, snap.email, snap.phone)
        lookups = []
        if snap.email:
            lookups.append(Lookup((_exact(5, snap.email),), "email"))
        if snap.phone:
            lookups.append(Lookup((_exact(6, snap.phone), _exact(11, snap.phone)), "phone"))
        user_input: dict[str, Any] = {
            "name": login,
            "firstname": mapping.fit_varchar(first),
            "realname": mapping.fit_varchar(last),
            "is_active": 1,
            "entities_id": settings.entity_id,
        }
        if snap.phone:
            user_input["phone"] = snap.phone
        if snap.email:
            user_input["_useremails"] = [snap.email]
        return EnsureUser(
            tuple(lookups),
            user_input,
            login,
            snap,
            lookup_first=_rebuilding(view) or (pending is not None and pending.marker == login),
        )
    marker = f"contact:{account_id}/{contact.id}"
    contact_lookups = []
    if snap.email:
        contact_lookups.append(Lookup((_exact(6, snap.email),), "email"))
    if snap.phone:
        contact_lookups.append(Lookup((_exact(3, snap.phone),), "phone"))
    lookup_first = _rebuilding(view) or (pending is not None and pending.marker == marker)
    name_criteria = [_exact(1, last or first)] if (last or first) else []
    if first and last:
        name_criteria.append(_exact(11, first, "AND"))
    fallback = Lookup(tuple(name_criteria), "name") if name_criteria and not contact_lookups else None
    contact_input: dict[str, Any] = {
        "name": mapping.fit_varchar(last or first or snap.email or snap.phone or f"Chatwoot contact {contact.id}"),
        "firstname": mapping.fit_varchar(first if last else ""),
        "entities_id": settings.entity_id,
    }
    if snap.email:
        contact_input["email"] = snap.email
    if snap.phone:
        contact_input["phone"] = snap.phone
    return EnsureContact(tuple(contact_lookups), contact_input, snap, marker, lookup_first, fallback)


def _contact_sync_step(
    view: SyncView, account_id: int, contact: Contact, settings: HookSettings, *, update: bool
) -> Command | None:
    """The next command that makes GLPI hold this contact, or None when it already does.

    With ``update`` False (conversation and message events) an existing GLPI record is left as it is.
    """
    name, email, phone = _identity(contact)
    if not (name or email or phone):
        return None
    record = view.contact
    if record is None or record.glpi_id is None:
        return _ensure_contact_command(view, account_id, contact, settings)
    if not update:
        return None
    snap = ContactSnapshot(account_id, contact.id, name or record.name, phone or record.phone, email)
    fields: dict[str, Any] = {}
    first, last = mapping.split_name(snap.name)
    if name and name != record.name:
        if settings.sync_type == "user":
            fields.update(firstname=mapping.fit_varchar(first), realname=mapping.fit_varchar(last))
        else:
            fields.update(name=mapping.fit_varchar(last or first), firstname=mapping.fit_varchar(first if last else ""))
    if phone and phone != record.phone:
        fields["phone"] = phone
    if settings.sync_type == "contact" and email and email not in record.emails:
        fields["email"] = email
    if fields:
        return UpdateItem(record.glpi_itemtype or "User", record.glpi_id, fields, snapshot=snap)
    if settings.sync_type == "user" and email and email not in record.emails:
        return EnsureUserEmail(record.glpi_id, email, snap)
    return None


def _decide_contact(view: SyncView, event: ContactEvent, settings: HookSettings) -> Step:
    contact = event.payload
    changed = contact.changed_keys()
    if event.event == "contact_updated" and changed and changed <= CONTACT_NOISE:
        return Finished("skipped", "noise: only " + ", ".join(sorted(changed)) + " changed")
    name, email, phone = _identity(contact)
    if not (name or email or phone):
        return Finished("skipped", "contact not identifiable (no name, email or phone)")
    step = _contact_sync_step(view, event.account_id, contact, settings, update=True)
    if step is not None:
        return step
    return Finished("skipped", "GLPI already holds this contact", _contact_ids(view))


def _contact_ids(view: SyncView) -> dict[str, int]:
    if view.contact and view.contact.glpi_id is not None:
        return {(view.contact.glpi_itemtype or "User").lower() + "_id": view.contact.glpi_id}
    return {}


# ------------------------------------------------------------------------------------------------------ tickets


def _contact_line(contact: Contact | None) -> str:
    if contact is None:
        return ""
    name, email, phone = _identity(contact)
    details = " · ".join(mapping.html_text(v) for v in (name, email, phone) if v)
    return f"<p>From: {details}</p>" if details else ""


def _attachment_lines(attachments: list[Any]) -> str:
    links = []
    for att in attachments:
        if att.data_url:
            label = att.fallback_title or att.data_url.rsplit("/", 1)[-1] or "attachment"
            links.append(mapping.html_link(att.data_url, f"{att.file_type or 'file'}: {label}"))
    return "<p>Attachments: " + "<br>".join(links) + "</p>" if links else ""


def _first_message(conv: Conversation) -> NestedMessage | None:
    for msg in conv.messages:
        if not msg.private and msg.message_type not in (2, "activity"):
            return msg
    return None


def _ticket_step(
    view: SyncView, account_id: int, conv: Conversation, settings: HookSettings, ctx: SyncContext
) -> Command | None:
    """The next command needed before this conversation has a ticket, or None when it has one."""
    record = view.conversation
    if record is not None and record.ticket_id is not None:
        return None
    sender = conv.meta.sender
    if sender is not None:
        contact_step = _contact_sync_step(view, account_id, sender, settings, update=False)
        if contact_step is not None:
            return contact_step
    first = _first_message(conv)
    name, email, _ = _identity(sender) if sender else (None, None, None)
    who = name or email or (sender.phone_number if sender else None) or "a Chatwoot contact"
    subject = conv.additional_attributes.get("mail_subject")
    headline = (
        str(subject)
        if isinstance(subject, str) and subject.strip()
        else (mapping.first_line(first.content) if first and first.content else f"New conversation from {who}")
    )
    marker = mapping.ticket_marker(account_id, conv.id)
    body = (mapping.html_paragraphs(first.content) if first else "") or (
        f"<p>New conversation from {mapping.html_text(who)}</p>"
    )
    if first:
        body += _attachment_lines(first.attachments)
    body += _contact_line(sender)
    url = mapping.conversation_url(ctx.chatwoot_base_url, account_id, conv.id)
    if url:
        body += "<p>" + mapping.html_link(url, f"Open conversation #{conv.id} in Chatwoot") + "</p>"
    if record is not None and record.replaced_ticket_ids:
        previous = ", ".join(f"#{tid}" for tid in record.replaced_ticket_ids)
        body += (
            f"<p>This ticket replaces GLPI ticket {previous}, which was deleted; earlier messages are in Chatwoot.</p>"
        )
    body += f"<p>Chatwoot reference: {marker}</p>"
    urgency = mapping.urgency_for(conv.priority)
    ticket: dict[str, Any] = {
        "name": mapping.fit_varchar(f"Chat #{conv.id}: {headline}"),
        "content": body,
        "type": settings.ticket_type,
        "entities_id": settings.entity_id,
        "urgency": urgency,
        "priority": urgency,
    }
    if conv.created_at is not None:
        ticket["date"] = mapping.glpi_datetime(conv.created_at, settings.timezone)
    if settings.category_id:
        ticket["itilcategories_id"] = settings.category_id
    if conv.status and conv.status != "open":
        ticket["status"] = mapping.TICKET_STATUS[conv.status]
    contact = view.contact
    if settings.sync_type == "user" and contact is not None and contact.glpi_id is not None:
        ticket["_users_id_requester"] = contact.glpi_id
        ticket["_users_id_requester_notif"] = {"use_notification": 1}
    elif settings.sync_type == "contact" and email:
        ticket["_users_id_requester"] = 0
        ticket["_users_id_requester_notif"] = {"use_notification": 1, "alternative_email": email}
    pending = record.pending if record else None
    return CreateTicket(
        ticket,
        marker,
        account_id,
        conv.id,
        first.id if first else None,
        conv.status,
        lookup_first=_rebuilding(view) or (pending is not None and pending.marker == marker),
    )


def _ticket_ids(view: SyncView) -> dict[str, int]:
    ids = _contact_ids(view)
    if view.conversation and view.conversation.ticket_id is not None:
        ids["ticket_id"] = view.conversation.ticket_id
    return ids


def _decide_conversation(view: SyncView, event: ConversationEvent, settings: HookSettings, ctx: SyncContext) -> Step:
    conv = event.payload
    is_status_change = event.event == "conversation_status_changed" or "status" in conv.changed_keys()
    if event.event == "conversation_updated" and not is_status_change:
        changed = ", ".join(sorted(conv.changed_keys())) or "nothing"
        return Finished("skipped", f"noise: conversation_updated changed {changed}")
    step = _ticket_step(view, event.account_id, conv, settings, ctx)
    if step is not None:
        return step
    record = view.conversation
    assert record is not None
    assert record.ticket_id is not None
    if not is_status_change or conv.status is None:
        return Finished("skipped", "ticket exists", _ticket_ids(view))
    if record.status == conv.status:
        return Finished("skipped", f"ticket status already matches {conv.status}", _ticket_ids(view))
    return UpdateItem(
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


def _followup_content(msg: Message, conv: Conversation, settings: HookSettings, marker: str) -> str:
    when = f" · {mapping.glpi_datetime(msg.created_at, settings.timezone)}" if msg.created_at else ""
    note = " · private note" if msg.private else ""
    header = f"<p><strong>{mapping.html_text(_sender_label(msg, conv))}</strong>{note}{when}</p>"
    text = mapping.html_paragraphs(msg.content)
    attachments = _attachment_lines(msg.attachments)
    if not text and not attachments:
        text = "<p><em>(no text)</em></p>"
    return f"{header}{text}{attachments}<p>{marker}</p>"


def _decide_message(view: SyncView, event: MessageEvent, settings: HookSettings, ctx: SyncContext) -> Step:
    msg = event.payload
    conv = msg.conversation
    deleted = event.event == "message_updated"
    if deleted and not msg.content_attributes.get("deleted"):
        return Finished("skipped", "message_updated without deletion")
    if msg.message_type == "activity":
        return Finished("skipped", "activity messages are not synced")
    step = _ticket_step(view, event.account_id, conv, settings, ctx)
    if step is not None:
        return step
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
            return Finished("skipped", "followup exists", {**ids, "followup_id": record.followup_id})
        if conversation.body_message_id == msg.id:
            return Finished("skipped", "message is the ticket's description", ids)
        marker = mapping.followup_marker(msg.id)
        content = _followup_content(msg, conv, settings, marker)
        purpose = "message"
    followup: dict[str, Any] = {
        "itemtype": "Ticket",
        "items_id": conversation.ticket_id,
        "content": content,
        "is_private": 1 if (msg.private or deleted) else 0,
    }
    if msg.created_at is not None and not deleted:
        followup["date"] = mapping.glpi_datetime(msg.created_at, settings.timezone)
    pending = record.pending if record else None
    # A message at or below the cursor without a record of its own was maybe synced before its record was lost
    # (reset, repair): look before creating. Late deliveries below the cursor are still synced, never dropped.
    below_cursor = (conversation.last_synced_message_id or 0) >= msg.id
    return CreateFollowup(
        conversation.ticket_id,
        followup,
        marker,
        event.account_id,
        conv.id,
        msg.id,
        lookup_first=below_cursor or _rebuilding(view) or (pending is not None and pending.marker == marker),
        purpose="deletion" if purpose == "deletion" else "message",
    )
