"""What the core asks the shell to do in GLPI, and what the shell reports back.

Commands are imperative, frozen and carry everything needed to run them; outcomes are past tense.
``Ensure*`` commands are "find, else create": the lookups are tried in order and the create runs only when none
matches, so replaying one never makes a duplicate. ``lookup_first`` is set when an :class:`~app.sync.state.Intent`
shows that an earlier attempt may already have created the object; ``not_before`` (unix seconds) is when that
attempt can no longer land in GLPI: until then the shell keeps looking instead of creating again.
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
    not_before: float = 0.0
    op: Literal["ensure_user"] = "ensure_user"


@dataclass(frozen=True)
class EnsureContact:
    lookups: tuple[Lookup, ...]
    input: dict[str, Any]
    snapshot: ContactSnapshot
    marker: str
    lookup_first: bool = False
    #: Lookups tried only when ``lookup_first`` (our marker, then the name).
    fallbacks: tuple[Lookup, ...] = ()
    not_before: float = 0.0
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
    status: str | None
    lookup_first: bool = False
    not_before: float = 0.0
    #: The Chatwoot contact the ticket is for, when it could not be given a requester yet (anonymous contact).
    contact_without_requester: int | None = None
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
    not_before: float = 0.0
    op: Literal["create_followup"] = "create_followup"


@dataclass(frozen=True)
class CheckTicket:
    """Read the conversation's ticket before writing to it again: it may have been closed, deleted or moved."""

    ticket_id: int
    op: Literal["check_ticket"] = "check_ticket"


@dataclass(frozen=True)
class AddRequester:
    """Make a contact, identified after its ticket was created, the ticket's requester (safe to repeat).

    ``user_id`` for a GLPI User; ``email`` alone for an email-only requester (``sync_type=contact``).
    """

    ticket_id: int
    account_id: int
    contact_id: int
    user_id: int | None
    email: str | None
    notify: bool = False
    op: Literal["add_requester"] = "add_requester"


@dataclass(frozen=True)
class StoreFile:
    """Download a Chatwoot attachment and upload it as a GLPI Document carrying ``marker`` in its comment.

    ``key`` names the attachment within its message (its id, else its position). ``lookup_first``: an earlier
    upload may have landed: look for a Document with the marker (and a file) before uploading again.
    """

    account_id: int
    conversation_id: int
    message_id: int
    key: str
    url: str
    name: str
    marker: str
    #: The GLPI entity the Document goes to (the hook's).
    entity_id: int = 0
    lookup_first: bool = False
    not_before: float = 0.0
    op: Literal["store_file"] = "store_file"


@dataclass(frozen=True)
class LinkFiles:
    """Link Documents to the followup (``Document_Item``), skipping the links it already has: safe to repeat."""

    account_id: int
    message_id: int
    followup_id: int
    document_ids: tuple[int, ...]
    op: Literal["link_files"] = "link_files"


Command = (
    EnsureUser
    | EnsureContact
    | UpdateItem
    | EnsureUserEmail
    | CreateTicket
    | CreateFollowup
    | CheckTicket
    | AddRequester
    | StoreFile
    | LinkFiles
)
Create = EnsureUser | EnsureContact | CreateTicket | CreateFollowup | StoreFile
CREATES = (EnsureUser, EnsureContact, CreateTicket, CreateFollowup, StoreFile)


def cautious(cmd: Command, not_before: float = 0.0) -> Command:
    """The same command, looking for its object before creating it (after an attempt with an unknown outcome).

    ``not_before`` raises the command's own bound: no new POST before that time.
    """
    if isinstance(cmd, EnsureUser | EnsureContact | CreateTicket | CreateFollowup | StoreFile):
        return replace(cmd, lookup_first=True, not_before=max(cmd.not_before, not_before))
    return cmd


@dataclass(frozen=True)
class Resolved:
    """The command's object exists in GLPI with ``glpi_id``; ``created`` is False when it was found."""

    glpi_id: int
    created: bool = True


@dataclass(frozen=True)
class Applied:
    """An update or an ensure-email finished (``changed`` is False when nothing had to be written)."""

    changed: bool = True


@dataclass(frozen=True)
class TicketState:
    """What GLPI shows of a ticket: its status (1-6) and whether it sits in the trash."""

    status: int
    deleted: bool = False


@dataclass(frozen=True)
class FileKept:
    """The attachment stays a link in the followup; ``reason`` says why (too large, unreachable, refused)."""

    reason: str


Outcome = Resolved | Applied | TicketState | FileKept


@dataclass(frozen=True)
class Finished:
    """The event needs nothing more. ``outcome`` is a metric label, ``reason`` a short human explanation."""

    outcome: Literal["synced", "skipped"]
    reason: str
    glpi_ids: dict[str, int] = field(default_factory=dict)


Step = Command | Finished
