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

from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from app.events import (
    ECHO_ATTRIBUTE,
    TOKEN_FIELDS,
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
    TokenFromEnv,
    TokenFromFile,
    TokenRef,
    UnknownEvent,
)
from app.sync import mapping
from app.sync.commands import (
    AddRequester,
    CheckTicket,
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
from app.sync.state import AnyHook, HookPolicy, HookRecord, Intent, SyncContext, SyncView, UnconfiguredHook

#: ``contact_updated`` changes that never reach GLPI.
CONTACT_NOISE = frozenset(
    {"last_activity_at", "updated_at", "additional_attributes", "custom_attributes", "avatar", "thumbnail"}
)


# --------------------------------------------------------------------------------------------------- hook config


def token_reference_problem(ref: TokenRef | None, name: str, policy: HookPolicy) -> str | None:
    """Why ``ref`` may not be used (None when granted). Never echoes an inline token's value."""
    if ref is None:
        return None
    if isinstance(ref, str):
        if policy.refuse_inline_tokens:
            return f"{name} is given inline, and inline tokens are refused here: use an env or file reference"
        return None
    if isinstance(ref, TokenFromEnv):
        if not ref.env.startswith(policy.env_prefix) or ref.env == policy.env_prefix:
            granted = f"only variables named {policy.env_prefix}* are granted to hooks"
            return f"{name} names the environment variable {ref.env!r}: {granted}"
        return None
    if isinstance(ref, TokenFromFile):
        path = PurePosixPath(ref.file)
        root = PurePosixPath(policy.secrets_dir)
        if not path.is_absolute() or ".." in path.parts or not path.is_relative_to(root) or path == root:
            return f"{name} names the file {ref.file!r}: only files under {policy.secrets_dir}/ are granted to hooks"
        return None
    # {"encrypted": ...} is how the worker stores inline tokens in its own table; a producer sending one could make
    # the worker decrypt a token it copied from a changelog and send it to a server of its choosing.
    return f"{name} is an encrypted reference: send the token inline or by env/file reference"


def host_problem(api_url: str, policy: HookPolicy) -> str | None:
    """Why ``api_url``'s host may not receive a hook's tokens (None when allowed)."""
    host = (urlsplit(api_url).hostname or "").lower()
    port = urlsplit(api_url).port
    if not policy.allowed_hosts or host in policy.allowed_hosts or f"{host}:{port}" in policy.allowed_hosts:
        return None
    return (
        f"api_url host {host!r} is not one of GLPI_SYNC_ALLOWED_GLPI_HOSTS ({', '.join(sorted(policy.allowed_hosts))})"
    )


def grant_problems(settings: HookSettings, policy: HookPolicy) -> list[str]:
    """What ``settings`` ask for that the operators did not grant (token references, the GLPI host)."""
    found = [host_problem(settings.api_url, policy)]
    found += [token_reference_problem(getattr(settings, name), name, policy) for name in TOKEN_FIELDS]
    return [problem for problem in found if problem]


def validate_hook_settings(
    settings: HookSettings, *, allow_http: bool, policy: HookPolicy | None = None
) -> tuple[HookSettings, list[str]]:
    """Normalise ``api_url`` and list what is wrong with the settings (empty list = usable).

    Catches the guide's classic mistakes (missing ``/apirest.php``, plain http, a trailing slash, which is removed)
    and, given a ``policy``, anything the operators did not grant: token references and GLPI hosts (settings the
    worker stored itself, with encrypted tokens, are checked without one).
    """
    problems: list[str] = []
    url = settings.api_url.strip().rstrip("/")
    parts = urlsplit(url)
    absolute = parts.scheme in ("http", "https") and bool(parts.netloc)
    if not absolute:
        problems.append(
            f"api_url must be an absolute http(s) URL, got {url!r}, e.g. https://glpi.example.com/apirest.php"
        )
    elif parts.scheme == "http" and not allow_http:
        problems.append(
            "api_url uses plain http; use https (for a local GLPI: --allow-http on hook set, "
            "GLPI_SYNC_ALLOW_HTTP=true on the worker)"
        )
    if absolute and not (url.endswith("/apirest.php") or url.endswith("/api.php/v1")):
        problems.append(
            f"api_url must end with /apirest.php: did you mean {url.split('?')[0].rstrip('/')}/apirest.php ?"
        )
    if parts.query or parts.fragment:
        problems.append("api_url must not have a query string or fragment")
    if settings.two_way:
        chatwoot = urlsplit(settings.chatwoot_url or "")
        if chatwoot.scheme not in ("http", "https") or not chatwoot.netloc:
            problems.append("two_way needs chatwoot_url, Chatwoot's base URL (e.g. https://chat.example.com)")
        elif chatwoot.scheme == "http" and not allow_http:
            problems.append("chatwoot_url uses plain http; use https (the agent's token travels with every call)")
        if settings.chatwoot_token is None:
            problems.append("two_way needs chatwoot_token, an agent's or agent bot's api_access_token reference")
    if policy is not None:
        problems += grant_problems(settings, policy)
    try:
        mapping.glpi_datetime(mapping.EPOCH, settings.timezone)
    except (KeyError, ValueError):
        problems.append(f"timezone {settings.timezone!r} is not an IANA time zone name")
    return settings.model_copy(update={"api_url": url}), problems


def apply_hook_event(
    current: AnyHook | None, event: HookConfigured | HookRemoved, ctx: SyncContext
) -> tuple[AnyHook | None, list[str]]:
    """The hook's slot after a control event, and the problems that made it refuse the change.

    A refused ``hook_configured`` leaves the current slot untouched. ``hook_removed`` keeps a ``removed`` slot (its
    partition and queue counters) so later events of the hook are set aside with that reason, not lost.
    """
    if isinstance(event, HookRemoved):
        if current is None:
            return None, []
        return (
            UnconfiguredHook(
                hook_id=current.hook_id,
                partition=current.partition,
                parked_first=current.parked_first,
                parked_next=current.parked_next,
                status="removed",
            ),
            [],
        )
    settings, problems = validate_hook_settings(
        event.payload.settings, allow_http=ctx.allow_http, policy=ctx.hook_policy
    )
    if problems:
        return current, problems
    configured = current if isinstance(current, HookRecord) else None
    # A new configuration is the operator's fix for a transient or credentials pause; an operator pause stays.
    keep_pause = configured.pause if configured and configured.pause and configured.pause.kind == "operator" else None
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
            rebuilding=configured.rebuilding if configured else False,
            glpi_cursors=configured.glpi_cursors if configured else {},
            set_aside=configured.set_aside if configured else 0,
        ),
        [],
    )


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
            return _decide_contact(view, event, settings, ctx)
        case ConversationEvent():
            return _decide_conversation(view, event, settings, ctx)
        case MessageEvent():
            return _decide_message(view, event, settings, ctx)
        case _:
            return Finished("skipped", f"{event.event} is a control event")


