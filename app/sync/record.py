"""Fold GLPI outcomes into the sync state: ids learned, cursors advanced, intents set and cleared.

``with_intent`` runs *before* every create POST (the shell makes it durable before calling GLPI); ``record`` runs
after GLPI answered. Both are pure: they return a new :class:`~app.sync.state.SyncView`. ``now`` is the unix time
the shell observed the outcome at (the core never reads the clock).
"""

from __future__ import annotations

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
    FileKept,
    LinkFiles,
    Outcome,
    Resolved,
    StoreFile,
    TicketState,
    UpdateItem,
)
from app.sync.mapping import stored_input
from app.sync.state import (
    ContactRecord,
    ConversationRecord,
    Intent,
    MessageRecord,
    ReplacedBecause,
    SyncContext,
    SyncView,
)

#: GLPI ticket status Closed: terminal; a conversation that goes on gets a new ticket linked to it.
CLOSED = 6
MAX_TICKETS_WITHOUT_REQUESTER = 50


def looks_first(view: SyncView) -> bool:
    """Creates look in GLPI first: the partition's state was rebuilt, or the hook is being reset."""
    return view.cautious or (view.hook is not None and view.hook.rebuilding)


def earlier_attempt(pending: Intent | None, marker: str, ctx: SyncContext) -> tuple[bool, float]:
    """``(lookup_first, not_before)`` for a create whose record holds ``pending``.

    An intent for the same object means an earlier POST may have created it, now or later: look first, and do not
    POST again before that attempt can no longer land.
    """
    if pending is None or pending.marker != marker:
        return False, 0.0
    return True, (pending.attempt_at + ctx.late_commit_window) if pending.attempt_at else 0.0


def _contact_record(view: SyncView, account_id: int, contact_id: int) -> ContactRecord:
    if view.contact is not None and view.contact.contact_id == contact_id:
        return view.contact
    return ContactRecord(account_id=account_id, contact_id=contact_id)


def _conversation_record(view: SyncView, account_id: int, conversation_id: int) -> ConversationRecord:
    return view.conversation or ConversationRecord(account_id=account_id, conversation_id=conversation_id)


def _message_record(view: SyncView, cmd: CreateFollowup | StoreFile) -> MessageRecord:
    return view.message or MessageRecord(
        account_id=cmd.account_id, message_id=cmd.message_id, conversation_id=cmd.conversation_id
    )


def intent_for(cmd: Command, attempt_at: float = 0.0) -> Intent | None:
    """The intent to make durable before ``cmd``'s POST; None for commands that are safe to repeat."""
    match cmd:
        case EnsureUser():
            return Intent(op=cmd.op, marker=cmd.login, attempt_at=attempt_at)
        case EnsureContact() | CreateTicket() | CreateFollowup() | StoreFile():
            return Intent(op=cmd.op, marker=cmd.marker, attempt_at=attempt_at)
        case _:
            return None


def with_intent(view: SyncView, cmd: Command, attempt_at: float = 0.0) -> SyncView:
    """The view with ``cmd``'s intent recorded on the record it will create (unchanged for other commands)."""
    intent = intent_for(cmd, attempt_at)
    if intent is None:
        return view
    match cmd:
        case EnsureUser() | EnsureContact():
            snap = cmd.snapshot
            contact = _contact_record(view, snap.account_id, snap.contact_id)
            return view.model_copy(update={"contact": contact.model_copy(update={"pending": intent})})
        case CreateTicket():
            conv = _conversation_record(view, cmd.account_id, cmd.conversation_id)
            return view.model_copy(update={"conversation": conv.model_copy(update={"pending": intent})})
        case CreateFollowup():
            msg = _message_record(view, cmd)
            return view.model_copy(update={"message": msg.model_copy(update={"pending": intent})})
        case StoreFile():
            msg = _message_record(view, cmd)
            return view.model_copy(update={"message": msg.model_copy(update={"file_pending": intent})})
        case _:  # pragma: no cover - intent_for returned None above
            return view


def without_intent(view: SyncView, cmd: Command) -> SyncView:
    """The view with ``cmd``'s intent cleared: GLPI definitely refused the POST, so nothing of it can land."""
    match cmd:
        case EnsureUser() | EnsureContact() if view.contact is not None:
            return view.model_copy(update={"contact": view.contact.model_copy(update={"pending": None})})
        case CreateTicket() if view.conversation is not None:
            return view.model_copy(update={"conversation": view.conversation.model_copy(update={"pending": None})})
        case CreateFollowup() if view.message is not None:
            return view.model_copy(update={"message": view.message.model_copy(update={"pending": None})})
        case StoreFile() if view.message is not None:
            return view.model_copy(update={"message": view.message.model_copy(update={"file_pending": None})})
        case _:
            return view


