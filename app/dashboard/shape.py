"""What the dashboard shows of one conversation. Pure: GLPI rows and our records in, a JSON-ready view out.

Agents of the hook's account see it (any of them can read the page's key), so it holds nothing an agent of that
account may not see: the ticket, its public followups and solutions (never GLPI's private followups, which are
technicians' notes), the requester's name, and the sync's own state. No token, no GLPI error text (it may name
internal hosts), no stack.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from app.twoway.attributes import status_name, technicians
from app.twoway.plan import OUR_FOLLOWUP_MARKER, plain_text

#: GLPI's names of a ticket's priority (and urgency, impact).
PRIORITY_NAMES = {1: "Very low", 2: "Low", 3: "Medium", 4: "High", 5: "Very high", 6: "Major"}
REQUESTER = 1
#: Public followups and solutions shown, the newest ones.
TIMELINE_KEPT = 10
#: Outcomes an agent should hear about, with their reason.
PROBLEM_OUTCOMES = frozenset({"parked", "dead_lettered", "set_aside"})
PROBLEMS_KEPT = 10
#: The first line of a followup we wrote: its author, then `` · private note`` and `` · <date>`` when they apply.
_OUR_HEADER = re.compile(r"^(?P<author>.*?)(?: · private note)?(?: · \d{4}-\d{2}-\d{2} \d{2}:\d{2}(?::\d{2})?)?$")


def ticket_view(
    ticket: Mapping[str, Any], actors: Iterable[Mapping[str, Any]], names: Mapping[int, str], root: str
) -> dict[str, Any]:
    """The ticket's number, title, status, priority, technicians and link."""
    ticket_id = int(ticket.get("id") or 0)
    priority = ticket.get("priority")
    status = ticket.get("status")
    return {
        "id": ticket_id,
        "title": str(ticket.get("name") or ""),
        "status": status_name(status if isinstance(status, int) else None),
        "priority": PRIORITY_NAMES.get(priority, f"priority {priority}") if isinstance(priority, int) else "",
        "technician": technicians(actors, names) or "",
        "deleted": bool(ticket.get("is_deleted")),
        "url": f"{root}/front/ticket.form.php?id={ticket_id}",
    }


def requester_view(actors: Iterable[Mapping[str, Any]], names: Mapping[int, str], root: str) -> dict[str, Any] | None:
    """The ticket's first requester that is a GLPI user, with a link; None when it has none."""
    for row in actors:
        user_id = row.get("users_id")
        if row.get("type") == REQUESTER and isinstance(user_id, int) and not isinstance(user_id, bool) and user_id > 0:
            return {"name": names.get(user_id) or f"user {user_id}", "url": f"{root}/front/user.form.php?id={user_id}"}
    return None


def _entry(row: Mapping[str, Any], kind: str, names: Mapping[int, str]) -> dict[str, Any]:
    text = plain_text(row.get("content"))
    user_id = row.get("users_id")
    author = names.get(user_id) if isinstance(user_id, int) else None
    origin = "glpi"
    if OUR_FOLLOWUP_MARKER.search(text):  # written by us from a Chatwoot message: "<author> · <date>", text, marker
        origin = "chatwoot"
        lines = [line for line in text.splitlines() if not OUR_FOLLOWUP_MARKER.fullmatch(line.strip())]
        header = _OUR_HEADER.match(lines[0]) if lines else None
        if header:  # always, for a followup of ours
            author, lines = header.group("author"), lines[1:]
        text = "\n".join(lines).strip()
    return {
        "at": str(row.get("date") or row.get("date_creation") or ""),
        "kind": kind,
        "from": origin,
        "author": author or "",
        "text": text,
    }


def timeline(
    followups: Iterable[Mapping[str, Any]], solutions: Iterable[Mapping[str, Any]], names: Mapping[int, str]
) -> list[dict[str, Any]]:
    """The newest public followups and solutions, oldest first; private followups never appear."""
    entries = [_entry(row, "followup", names) for row in followups if not row.get("is_private")]
    entries += [_entry(row, "solution", names) for row in solutions]
    entries.sort(key=lambda e: e["at"])
    return entries[-TIMELINE_KEPT:]


def sync_view(conversation: Mapping[str, Any] | None, hook_state: str, parked_on_hook: int) -> dict[str, Any]:
    """The sync's state for the conversation: the last message synced, the hook's state, and recent problems."""
    history = conversation.get("history") if isinstance(conversation, Mapping) else None
    problems = [
        {
            "at": str(e.get("at", "")),
            "event": str(e.get("event", "")),
            "outcome": e["outcome"],
            "reason": str(e.get("reason", "")),
        }
        for e in (history if isinstance(history, list) else [])
        if isinstance(e, Mapping) and e.get("outcome") in PROBLEM_OUTCOMES
    ]
    return {
        "last_synced_message_id": conversation.get("last_synced_message_id") if conversation else None,
        "hook": hook_state,
        "parked_on_hook": parked_on_hook,
        "problems": problems[-PROBLEMS_KEPT:],
    }