# ------------------------------------------------------------------------------------------------------ contacts


def _rebuilding(view: SyncView) -> bool:
    return view.cautious or (view.hook is not None and view.hook.rebuilding)


def _earlier_attempt(pending: Intent | None, marker: str, ctx: SyncContext) -> tuple[bool, float]:
    """``(lookup_first, not_before)`` for a create whose record holds ``pending``.

    An intent for the same object means an earlier POST may have created it, now or later: look first, and do not
    POST again before that attempt can no longer land.
    """
    if pending is None or pending.marker != marker:
        return False, 0.0
    return True, (pending.attempt_at + ctx.late_commit_window) if pending.attempt_at else 0.0


def ensure_contact_command(
    view: SyncView, account_id: int, contact: Contact, settings: HookSettings, ctx: SyncContext
) -> EnsureUser | EnsureContact:
    """Find-else-create for a contact (used by ``resync contact`` after its GLPI record vanished)."""
    return _ensure_contact_command(view, account_id, contact, settings, ctx)


def _identity(contact: Contact, settings: HookSettings) -> tuple[str | None, str | None, str | None]:
    return (
        mapping.real_name(contact.name),
        mapping.normalise_email(contact.email),
        mapping.normalise_phone(contact.phone_number, settings.phone_region),
    )


def _snapshot(account_id: int, contact: Contact, settings: HookSettings) -> ContactSnapshot:
    name, email, phone = _identity(contact, settings)
    return ContactSnapshot(account_id, contact.id, name, phone, email)


def _exact(field: int, value: str, link: str = "OR") -> SearchCriterion:
    return SearchCriterion(field, "contains", f"^{value}$", "AND" if link == "AND" else "OR")