def ticket_replaced(view: SyncView, ticket_id: int, because: ReplacedBecause) -> SyncView:
    """The view after the conversation's ticket became unusable: deleted, closed, or refused to us.

    The mapping is cleared so the next step creates a new ticket, which names (and links to) the one it replaces;
    messages synced to the old ticket are not re-sent (their text is in Chatwoot), later ones go to the new ticket.
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
            "ticket_checked_at": None,
            "replaced_ticket_ids": (*conv.replaced_ticket_ids, ticket_id),
            "replaced_because": because,
        }
    )
    return view.model_copy(update={"conversation": replaced})


def _emails(existing: tuple[str, ...], email: str | None) -> tuple[str, ...]:
    return existing if not email or email in existing else (*existing, email)


def _ticket_seen(view: SyncView, now: float) -> SyncView:
    if view.conversation is None:
        return view
    return view.model_copy(update={"conversation": view.conversation.model_copy(update={"ticket_checked_at": now})})


def _record_update(view: SyncView, cmd: UpdateItem, now: float) -> SyncView:
    if cmd.snapshot is not None:
        wrote = cmd.snapshot
        contact = _contact_record(view, wrote.account_id, wrote.contact_id)
        emails = _emails(contact.emails, wrote.email) if cmd.itemtype == "Contact" else contact.emails
        updated = contact.model_copy(update={"name": wrote.name, "phone": wrote.phone, "emails": emails})
        return view.model_copy(update={"contact": updated})
    if cmd.conversation_status is not None and view.conversation is not None:
        conv = view.conversation.model_copy(update={"status": cmd.conversation_status, "ticket_checked_at": now})
        return view.model_copy(update={"conversation": conv})
    return view


def _record_contact(view: SyncView, cmd: EnsureUser | EnsureContact, outcome: Resolved) -> SyncView:
    snap: ContactSnapshot = cmd.snapshot
    contact = _contact_record(view, snap.account_id, snap.contact_id)
    updated = contact.model_copy(
        update={
            "glpi_itemtype": "User" if isinstance(cmd, EnsureUser) else "Contact",
            "glpi_id": outcome.glpi_id,
            "name": snap.name,
            "phone": snap.phone,
            # A found user may lack this email; created ones got it through _useremails.
            "emails": _emails(contact.emails, snap.email) if outcome.created else contact.emails,
            "pending": None,
        }
    )
    return view.model_copy(update={"contact": updated})


def _record_ticket(view: SyncView, cmd: CreateTicket, outcome: Resolved, now: float) -> SyncView:
    conv = _conversation_record(view, cmd.account_id, cmd.conversation_id)
    updated_conv = conv.model_copy(
        update={
            "ticket_id": outcome.glpi_id,
            "body_message_id": None,
            "status": cmd.status,
            "ticket_input": stored_input(cmd.input),
            "ticket_checked_at": now,
            "pending": None,
        }
    )
    new_view = view.model_copy(update={"conversation": updated_conv})
    if cmd.contact_without_requester is not None:
        contact = _contact_record(view, cmd.account_id, cmd.contact_without_requester)
        if outcome.glpi_id not in contact.tickets_without_requester:
            # Bounded: a contact that stays anonymous across many conversations keeps the latest ones.
            waiting = (*contact.tickets_without_requester, outcome.glpi_id)[-MAX_TICKETS_WITHOUT_REQUESTER:]
            contact = contact.model_copy(update={"tickets_without_requester": waiting})
        new_view = new_view.model_copy(update={"contact": contact})
    return new_view


def _record_followup(view: SyncView, cmd: CreateFollowup, outcome: Resolved, now: float) -> SyncView:
    msg = _message_record(view, cmd)
    update: dict[str, object] = {"pending": None}
    if cmd.purpose == "message":
        update.update(followup_id=outcome.glpi_id, followup_input=stored_input(cmd.input))
    else:
        update["deletion_followup_id"] = outcome.glpi_id
    new_view = view.model_copy(update={"message": msg.model_copy(update=update)})
    if view.conversation is not None:
        conv_update: dict[str, object] = {"ticket_checked_at": now}
        if cmd.purpose == "message":
            conv_update["last_synced_message_id"] = max(view.conversation.last_synced_message_id or 0, cmd.message_id)
        conv = view.conversation.model_copy(update=conv_update)
        new_view = new_view.model_copy(update={"conversation": conv})
    return new_view


def _record_file(view: SyncView, cmd: StoreFile, outcome: Outcome) -> SyncView:
    msg = _message_record(view, cmd)
    if isinstance(outcome, Resolved):
        entry: dict[str, object] = {"name": cmd.name, "document_id": outcome.glpi_id}
    else:
        assert isinstance(outcome, FileKept)
        entry = {"name": cmd.name, "url": cmd.url, "reason": outcome.reason}
    files = {**msg.files, cmd.key: entry}
    return view.model_copy(update={"message": msg.model_copy(update={"files": files, "file_pending": None})})


def record(view: SyncView, cmd: Command, outcome: Outcome, now: float = 0.0) -> SyncView:
    """The view after GLPI answered ``cmd`` with ``outcome`` (observed at unix time ``now``)."""
    match cmd:
        case EnsureUser() | EnsureContact():
            assert isinstance(outcome, Resolved)
            return _record_contact(view, cmd, outcome)
        case UpdateItem():
            return _record_update(view, cmd, now)
        case EnsureUserEmail():
            contact = _contact_record(view, cmd.snapshot.account_id, cmd.snapshot.contact_id)
            updated = contact.model_copy(update={"emails": _emails(contact.emails, cmd.email)})
            return view.model_copy(update={"contact": updated})
        case CreateTicket():
            assert isinstance(outcome, Resolved)
            return _record_ticket(view, cmd, outcome, now)
        case CreateFollowup():
            assert isinstance(outcome, Resolved)
            return _record_followup(view, cmd, outcome, now)
        case CheckTicket():
            assert isinstance(outcome, TicketState)
            if outcome.deleted:
                return ticket_replaced(view, cmd.ticket_id, "deleted")
            if outcome.status == CLOSED:
                return ticket_replaced(view, cmd.ticket_id, "closed")
            return _ticket_seen(view, now)
        case StoreFile():
            return _record_file(view, cmd, outcome)
        case LinkFiles():
            if view.message is None:
                return view
            return view.model_copy(update={"message": view.message.model_copy(update={"files_linked": True})})
        case AddRequester():
            contact = _contact_record(view, cmd.account_id, cmd.contact_id)
            waiting = tuple(t for t in contact.tickets_without_requester if t != cmd.ticket_id)
            updated = contact.model_copy(update={"tickets_without_requester": waiting})
            return view.model_copy(update={"contact": updated})
