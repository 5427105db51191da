"""Sync state kept in the worker's tables, one record per hook, contact, conversation and message.

Records are frozen pydantic models; the shell stores ``model_dump(mode="json")`` and reads them back with
``model_validate``. Table keys are built by the ``*_key`` functions so no module spells them twice.

An :class:`Intent` is written (and flushed to the changelog) before a non-idempotent GLPI create. Finding one on a
record means a previous attempt may have created the object, so the next attempt looks it up first.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.events import HookSettings


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class Intent(_Record):
    """A create that may have reached GLPI: ``op`` names the command, ``marker`` the lookup key."""

    op: str
    marker: str


class Pause(_Record):
    """Why a hook's events are parked instead of synced.

    ``transient``: GLPI stayed unreachable past the retry budget; the worker retries on its own.
    ``auth``: credentials, API switch or rights are broken; resumes when the hook is reconfigured or resumed.
    ``operator``: paused by ``glpi-sync hook pause``; resumes with ``hook resume``.
    """

    kind: Literal["transient", "auth", "operator"]
    reason: str
    since: str


class HookRecord(_Record):
    """A hook's configuration plus its runtime bookkeeping (pause, parked-event queue, home partition)."""

    hook_id: int
    account_id: int
    status: Literal["enabled", "disabled"] = "enabled"
    account_features: tuple[str, ...] = ()
    settings: HookSettings
    pause: Pause | None = None
    parked_first: int = 0
    parked_next: int = 0
    partition: int | None = None
    #: After ``hook reset``: every create looks in GLPI first, so replayed events adopt what exists.
    rebuilding: bool = False

    @property
    def parked(self) -> int:
        """Events waiting in the parked queue, in order."""
        return self.parked_next - self.parked_first

    @property
    def parking(self) -> bool:
        """New events must join the parked queue (to keep the hook's order)."""
        return self.pause is not None or self.parked > 0

    def __repr__(self) -> str:
        return (
            f"HookRecord(hook_id={self.hook_id}, account_id={self.account_id}, status={self.status!r}, "
            f"settings={self.settings!r})"
        )


class ContactRecord(_Record):
    """Which GLPI User or Contact a Chatwoot contact became, and the values last written there."""

    account_id: int
    contact_id: int
    glpi_itemtype: Literal["User", "Contact"] | None = None
    glpi_id: int | None = None
    name: str | None = None
    phone: str | None = None
    emails: tuple[str, ...] = ()
    pending: Intent | None = None


class ConversationRecord(_Record):
    """Which ticket a conversation became, the cursor of synced messages and the last status applied."""

    account_id: int
    conversation_id: int
    ticket_id: int | None = None
    body_message_id: int | None = None
    last_synced_message_id: int | None = None
    status: str | None = None
    replaced_ticket_ids: tuple[int, ...] = ()
    #: What was sent to create the ticket, so ``resync`` can recreate it if it is deleted in GLPI.
    ticket_input: dict[str, Any] | None = None
    pending: Intent | None = None


class MessageRecord(_Record):
    account_id: int
    message_id: int
    conversation_id: int
    followup_id: int | None = None
    deletion_followup_id: int | None = None
    #: What was sent to create the followup, so ``resync`` can add it again if it is missing in GLPI.
    followup_input: dict[str, Any] | None = None
    pending: Intent | None = None


class SyncView(_Record):
    """Everything one event's decision may read or change."""

    hook: HookRecord | None = None
    contact: ContactRecord | None = None
    conversation: ConversationRecord | None = None
    message: MessageRecord | None = None


class SyncContext(_Record):
    """Worker-wide policy the core needs (passed in; the core never reads settings)."""

    chatwoot_base_url: str | None = None
    allow_http: bool = False
    required_feature: str = "crm_integration"
    extra: dict[str, str] = Field(default_factory=dict)


def parked_key(hook_id: int, seq: int) -> str:
    return f"{hook_id}:{seq:012d}"


def contact_key(account_id: int, contact_id: int) -> str:
    return f"{account_id}:{contact_id}"


def conversation_key(account_id: int, conversation_id: int) -> str:
    return f"{account_id}:{conversation_id}"


def message_key(account_id: int, message_id: int) -> str:
    return f"{account_id}:{message_id}"