def _ensure_contact_command(
    view: SyncView, account_id: int, contact: Contact, settings: HookSettings, ctx: SyncContext
) -> EnsureUser | EnsureContact:
    snap = _snapshot(account_id, contact, settings)
    first, last = mapping.split_name(snap.name)
    pending = view.contact.pending if view.contact else None
    if settings.sync_type == "user":
        login = mapping.user_login(account_id, contact.id, snap.email, snap.phone)
        lookups = []
        if snap.email:
            lookups.append(Lookup((_exact(5, snap.email),), "email"))
        if snap.phone and settings.match_by_phone:
            lookups.append(Lookup((_exact(6, snap.phone), _exact(11, snap.phone)), "phone"))
        user_input: dict[str, Any] = {
            "name": login,
            "firstname": first,
            "realname": last,
            "is_active": 1,
            "entities_id": settings.entity_id,
        }
        if snap.phone:
            user_input["phone"] = snap.phone
        if snap.email:
            user_input["_useremails"] = [snap.email]
        earlier, not_before = _earlier_attempt(pending, login, ctx)
        return EnsureUser(
            tuple(lookups), user_input, login, snap, lookup_first=_rebuilding(view) or earlier, not_before=not_before
        )
    marker = mapping.contact_marker(account_id, contact.id)
    contact_lookups = []
    if snap.email:
        contact_lookups.append(Lookup((_exact(6, snap.email),), "email"))
    if snap.phone and settings.match_by_phone:
        contact_lookups.append(Lookup((_exact(3, snap.phone),), "phone"))
    earlier, not_before = _earlier_attempt(pending, marker, ctx)
    # After an uncertain create (or a reset) the marker in the comment finds the exact contact we made; contacts
    # made before markers existed are found by name when they have no email or phone.
    fallbacks = [Lookup((SearchCriterion(16, "contains", marker),), "marker")]
    name_criteria = [_exact(1, last or first)] if (last or first) else []
    if first and last:
        name_criteria.append(_exact(11, first, "AND"))
    if name_criteria and not contact_lookups:
        fallbacks.append(Lookup(tuple(name_criteria), "name"))
    contact_input: dict[str, Any] = {
        "name": last or first or snap.email or snap.phone or f"Chatwoot contact {contact.id}",
        "firstname": first if last else "",
        "entities_id": settings.entity_id,
        "comment": f"Chatwoot contact {marker}",
    }
    if snap.email:
        contact_input["email"] = snap.email
    if snap.phone:
        contact_input["phone"] = snap.phone
    return EnsureContact(
        tuple(contact_lookups), contact_input, snap, marker, _rebuilding(view) or earlier, tuple(fallbacks), not_before
    )


def _contact_sync_step(
    view: SyncView, account_id: int, contact: Contact, settings: HookSettings, ctx: SyncContext, *, update: bool
) -> Command | None:
    """The next command that makes GLPI hold this contact, or None when it already does.

    With ``update`` False (conversation and message events) an existing GLPI record is left as it is.
    """
    name, email, phone = _identity(contact, settings)
    if not (name or email or phone):
        return None
    record = view.contact
    if record is None or record.glpi_id is None:
        return _ensure_contact_command(view, account_id, contact, settings, ctx)
    if not update:
        return None
    snap = ContactSnapshot(account_id, contact.id, name or record.name, phone or record.phone, email)
    fields: dict[str, Any] = {}
    first, last = mapping.split_name(snap.name)
    if name and name != record.name:
        if settings.sync_type == "user":
            fields.update(firstname=first, realname=last)
        else:
            fields.update(name=last or first, firstname=first if last else "")
    if phone and phone != record.phone:
        fields["phone"] = phone
    if settings.sync_type == "contact" and email and email not in record.emails:
        fields["email"] = email
    if fields:
        return UpdateItem(record.glpi_itemtype or "User", record.glpi_id, fields, snapshot=snap)
    if settings.sync_type == "user" and email and email not in record.emails:
        return EnsureUserEmail(record.glpi_id, email, snap)
    return None


