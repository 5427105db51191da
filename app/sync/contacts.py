"""Contacts, decided without I/O: find-else-create a GLPI User or Contact, keep it current, make it the requester.

A contact is synced when identifiable (a real name, an email or a phone). Users are found by email, then phone, and
created only when none matches; Contacts (``sync_type=contact``) likewise by email, then phone, then name.
"""

from __future__ import annotations

from typing import Any

from app.events import (
    Contact,
    ContactEvent,
    HookSettings,
)
from app.sync import mapping
from app.sync.commands import (
    AddRequester,
    Command,
    ContactSnapshot,
    EnsureContact,
    EnsureUser,
    EnsureUserEmail,
    Finished,
    Lookup,
    SearchCriterion,
    Step,
    UpdateItem,
)
from app.sync.record import earlier_attempt, looks_first
from app.sync.state import SyncContext, SyncView

#: ``contact_updated`` changes that never reach GLPI.
CONTACT_NOISE = frozenset(
    {"last_activity_at", "updated_at", "additional_attributes", "custom_attributes", "avatar", "thumbnail"}
)


def ensure_contact_command(
    view: SyncView, account_id: int, contact: Contact, settings: HookSettings, ctx: SyncContext
) -> EnsureUser | EnsureContact:
    """Find-else-create for a contact (used by ``resync contact`` after its GLPI record vanished)."""
    return _ensure_contact_command(view, account_id, contact, settings, ctx)


def identity(contact: Contact, settings: HookSettings) -> tuple[str | None, str | None, str | None]:
    return (
        mapping.real_name(contact.name),
        mapping.normalise_email(contact.email),
        mapping.normalise_phone(contact.phone_number, settings.phone_region),
    )


def _snapshot(account_id: int, contact: Contact, settings: HookSettings) -> ContactSnapshot:
    name, email, phone = identity(contact, settings)
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
        earlier, not_before = earlier_attempt(pending, login, ctx)
        return EnsureUser(
            tuple(lookups), user_input, login, snap, lookup_first=looks_first(view) or earlier, not_before=not_before
        )
    marker = mapping.contact_marker(account_id, contact.id)
    contact_lookups = []
    if snap.email:
        contact_lookups.append(Lookup((_exact(6, snap.email),), "email"))
    if snap.phone and settings.match_by_phone:
        contact_lookups.append(Lookup((_exact(3, snap.phone),), "phone"))
    earlier, not_before = earlier_attempt(pending, marker, ctx)
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
        tuple(contact_lookups), contact_input, snap, marker, looks_first(view) or earlier, tuple(fallbacks), not_before
    )


def contact_sync_step(
    view: SyncView, account_id: int, contact: Contact, settings: HookSettings, ctx: SyncContext, *, update: bool
) -> Command | None:
    """The next command that makes GLPI hold this contact, or None when it already does.

    With ``update`` False (conversation and message events) an existing GLPI record is left as it is.
    """
    name, email, phone = identity(contact, settings)
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


def requester_step(view: SyncView, contact: Contact, settings: HookSettings) -> AddRequester | None:
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


def decide_contact(view: SyncView, event: ContactEvent, settings: HookSettings, ctx: SyncContext) -> Step:
    contact = event.payload
    changed = contact.changed_keys()
    if event.event == "contact_updated" and changed and changed <= CONTACT_NOISE:
        return Finished("skipped", "noise: only " + ", ".join(sorted(changed)) + " changed")
    name, email, phone = identity(contact, settings)
    if not (name or email or phone):
        return Finished("skipped", "contact not identifiable (no name, email or phone)")
    step = contact_sync_step(view, event.account, contact, settings, ctx, update=True) or requester_step(
        view, contact, settings
    )
    if step is not None:
        return step
    return Finished("skipped", "GLPI already holds this contact", contact_ids(view))


def contact_ids(view: SyncView) -> dict[str, int]:
    if view.contact and view.contact.glpi_id is not None:
        return {(view.contact.glpi_itemtype or "User").lower() + "_id": view.contact.glpi_id}
    return {}
