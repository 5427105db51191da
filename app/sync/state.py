"""Sync state kept in the worker's tables, one record per hook, contact, conversation and message.

Records are frozen pydantic models; the shell stores ``model_dump(mode="json")`` and reads them back with
``model_validate``. Table keys are built by the ``*_key`` functions so no module spells them twice.

An :class:`Intent` is written (and flushed to the changelog) before every non-idempotent GLPI create. Finding one on
a record means an earlier attempt may have created the object, so the next attempt looks it up first, and does not
create again until that attempt can no longer land (``attempt_at`` + the late-commit window).

Every hook id the worker has seen has a *slot* in the hooks table: a :class:`HookRecord` once configured, an
:class:`UnconfiguredHook` before its ``hook_configured`` (or after ``hook_removed``). Both keep the hook's
partition and its parked queue, so events that arrive before the configuration wait instead of vanishing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from app.events import HookSettings
from app.files.policy import FilePolicy

PauseKind = Literal["transient", "auth", "endpoint", "operator"]
#: Pauses the worker retries on its own timer; the others wait for an operator.
SELF_HEALING_PAUSES: frozenset[str] = frozenset({"transient", "endpoint"})


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class Intent(_Record):
    """A create that may have reached GLPI: ``op`` names the command, ``marker`` the lookup key.

    ``attempt_at`` is when the latest POST started (unix seconds; 0 when unknown, for records of older versions).
    """

    op: str
    marker: str
    attempt_at: float = 0.0


class Pause(_Record):
    """Why a hook's events are parked instead of synced.

    ``transient``: GLPI stayed unreachable past the retry budget; the worker retries on its own.
    ``endpoint``: something that is not GLPI answers at the API URL (a redirect, a proxy or SSO page); retried too.
    ``auth``: credentials, API switch or rights are broken; resumes when the hook is reconfigured or resumed.
    ``operator``: paused by ``glpi-sync hook pause``; resumes with ``hook resume``.
    """

    kind: PauseKind
    reason: str
    since: str


class HookSlot(_Record):
    """What the worker keeps for every hook id it has seen: its partition and its parked queue."""

    hook_id: int
    partition: int | None = None
    parked_first: int = 0
    parked_next: int = 0

    @property
    def parked(self) -> int:
        """Events waiting in the parked queue, in order."""
        return self.parked_next - self.parked_first


class UnconfiguredHook(HookSlot):
    """A hook id with no usable configuration: never configured yet, or removed (``status``)."""

    status: Literal["unconfigured", "removed"] = "unconfigured"
    #: Events dead-lettered for this hook since it became unconfigured (the per-hook parking bound was reached).
    set_aside: int = 0


class HookRecord(HookSlot):
    """A hook's configuration plus its runtime bookkeeping (pause, parked-event queue, home partition)."""

    account_id: int
    status: Literal["enabled", "disabled"] = "enabled"
    account_features: tuple[str, ...] = ()
    settings: HookSettings
    pause: Pause | None = None
    #: After ``hook reset``: every create looks in GLPI first, so replayed events adopt what exists.
    rebuilding: bool = False
    #: Events dead-lettered because the hook was disabled (recover them with ``glpi-sync dlq replay --hook-id N``).
    set_aside: int = 0
    #: Drains in a row in which the queue's head failed on its own while GLPI answered other requests.
    head_failures: int = 0
    #: Two-way polls: per GLPI itemtype, the ``(date_mod, id)`` of the newest row seen.
    glpi_cursors: dict[str, tuple[str, int]] = {}

    @property
    def parking(self) -> bool:
        """New events must join the parked queue (to keep the hook's order)."""
        return self.pause is not None or self.parked > 0

    def __repr__(self) -> str:
        return (
            f"HookRecord(hook_id={self.hook_id}, account_id={self.account_id}, status={self.status!r}, "
            f"settings={self.settings!r})"
        )


AnyHook = HookRecord | UnconfiguredHook


def load_hook(raw: dict[str, Any]) -> AnyHook:
    """The slot stored in the hooks table (configured hooks carry ``settings``)."""
    if raw.get("settings") is not None:
        return HookRecord.model_validate(raw)
    return UnconfiguredHook.model_validate(raw)


class ContactRecord(_Record):
    """Which GLPI User or Contact a Chatwoot contact became, and the values last written there."""

    account_id: int
    contact_id: int
    glpi_itemtype: Literal["User", "Contact"] | None = None
    glpi_id: int | None = None
    name: str | None = None
    phone: str | None = None
    emails: tuple[str, ...] = ()
    #: Tickets created while the contact could not be a requester yet (anonymous); it becomes theirs once known.
    tickets_without_requester: tuple[int, ...] = ()
    pending: Intent | None = None


