"""Write-back's I/O: the ticket's number, link, status and technicians onto its Chatwoot conversation.

The GLPI requester goes onto the contact. What is written, and why repeating it is safe: :mod:`app.twoway.attributes`.

A ``glpi_ticket_changed`` event (queued by the hook's poll, :mod:`app.pipeline.twoway`, when a ticket of ours is
new to it or its status or technicians changed) runs in its conversation's lane, after the conversation's own
events. It reads the conversation's attributes, posts them back with ours merged in when they differ, does the
same for the contact (whose ``PUT`` merges on Chatwoot's side), then records what it wrote on the conversation
record so the next poll queues nothing until GLPI changes again. A crash in between writes the same values again.
"""

from __future__ import annotations

from typing import Any

from app.chatwoot.api import ChatwootClient, ChatwootError
from app.events import GlpiChange
from app.pipeline.chatwoot import chatwoot_client, chatwoot_failure
from app.pipeline.dead_letters import DeadLetters
from app.pipeline.outcomes import OutcomeLog
from app.pipeline.source import SourceRecord
from app.pipeline.store import SyncStore
from app.secrets import HookConfigError, TokenVault
from app.sync.state import ConversationRecord, HookRecord, SyncContext, SyncView
from app.twoway.attributes import contact_attributes, conversation_attributes, glpi_root, merged


class WriteBack:
    """Applies ``glpi_ticket_changed`` events of hooks with a Chatwoot connection."""

    def __init__(
        self,
        *,
        store: SyncStore,
        ctx: SyncContext,
        vault: TokenVault,
        chatwoot_timeout: float,
        outcomes: OutcomeLog,
        dead_letters: DeadLetters,
    ) -> None:
        self.store = store
        self.ctx = ctx
        self.vault = vault
        self.chatwoot_timeout = chatwoot_timeout
        self.outcomes = outcomes
        self.dead_letters = dead_letters

    async def apply(self, record: SourceRecord, change: GlpiChange, started: float) -> None:
        """Write one ticket's attributes and log the outcome."""
        outcome, reason = await self._apply(record, change)
        self.outcomes.finish(record, change, outcome, reason, started)

    async def _apply(self, record: SourceRecord, change: GlpiChange) -> tuple[str, str]:
        hook = self.store.hook(change.hook_id)
        if hook is None or not hook.settings.writes_back or hook.status != "enabled":
            return "skipped", "write-back is off for this hook (no Chatwoot connection)"
        payload = change.payload
        conversation = self.store.conversation(hook.account_id, payload.conversation_id)
        if conversation is None or conversation.ticket_id != payload.ticket_id:
            return "skipped", f"conversation {payload.conversation_id} is no longer on ticket {payload.ticket_id}"
        written = {"ticket_id": payload.ticket_id, "status": payload.status, "technician": payload.technician}
        what = f"write-back of ticket {payload.ticket_id} to conversation {payload.conversation_id}"
        try:
            async with chatwoot_client(hook, self.ctx, self.vault, self.chatwoot_timeout) as client:
                done = await self._write(client, hook, conversation, written)
        except (HookConfigError, ChatwootError) as exc:
            return await chatwoot_failure(exc, record, self.dead_letters, hook.hook_id, what)
        if conversation.written_back != written:
            after = conversation.model_copy(update={"written_back": written})
            await self.store.persist(SyncView(conversation=conversation), SyncView(conversation=after), True)
        if not done:
            return "skipped", f"{what}: Chatwoot shows it already"
        return "synced", f"{what}: " + ", ".join(done)

    async def _write(
        self, client: ChatwootClient, hook: HookRecord, conversation: ConversationRecord, written: dict[str, Any]
    ) -> list[str]:
        root = glpi_root(hook.settings.api_url)
        done = []
        shown = await client.conversation(conversation.conversation_id)
        ours = conversation_attributes(root, written["ticket_id"], written["status"], written["technician"])
        update = merged(shown.get("custom_attributes"), ours)
        if update is not None:
            await client.set_conversation_attributes(conversation.conversation_id, update)
            done.append(f"conversation attributes ({ours['glpi_ticket_status']})")
        meta = shown.get("meta")
        sender = meta.get("sender") if isinstance(meta, dict) else None
        contact_id = sender.get("id") if isinstance(sender, dict) else None
        contact = self.store.contact(hook.account_id, contact_id) if isinstance(contact_id, int) else None
        if contact is not None and contact.glpi_itemtype and contact.glpi_id:
            theirs = contact_attributes(root, contact.glpi_itemtype, contact.glpi_id, contact.name)
            held = sender.get("custom_attributes") if isinstance(sender, dict) else None
            if merged(held, theirs) is not None:
                await client.update_contact_attributes(contact.contact_id, theirs)
                done.append(f"contact {contact.contact_id}'s requester")
        return done
