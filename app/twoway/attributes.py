"""Write-back: what agents see of GLPI in Chatwoot, as custom attributes. Pure: values in, attributes out.

A hook with a Chatwoot connection (``chatwoot_url`` and ``chatwoot_token``, with or without two-way) keeps, on each
conversation that became a ticket, the ticket's number, a link to it, its status and its technicians, and on the
contact, the GLPI User or Contact it became with a link. Every key we write starts with ``glpi_``
(:data:`CONVERSATION_KEYS`, :data:`CONTACT_KEYS`); every other attribute is the operators' and is never changed.

Chatwoot's conversation endpoint *replaces* the whole attribute object (``custom_attributes = params[...]``), so
the shell reads the conversation's attributes and posts :func:`merged` (theirs kept, ours updated). The contact's
``PUT`` merges on Chatwoot's side. Writing only when :func:`merged` finds a difference keeps repeats and
Chatwoot's ``conversation_updated``/``contact_updated`` echoes of our own write from changing anything.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

#: GLPI's ticket statuses, as GLPI names them.
STATUS_NAMES = {
    1: "New",
    2: "Processing (assigned)",
    3: "Processing (planned)",
    4: "Pending",
    5: "Solved",
    6: "Closed",
}
#: The ``type`` of a ``Ticket_User`` row for the technicians assigned to the ticket.
ASSIGNED = 2

#: The attribute definitions ``hook set`` creates when missing: (key, model, display type, display name, description).
DEFINITIONS: tuple[tuple[str, str, str, str, str], ...] = (
    ("glpi_ticket", "conversation_attribute", "number", "GLPI ticket", "The GLPI ticket this conversation became"),
    ("glpi_ticket_url", "conversation_attribute", "link", "GLPI ticket link", "Opens the ticket in GLPI"),
    ("glpi_ticket_status", "conversation_attribute", "text", "GLPI status", "The ticket's status in GLPI"),
    ("glpi_technician", "conversation_attribute", "text", "GLPI technician", "Technicians assigned in GLPI"),
    ("glpi_requester", "contact_attribute", "text", "GLPI requester", "The GLPI User or Contact of this contact"),
    ("glpi_requester_url", "contact_attribute", "link", "GLPI requester link", "Opens the requester in GLPI"),
)
CONVERSATION_KEYS = tuple(key for key, model, *_ in DEFINITIONS if model == "conversation_attribute")
CONTACT_KEYS = tuple(key for key, model, *_ in DEFINITIONS if model == "contact_attribute")


#: The marker our tickets carry in their description (``app.sync.mapping.ticket_marker``): account, conversation.
_TICKET_MARKER = re.compile(r"\[cw:(\d+)/(\d+)\]")


def conversation_of_ticket(row: Mapping[str, Any], account_id: int) -> int | None:
    """The conversation a ticket row says it was made for (its description's marker), in ``account_id``.

    None when it carries no marker of that account. A claim to check against our record: anyone may type one.
    """
    for account, conversation in _TICKET_MARKER.findall(str(row.get("content") or "")):
        if int(account) == account_id:
            return int(conversation)
    return None


def glpi_root(api_url: str) -> str:
    """GLPI's web root from its API URL (``…/apirest.php`` or GLPI 11's ``…/api.php/v1``)."""
    return api_url.removesuffix("/apirest.php").removesuffix("/api.php/v1").rstrip("/")


def status_name(status: int | None) -> str:
    """GLPI's name of a ticket status (``status 9`` for one GLPI does not define)."""
    return STATUS_NAMES.get(status or 0, f"status {status}")


def technicians(ticket_users: Iterable[Mapping[str, Any]], names: Mapping[int, str]) -> str | None:
    """The assigned technicians' names, comma-separated, from ``Ticket_User`` rows read without expansion.

    ``names`` maps GLPI user ids to display names; an assigned user not in it shows as ``user N``. None: nobody
    is assigned.
    """
    shown = []
    for row in ticket_users:
        user_id = row.get("users_id")
        if row.get("type") != ASSIGNED or not isinstance(user_id, int) or isinstance(user_id, bool) or user_id <= 0:
            continue
        name = names.get(user_id) or f"user {user_id}"
        if name not in shown:
            shown.append(name)
    return ", ".join(shown) or None


def conversation_attributes(root: str, ticket_id: int, status: int | None, technician: str | None) -> dict[str, Any]:
    """Our attributes of a conversation whose ticket is ``ticket_id`` (an unassigned ticket: an empty text)."""
    return {
        "glpi_ticket": ticket_id,
        "glpi_ticket_url": f"{root}/front/ticket.form.php?id={ticket_id}",
        "glpi_ticket_status": status_name(status),
        "glpi_technician": technician or "",
    }


def contact_attributes(root: str, itemtype: str, glpi_id: int, name: str | None) -> dict[str, Any]:
    """Our attributes of a contact that became GLPI ``itemtype`` ``glpi_id`` (a User or a Contact)."""
    form = "user.form.php" if itemtype == "User" else "contact.form.php"
    return {
        "glpi_requester": f"{name or itemtype} ({itemtype} {glpi_id})",
        "glpi_requester_url": f"{root}/front/{form}?id={glpi_id}",
    }


def merged(current: Any, ours: Mapping[str, Any]) -> dict[str, Any] | None:
    """``current`` attributes with ours written over them, or None when they already say what ours say.

    ``current`` is what Chatwoot holds (anything that is not an object counts as none); keys that are not ours
    are kept as they are.
    """
    held = dict(current) if isinstance(current, Mapping) else {}
    if all(held.get(key) == value for key, value in ours.items()):
        return None
    return {**held, **ours}


def ticket_changes(
    rows: Iterable[Mapping[str, Any]],
    conversations: Mapping[int, int],
    written: Mapping[int, Mapping[str, Any] | None],
    technician_of: Mapping[int, str | None],
    hook_id: int,
    account_id: int,
) -> list[dict[str, Any]]:
    """``glpi_ticket_changed`` envelopes for our tickets whose status or technicians differ from what was written.

    ``rows`` are ticket rows (``id``, ``status``, ``date_mod``) newer than the poll's cursor; ``conversations``
    maps our tickets to their conversations, ``written`` to the values last written to Chatwoot (None: never),
    ``technician_of`` to their technicians now (tickets missing from it are not compared: their actors were not
    read).
    """
    events = []
    for row in rows:
        ticket, status = row.get("id"), row.get("status")
        if not isinstance(ticket, int) or ticket not in conversations or ticket not in technician_of:
            continue
        now = {"ticket_id": ticket, "status": status, "technician": technician_of[ticket]}
        before = written.get(ticket)
        if before is not None and all(before.get(key) == value for key, value in now.items()):
            continue
        events.append(
            {
                "event": "glpi_ticket_changed",
                "hook_id": hook_id,
                "account_id": account_id,
                "event_id": f"glpi:Ticket:{ticket}:attributes:{row.get('date_mod')}",
                "payload": {
                    "itemtype": "Ticket",
                    "item_id": ticket,
                    "ticket_id": ticket,
                    "conversation_id": conversations[ticket],
                    "status": status if isinstance(status, int) else None,
                    "technician": technician_of[ticket],
                    "date": row.get("date_mod"),
                },
            }
        )
    return events
