"""GLPI changes → Chatwoot actions. Pure: rows in, events and messages out; no I/O, no clock.

A poll of GLPI 10 lists followups, solutions and tickets by ``date_mod`` (newest first) and keeps what is newer than
the hook's cursor (``date_mod``, then ``id`` as the tie-breaker, since GLPI's times have whole seconds). Of those,
only rows of tickets in our mapping become events, and never a followup we wrote ourselves (it carries our
``[cw-msg:…]`` marker). Each event names its conversation, so the worker runs it in that conversation's lane,
after the conversation's own events.

The other way round, a Chatwoot message we post carries ``content_attributes.cwglpi`` = the GLPI item it came
from; its ``message_created`` webhook comes back to us and :func:`is_our_echo` keeps it out of GLPI.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from app.events import ECHO_ATTRIBUTE

#: Our followups from Chatwoot messages carry this marker (app/sync/mapping.py); they never flow back.
OUR_FOLLOWUP_MARKER = re.compile(r"\[cw-msg:\d+\]")
#: GLPI ticket statuses that resolve the conversation; the others (new, assigned, planned, pending) reopen it.
RESOLVED_STATUSES = frozenset({5, 6})

ChangeKind = Literal["glpi_followup_added", "glpi_solution_added", "glpi_status_changed"]


@dataclass(frozen=True, order=True)
class Cursor:
    """Where a poll of one itemtype stopped: rows at or before it were seen."""

    date_mod: str = ""
    item_id: int = 0

    def before(self, date_mod: str, item_id: int) -> bool:
        """Whether a row with this ``date_mod`` and id is newer than the cursor."""
        return (date_mod, item_id) > (self.date_mod, self.item_id)


def newer_rows(rows: list[dict[str, Any]], cursor: Cursor) -> tuple[list[dict[str, Any]], Cursor]:
    """The rows newer than ``cursor``, oldest first, and the cursor after them."""
    fresh = [
        row
        for row in rows
        if isinstance(row.get("id"), int) and cursor.before(str(row.get("date_mod") or ""), row["id"])
    ]
    fresh.sort(key=lambda r: (str(r.get("date_mod") or ""), r["id"]))
    if not fresh:
        return [], cursor
    last = fresh[-1]
    return fresh, Cursor(str(last.get("date_mod") or ""), last["id"])


def plain_text(content: Any) -> str:
    """A followup's HTML as plain text for a chat message: tags dropped, entities decoded exactly once.

    The client reads with ``X-GLPI-Sanitized-Content: false``, so GLPI 10 and 11 both give the HTML the technician
    wrote (``a &amp;lt; b`` stays the ``a &lt; b`` they typed). Only text still in GLPI 10's storage encoding (no
    raw tag at all, ``&#60;`` instead: the header was lost on the way) is decoded once more first.
    """
    value = str(content or "")
    if "<" not in value and "&#60;" in value:
        value = html.unescape(value)
    value = re.sub(r"(?i)<br\s*/?>|</p>|</div>|</li>", "\n", value)
    value = html.unescape(re.sub(r"<[^>]+>", "", value))
    lines = [line.strip() for line in value.splitlines()]
    return "\n".join(line for line in lines if line).strip()


def rows_to_sync(rows: list[dict[str, Any]], conversations: Mapping[int, int]) -> list[dict[str, Any]]:
    """The followup or solution rows of tickets in ``conversations`` (ticket id → conversation id), except ours.

    Rows must be read without ``expand_dropdowns`` (``items_id`` is then the ticket's id, not its name).
    """
    kept = []
    for row in rows:
        ticket = row.get("items_id")
        if row.get("itemtype", "Ticket") != "Ticket" or not isinstance(ticket, int) or ticket not in conversations:
            continue
        if OUR_FOLLOWUP_MARKER.search(html.unescape(str(row.get("content") or ""))):
            continue  # written by us from a Chatwoot message: it must not come back
        kept.append(row)
    return kept


def change_events(
    kind: ChangeKind,
    rows: list[dict[str, Any]],
    conversations: Mapping[int, int],
    hook_id: int,
    account_id: int,
    authors: Mapping[int, str] | None = None,
) -> list[dict[str, Any]]:
    """Envelopes for new followup or solution rows of tickets in ``conversations`` (ticket id → conversation id).

    ``authors`` names the GLPI users by id (the rows carry ``users_id`` as an id); an author not in it is unnamed.
    """
    itemtype = "ITILFollowup" if kind == "glpi_followup_added" else "ITILSolution"
    events = []
    for row in rows_to_sync(rows, conversations):
        ticket = row["items_id"]
        user_id = row.get("users_id")
        author = (authors or {}).get(user_id) if isinstance(user_id, int) else None
        events.append(
            {
                "event": kind,
                "hook_id": hook_id,
                "account_id": account_id,
                "event_id": f"glpi:{itemtype}:{row['id']}",
                "payload": {
                    "itemtype": itemtype,
                    "item_id": row["id"],
                    "ticket_id": ticket,
                    "conversation_id": conversations[ticket],
                    "content": plain_text(row.get("content")),
                    "is_private": bool(row.get("is_private")),
                    "author": author,
                    "date": row.get("date") or row.get("date_mod"),
                },
            }
        )
    return events


def status_events(
    rows: list[dict[str, Any]],
    conversations: Mapping[int, int],
    chatwoot_status: Mapping[int, str | None],
    hook_id: int,
    account_id: int,
) -> list[dict[str, Any]]:
    """Envelopes for tickets in the mapping whose GLPI status disagrees with their conversation's.

    ``chatwoot_status`` is, per ticket, the conversation status last applied in either direction (the conversation
    record's ``status``): a ticket solved or closed in GLPI while its conversation is not resolved resolves it; a
    ticket reopened in GLPI while its conversation is resolved reopens it. Comparing states, not transitions, makes
    a repeated poll and Chatwoot's own echo of our change harmless.
    """
    events = []
    for row in rows:
        ticket, status = row.get("id"), row.get("status")
        if not isinstance(ticket, int) or ticket not in conversations or not isinstance(status, int):
            continue
        resolved_in_glpi = status in RESOLVED_STATUSES
        resolved_in_chatwoot = chatwoot_status.get(ticket) == "resolved"
        if resolved_in_glpi == resolved_in_chatwoot:
            continue
        events.append(
            {
                "event": "glpi_status_changed",
                "hook_id": hook_id,
                "account_id": account_id,
                "event_id": f"glpi:Ticket:{ticket}:status:{status}:{row.get('date_mod')}",
                "payload": {
                    "itemtype": "Ticket",
                    "item_id": ticket,
                    "ticket_id": ticket,
                    "conversation_id": conversations[ticket],
                    "status": status,
                    "date": row.get("date_mod"),
                },
            }
        )
    return events


@dataclass(frozen=True)
class ChatwootAction:
    """What to do in the conversation: post a message (``private`` for a note), set its status, or both."""

    ref: str
    content: str | None = None
    private: bool = False
    status: Literal["resolved", "open"] | None = None


def action_for(
    kind: str,
    payload: Mapping[str, Any],
    *,
    private_followups: Literal["skip", "note"],
    resolve_on_solution: bool,
) -> ChatwootAction | str:
    """The Chatwoot action for one GLPI change, or why there is none (a skip reason)."""
    ref = f"{payload.get('itemtype')}:{payload.get('item_id')}"
    if kind == "glpi_status_changed":
        status = payload.get("status")
        return ChatwootAction(ref, status="resolved" if status in RESOLVED_STATUSES else "open")
    content = str(payload.get("content") or "").strip()
    author = payload.get("author")
    files = [f for f in payload.get("attachments") or [] if isinstance(f, dict) and f.get("url")]
    # Files posted as attachments show in the message; the others are listed as links, with why when known.
    links = [f for f in files if not f.get("attached")]
    if links:
        listed = "\n".join(
            f"- {f.get('name') or 'file'}: {f['url']}" + (f" (not attached: {f['reason']})" if f.get("reason") else "")
            for f in links
        )
        content = f"{content}\n\nAttachments:\n{listed}".strip()
    if not content and len(links) == len(files):
        return "the GLPI item has no text"
    signed = f"{content}\n\n— {author} (GLPI)" if author else content
    if kind == "glpi_followup_added":
        if payload.get("is_private"):
            if private_followups == "skip":
                return "private followup (two_way_private_followups=skip)"
            return ChatwootAction(ref, signed, private=True)
        return ChatwootAction(ref, signed)
    return ChatwootAction(ref, signed, status="resolved" if resolve_on_solution else None)


def display_name(user: Mapping[str, Any]) -> str | None:
    """How a GLPI user is named to a customer: first and last name, else the login; None when GLPI gave neither."""
    full = " ".join(str(user.get(key) or "").strip() for key in ("firstname", "realname")).strip()
    login = str(user.get("name") or "").strip()
    return " ".join(full.split()) or login or None


def glpi_epoch(date: str | None, timezone: str) -> float | None:
    """A GLPI ``YYYY-MM-DD HH:MM:SS`` (in the GLPI server's time zone) as unix seconds; None when unreadable."""
    try:
        moment = datetime.strptime(str(date), "%Y-%m-%d %H:%M:%S").replace(tzinfo=ZoneInfo(timezone))
    except (ValueError, KeyError, ZoneInfoNotFoundError):
        return None
    return moment.timestamp()


def is_our_echo(content_attributes: Mapping[str, Any] | None) -> bool:
    """Whether a Chatwoot message is one we posted from GLPI (it must never become a followup)."""
    return bool(content_attributes) and ECHO_ATTRIBUTE in (content_attributes or {})
