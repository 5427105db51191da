"""The guide's "force re-sync": check in GLPI what the state says exists, and recreate what is missing.

Nothing that exists is created again: contacts and tickets are checked by id, followups by their markers, and every
create goes through the intent protocol (durable intent, lookup first, late-commit wait) like any other.
"""

from __future__ import annotations

import html
import time

from app.events import Contact, ControlCommand
from app.execute import GlpiExecutor, RetryPolicy
from app.glpi import GlpiClient, GlpiNotFoundError
from app.pipeline.clients import HookClients
from app.pipeline.store import SyncStore
from app.sync import mapping
from app.sync.commands import Command, Create, CreateFollowup, CreateTicket, Outcome, cautious
from app.sync.contacts import ensure_contact_command
from app.sync.record import record, ticket_replaced, with_intent
from app.sync.state import HookRecord, SyncContext, SyncView


async def _exists(client: GlpiClient, itemtype: str, item_id: int) -> bool:
    try:
        item = await client.get_item(itemtype, item_id)
    except GlpiNotFoundError:
        return False
    return not item.get("is_deleted")


class _Resync:
    def __init__(self, store: SyncStore, client: GlpiClient, policy: RetryPolicy, ctx: SyncContext, hook: HookRecord):
        self.store = store
        self.ctx = ctx
        self.hook = hook
        self.client = client
        self.executor = GlpiExecutor(client, policy)

    async def run(self, view: SyncView, cmd: Command) -> tuple[SyncView, Outcome]:
        """Run one create with a durable intent before its POST; returns the recorded view and the outcome."""
        current = view

        async def before_post(create: Create, at: float) -> None:
            nonlocal current
            before, current = current, with_intent(current, create, at)
            await self.store.persist(before, current, True)

        outcome = await self.executor.run(cmd, before_post)
        after = record(current, cmd, outcome, time.time())
        await self.store.persist(current, after, True)
        return after, outcome

    async def contact(self, contact_id: int) -> str:
        store, hook = self.store, self.hook
        contact = store.contact(hook.account_id, contact_id)
        if contact is None:
            return f"contact {contact_id} was never synced: publish its contact_created again"
        if contact.glpi_id is not None and await _exists(self.client, contact.glpi_itemtype or "User", contact.glpi_id):
            return f"contact {contact_id}: {contact.glpi_itemtype} {contact.glpi_id} exists"
        chatwoot = Contact(
            id=contact.contact_id, name=contact.name, email=(contact.emails or (None,))[0], phone_number=contact.phone
        )
        view = SyncView(hook=hook, contact=contact.model_copy(update={"glpi_id": None}))
        cmd = ensure_contact_command(view, hook.account_id, chatwoot, hook.settings, self.ctx)
        _, outcome = await self.run(view, cautious(cmd))
        return f"contact {contact_id}: {contact.glpi_itemtype} {contact.glpi_id} was missing, now {outcome}"

    async def conversation(self, conversation_id: int) -> str:
        store, hook = self.store, self.hook
        conv = store.conversation(hook.account_id, conversation_id)
        if conv is None:
            return f"conversation {conversation_id} was never synced: publish its events again"
        view = SyncView(hook=hook, conversation=conv)
        notes = []
        if conv.ticket_id is None or not await _exists(self.client, "Ticket", conv.ticket_id):
            if conv.ticket_input is None:
                return f"conversation {conversation_id}: no ticket and nothing stored to rebuild it from"
            gone = conv.ticket_id
            view = ticket_replaced(view, gone, "deleted") if gone is not None else view
            previous = f"GLPI ticket #{gone}" if gone is not None else "a lost ticket"
            content = str(conv.ticket_input.get("content", "")) + (
                f"<p>Recreated by a re-sync: {previous} was deleted in GLPI.</p>"
            )
            ticket_cmd = CreateTicket(
                {**conv.ticket_input, "content": content},
                mapping.ticket_marker(hook.account_id, conv.conversation_id),
                hook.account_id,
                conv.conversation_id,
                conv.status,
                lookup_first=True,
            )
            view, _ = await self.run(view, ticket_cmd)
            notes.append(f"ticket recreated (was {gone})")
        assert view.conversation is not None
        assert view.conversation.ticket_id is not None
        ticket_id = view.conversation.ticket_id
        present = " ".join(
            html.unescape(str(row.get("content", "")))
            for row in await self.client.get_subitems("Ticket", ticket_id, "ITILFollowup")
        )
        added = 0
        for msg in store.messages_of(hook.account_id, conv.conversation_id):
            marker = mapping.followup_marker(msg.message_id)
            if msg.followup_input is None or marker in present:
                continue
            followup = CreateFollowup(
                ticket_id,
                {**msg.followup_input, "items_id": ticket_id},
                marker,
                hook.account_id,
                conv.conversation_id,
                msg.message_id,
            )
            await self.run(SyncView(hook=hook, conversation=view.conversation, message=msg), followup)
            added += 1
        notes.append(f"{added} missing followup(s) added")
        return f"conversation {conversation_id} → ticket {ticket_id}: " + ", ".join(notes)


class Resync:
    """The ``resync_contact`` and ``resync_conversation`` commands."""

    def __init__(self, store: SyncStore, clients: HookClients, policy: RetryPolicy, ctx: SyncContext) -> None:
        self.store = store
        self.clients = clients
        self.policy = policy
        self.ctx = ctx

    async def run(self, hook: HookRecord, command: ControlCommand) -> str:
        """Run the command for ``hook``; returns what it found and what it recreated."""
        job = _Resync(self.store, self.clients.client_for(hook), self.policy, self.ctx, hook)
        payload = command.payload
        if command.event == "resync_contact":
            if payload.contact_id is None:
                return "resync_contact needs a contact_id"
            return await job.contact(payload.contact_id)
        if payload.conversation_id is None:
            return "resync_conversation needs a conversation_id"
        return await job.conversation(payload.conversation_id)
