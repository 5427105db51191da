"""What the core asks the shell to do in GLPI, and what the shell reports back.

Commands are imperative, frozen and carry everything needed to run them; outcomes are past tense.
``Ensure*`` commands are "find, else create": the lookups are tried in order and the create runs only when none
matches, so replaying one never makes a duplicate. ``lookup_first`` is set when an :class:`~app.sync.state.Intent`
shows that an earlier attempt may already have created the object.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal


@dataclass(frozen=True)
class SearchCriterion:
    """One GLPI search criterion: option id, search type and value (``contains`` ``^v$`` = exact).

    ``link`` joins it to the previous criterion and is ignored on the first one.
    """

    field: int
    searchtype: Literal["contains", "equals"]
    value: str
    link: Literal["AND", "OR"] = "OR"


@dataclass(frozen=True)
class ContactSnapshot:
    """The Chatwoot contact values a contact command writes to GLPI, remembered once GLPI confirms."""

    account_id: int
    contact_id: int
    name: str | None
    phone: str | None
    email: str | None


@dataclass(frozen=True)
class Lookup:
    """Criteria ORed together on one itemtype."""

    criteria: tuple[SearchCriterion, ...]
    describe: str


@dataclass(frozen=True)
class EnsureUser:
    lookups: tuple[Lookup, ...]
    input: dict[str, Any]
    login: str
    snapshot: ContactSnapshot
    lookup_first: bool = False
    op: Literal["ensure_user"] = "ensure_user"


@dataclass(frozen=True)
class EnsureContact:
    lookups: tuple[Lookup, ...]
    input: dict[str, Any]
    snapshot: ContactSnapshot
    marker: str
    lookup_first: bool = False
    fallback: Lookup | None = None
    op: Literal["ensure_contact"] = "ensure_contact"


@dataclass(frozen=True)
class UpdateItem:
    """PUT the full desired values of some fields: safe to repeat."""

    itemtype: Literal["User", "Contact", "Ticket"]
    item_id: int
    input: dict[str, Any]
    snapshot: ContactSnapshot | None = None
    conversation_status: str | None = None
    op: Literal["update_item"] = "update_item"


@dataclass(frozen=True)
class EnsureUserEmail:
    """Add ``email`` to a user unless one of its UserEmail rows already has it (case-insensitive)."""

    user_id: int
    email: str
    snapshot: ContactSnapshot
    op: Literal["ensure_user_email"] = "ensure_user_email"


@dataclass(frozen=True)
class CreateTicket:
    input: dict[str, Any]
    marker: str
    account_id: int
    conversation_id: int
    body_message_id: int | None
    status: str | None
    lookup_first: bool = False
    op: Literal["create_ticket"] = "create_ticket"


@dataclass(frozen=True)
class CreateFollowup:
    ticket_id: int
    input: dict[str, Any]
    marker: str
    account_id: int
    conversation_id: int
    message_id: int
    lookup_first: bool = False
    purpose: Literal["message", "deletion"] = "message"
    op: Literal["create_followup"] = "create_followup"


Command = EnsureUser | EnsureContact | UpdateItem | EnsureUserEmail | CreateTicket | CreateFollowup


def cautious(cmd: Command) -> Command:
    """The same command, looking for its object before creating it (after an attempt with an unknown outcome)."""
    if isinstance(cmd, EnsureUser | EnsureContact | CreateTicket | CreateFollowup):
        return replace(cmd, lookup_first=True)
    return cmd


CREATES = (EnsureUser, EnsureContact, CreateTicket, CreateFollowup)


@dataclass(frozen=True)
class Resolved:
    """The command's object exists in GLPI with ``glpi_id``; ``created`` is False when it was found."""

    glpi_id: int
    created: bool = True


@dataclass(frozen=True)
class Applied:
    """An update or an ensure-email finished (``changed`` is False when nothing had to be written)."""

    changed: bool = True


Outcome = Resolved | Applied


@dataclass(frozen=True)
class Finished:
    """The event needs nothing more. ``outcome`` is a metric label, ``reason`` a short human explanation."""

    outcome: Literal["synced", "skipped"]
    reason: str
    glpi_ids: dict[str, int] = field(default_factory=dict)


Step = Command | Finished