ReplacedBecause = Literal["deleted", "closed", "refused"]
#: Events of a conversation kept for ``glpi-sync trace`` (the newest ones).
TRACE_KEPT = 40


class ConversationRecord(_Record):
    """Which ticket a conversation became, the cursor of synced messages and the last status applied."""

    account_id: int
    conversation_id: int
    ticket_id: int | None = None
    body_message_id: int | None = None
    last_synced_message_id: int | None = None
    status: str | None = None
    replaced_ticket_ids: tuple[int, ...] = ()
    #: Why the latest entry of ``replaced_ticket_ids`` was replaced (the new ticket says so and links to it).
    replaced_because: ReplacedBecause | None = None
    #: When GLPI last showed the ticket usable (created, read open, or accepted a followup); unix seconds.
    ticket_checked_at: float | None = None
    #: What was sent to create the ticket (long texts cut), so ``resync`` can recreate it if it is deleted.
    ticket_input: dict[str, Any] | None = None
    pending: Intent | None = None
    #: Write-back: the ticket's ``ticket_id``, ``status`` and ``technician`` as last written on the Chatwoot
    #: conversation (None: never written).
    written_back: dict[str, Any] | None = None
    #: Written by earlier versions only: the conversation's latest events (now in the ``traces`` table,
    #: :mod:`app.pipeline.traces`); read as the oldest part of its trace, never written again.
    history: tuple[Any, ...] = ()


class MessageRecord(_Record):
    account_id: int
    message_id: int
    conversation_id: int
    followup_id: int | None = None
    deletion_followup_id: int | None = None
    #: What was sent to create the followup (long texts cut), so ``resync`` can add it again if it is missing.
    followup_input: dict[str, Any] | None = None
    pending: Intent | None = None
    #: The message's attachments as they went to GLPI, by key (id, else position): ``{"name", "document_id"}``
    #: when uploaded, ``{"name", "url", "reason"}`` when kept as a link.
    files: dict[str, dict[str, Any]] = {}
    #: The uploaded Documents are linked to the followup.
    files_linked: bool = False
    #: An upload that may have landed (its Document carries the marker).
    file_pending: Intent | None = None


class SyncView(_Record):
    """Everything one event's decision may read or change."""

    hook: HookRecord | None = None
    contact: ContactRecord | None = None
    conversation: ConversationRecord | None = None
    message: MessageRecord | None = None
    #: Every create looks in GLPI first (the hook is being rebuilt, or its partition's state was rebuilt).
    cautious: bool = False


@dataclass(frozen=True)
class HookPolicy:
    """What operators granted to hooks; a ``hook_configured`` that asks for more is refused, never resolved.

    Anything that can write to the producers' topic can send a ``hook_configured``: its token references must not
    reach the worker's own secrets (its Kafka password, a cloud credential, another tenant's token file), and its
    tokens must not be sent to a server of the sender's choosing.
    """

    #: Token references may name environment variables with this prefix only.
    env_prefix: str = "GLPI_SYNC_HOOK_SECRET_"
    #: ... and files under this directory only (no ``..``; symlinks are resolved when the file is read).
    secrets_dir: str = "/run/secrets/glpi-sync"
    #: GLPI hosts (``host`` or ``host:port``, lowercase) hooks may use; empty: any.
    allowed_hosts: frozenset[str] = frozenset()
    #: Chatwoot hosts hooks may send their Chatwoot token to; empty: any.
    allowed_chatwoot_hosts: frozenset[str] = frozenset()
    #: ``refuse``: inline tokens are not accepted at all.
    refuse_inline_tokens: bool = False


@dataclass(frozen=True)
class SyncContext:
    """Worker-wide policy and the event's clock (passed in; the core never reads settings or the time)."""

    chatwoot_base_url: str | None = None
    allow_http: bool = False
    required_feature: str = "crm_integration"
    #: Unix time at which the event started being decided (the same for all of its steps).
    now: float = 0.0
    #: Seconds after a create's POST during which GLPI may still commit it (a timeout is not a refusal).
    late_commit_window: float = 120.0
    #: A ticket not seen usable for this long is read before a followup is added (it may have been closed).
    ticket_recheck_seconds: float = 600.0
    #: What operators granted to hooks (token references, GLPI hosts).
    hook_policy: HookPolicy = field(default_factory=lambda: HookPolicy())
    #: Files both ways (``GLPI_SYNC_FILE_*``).
    files: FilePolicy = field(default_factory=FilePolicy)


def parked_key(hook_id: int, seq: int) -> str:
    return f"{hook_id}:{seq:012d}"


def contact_key(account_id: int, contact_id: int) -> str:
    return f"{account_id}:{contact_id}"


def conversation_key(account_id: int, conversation_id: int) -> str:
    return f"{account_id}:{conversation_id}"


def message_key(account_id: int, message_id: int) -> str:
    return f"{account_id}:{message_id}"
