"""Fold GLPI outcomes into the sync state: ids learned, cursors advanced, intents set and cleared.

``with_intent`` runs *before* a create (the shell makes it durable before calling GLPI); ``record`` runs after
GLPI confirmed. Both are pure: they return a new :class:`~app.sync.state.SyncView`.
"""

from __future__ import annotations

from app.sync.commands import (
    Command,
    ContactSnapshot,
    CreateFollowup,
    CreateTicket,
    EnsureContact,
    EnsureUser,
    EnsureUserEmail,
    Outcome,
    Resolved,
    UpdateItem,
)
from app.sync.state import ContactRecord, ConversationRecord, Intent, MessageRecord, SyncView


def _contact_record(view: SyncView, snap: ContactSnapshot) -> ContactRecord:
    return view.contact or ContactRecord(account_id=snap.account_id, contact_id=snap.contact_id)


def _conversation_record(view: SyncView, account_id: int, conversation_id: int) -> ConversationRecord:
    return view.conversation or ConversationRecord(account_id=account_id, conversation_id=conversation_id)


def _message_record(view: SyncView, cmd: CreateFollowup) -> MessageRecord:
    return view.message or MessageRecord(
        account_id=cmd.account_id, message_id=cmd.message_id, conversation_id=cmd.conversation_id
    )


def intent_for(cmd: Command) -> Intent | None:
    """The intent to make durable before running ``cmd``; None for commands that are safe to repeat."""
    match cmd:
        case EnsureUser():
            return Intent(op=cmd.op, marker=cmd.login)
        case EnsureContact() | CreateTicket() | CreateFollowup():
            return Intent(op=cmd.op, marker=cmd.marker)
        case _:
            return None


def with_intent(view: SyncView, cmd: Command) -> SyncView:
    """The view with ``cmd``'s intent recorded on the record it will create (unchanged for other commands)."""
    intent = intent_for(cmd)
    if intent is None:
        return view
    match cmd:
        case EnsureUser() | EnsureContact():
            contact = _contact_record(view, cmd.snapshot)
            return view.model_copy(update={"contact": contact.model_copy(update={"pending": intent})})
        case CreateTicket():
            conv = _conversation_record(view, cmd.account_id, cmd.conversation_id)
            return view.model_copy(update={"conversation": conv.model_copy(update={"pending": intent})})
        case CreateFollowup():
            msg = _message_record(view, cmd)
            return view.model_copy(update={"message": msg.model_copy(update={"pending": intent})})
        case _:  # pragma: no cover - intent_for returned None above
            return view


def _emails(existing: tuple[str, ...], email: str | None) -> tuple[str, ...]:
    return existing if not email or email in existing else (*existing, email)


def _record_update(view: SyncView, cmd: UpdateItem) -> SyncView:
    if cmd.snapshot is not None:
        wrote = cmd.snapshot
        contact = _contact_record(view, wrote)
        emails = _emails(contact.emails, wrote.email) if cmd.itemtype == "Contact" else contact.emails
        updated = contact.model_copy(update={"name": wrote.name, "phone": wrote.phone, "emails": emails})
        return view.model_copy(update={"contact": updated})
    if cmd.conversation_status is not None and view.conversation is not None:
        conv = view.conversation.model_copy(update={"status": cmd.conversation_status})
        return view.model_copy(update={"conversation": conv})
    return view


def record(view: SyncView, cmd: Command, outcome: Outcome) -> SyncView:
    """The view after GLPI confirmed ``cmd`` with ``outcome``."""
    match cmd:
        case EnsureUser() | EnsureContact():
            assert isinstance(outcome, Resolved)
            contact = _contact_record(view, cmd.snapshot)
            snap = cmd.snapshot
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
        case UpdateItem():
            return _record_update(view, cmd)
        case EnsureUserEmail():
            contact = _contact_record(view, cmd.snapshot)
            updated = contact.model_copy(update={"emails": _emails(contact.emails, cmd.email)})
            return view.model_copy(update={"contact": updated})
        case CreateTicket():
            assert isinstance(outcome, Resolved)
            conv = _conversation_record(view, cmd.account_id, cmd.conversation_id)
            cursor = max(filter(None, (conv.last_synced_message_id, cmd.body_message_id)), default=None)
            updated_conv = conv.model_copy(
                update={
                    "ticket_id": outcome.glpi_id,
                    "body_message_id": cmd.body_message_id,
                    "last_synced_message_id": cursor,
                    "status": cmd.status,
                    "ticket_input": cmd.input,
                    "pending": None,
                }
            )
            return view.model_copy(update={"conversation": updated_conv})
        case CreateFollowup():
            assert isinstance(outcome, Resolved)
            msg = _message_record(view, cmd)
            update: dict[str, object] = {"pending": None}
            if cmd.purpose == "message":
                update.update(followup_id=outcome.glpi_id, followup_input=cmd.input)
            else:
                update["deletion_followup_id"] = outcome.glpi_id
            updated_msg = msg.model_copy(update=update)
            new_view = view.model_copy(update={"message": updated_msg})
            if cmd.purpose == "message" and view.conversation is not None:
                cursor = max(view.conversation.last_synced_message_id or 0, cmd.message_id)
                conv = view.conversation.model_copy(update={"last_synced_message_id": cursor})
                new_view = new_view.model_copy(update={"conversation": conv})
            return new_view