def _requester_step(view: SyncView, contact: Contact, settings: HookSettings) -> AddRequester | None:
    """Give the tickets created while this contact was anonymous their requester, once the contact is known.

    A User when ``sync_type=user`` (once GLPI holds one); an email-only requester when ``sync_type=contact``.
    """
    record = view.contact
    if record is None or not record.tickets_without_requester:
        return None
    ticket_id = record.tickets_without_requester[0]
    if settings.sync_type == "user":
        if record.glpi_id is None:
            return None
        return AddRequester(
            ticket_id, record.account_id, record.contact_id, record.glpi_id, None, settings.notify_requester
        )
    email = mapping.normalise_email(contact.email) or (record.emails[0] if record.emails else None)
    if email is None:
        return None
    return AddRequester(ticket_id, record.account_id, record.contact_id, None, email, settings.notify_requester)


def _decide_contact(view: SyncView, event: ContactEvent, settings: HookSettings, ctx: SyncContext) -> Step:
    contact = event.payload
    changed = contact.changed_keys()
    if event.event == "contact_updated" and changed and changed <= CONTACT_NOISE:
        return Finished("skipped", "noise: only " + ", ".join(sorted(changed)) + " changed")
    name, email, phone = _identity(contact, settings)
    if not (name or email or phone):
        return Finished("skipped", "contact not identifiable (no name, email or phone)")
    step = _contact_sync_step(view, event.account, contact, settings, ctx, update=True) or _requester_step(
        view, contact, settings
    )
    if step is not None:
        return step
    return Finished("skipped", "GLPI already holds this contact", _contact_ids(view))


def _contact_ids(view: SyncView) -> dict[str, int]:
    if view.contact and view.contact.glpi_id is not None:
        return {(view.contact.glpi_itemtype or "User").lower() + "_id": view.contact.glpi_id}
    return {}


# ------------------------------------------------------------------------------------------------------ tickets


def _contact_line(contact: Contact | None, settings: HookSettings) -> str:
    if contact is None:
        return ""
    name, email, phone = _identity(contact, settings)
    details = " · ".join(mapping.html_text(v) for v in (name, email, phone) if v)
    return f"<p>From: {details}</p>" if details else ""


def _attachment_lines(attachments: list[Any]) -> str:
    links = []
    for att in attachments:
        if att.data_url:
            label = att.fallback_title or att.data_url.rsplit("/", 1)[-1] or "attachment"
            links.append(mapping.html_link(att.data_url, f"{att.file_type or 'file'}: {label}"))
    return "<p>Attachments: " + "<br>".join(links) + "</p>" if links else ""


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
    name, email, _ = _identity(sender, settings) if sender else (None, None, None)
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
    earlier, not_before = _earlier_attempt(record.pending if record else None, marker, ctx)
    return CreateTicket(
        ticket,
        marker,
        account_id,
        conv.id,
        conv.status,
        lookup_first=_rebuilding(view) or earlier,
        not_before=not_before,
        contact_without_requester=without_requester,
    )


def _conversation_prelude(
    view: SyncView, account_id: int, conv: Conversation, settings: HookSettings, ctx: SyncContext
) -> Command | None:
    """What every conversation or message event needs first: the contact in GLPI, the ticket, its requester."""
    sender = conv.meta.sender
    if sender is not None:
        contact_step = _contact_sync_step(view, account_id, sender, settings, ctx, update=False)
        if contact_step is not None:
            return contact_step
    record = view.conversation
    if record is None or record.ticket_id is None:
        return _create_ticket_command(view, account_id, conv, settings, ctx)
    return _requester_step(view, sender, settings) if sender is not None else None


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


def _followup_content(msg: Message, conv: Conversation, settings: HookSettings, marker: str) -> str:
    when = f" · {mapping.glpi_datetime(msg.created_at, settings.timezone)}" if msg.created_at else ""
    note = " · private note" if msg.private else ""
    header = f"<p><strong>{mapping.html_text(_sender_label(msg, conv))}</strong>{note}{when}</p>"
    text = mapping.html_paragraphs(msg.content)
    attachments = _attachment_lines(msg.attachments)
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
            return Finished("skipped", "followup exists", {**ids, "followup_id": record.followup_id})
        if conversation.body_message_id == msg.id:
            # Tickets made before every message became a followup hold one message as their description.
            return Finished("skipped", "message is the ticket's description", ids)
        marker = mapping.followup_marker(msg.id)
        content = _followup_content(msg, conv, settings, marker)
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
    earlier, not_before = _earlier_attempt(record.pending if record else None, marker, ctx)
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
        lookup_first=below_cursor or _rebuilding(view) or earlier,
        purpose="deletion" if purpose == "deletion" else "message",
        not_before=not_before,
    )
