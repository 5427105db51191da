"""The worker's side of the dashboard: one conversation's view, read from our tables and the hook's GLPI.

Served on ``/state/hook/{hook_id}/conversation/{conversation_id}/agent`` (the admin or dashboard token; any worker
forwards it to the hook's owner, as ``trace`` does), and kept :data:`VIEW_SECONDS` so agents opening the same
conversation do not each cost GLPI five requests. GLPI is read without ``expand_dropdowns`` (ids), names apart
(:mod:`app.pipeline.user_names`).
When GLPI cannot be read, the view says so in a word and still shows the sync's state: the error's text may name
internal hosts and stays in the worker's log.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from app.glpi import GlpiError, GlpiNotFoundError
from app.ops import hook_state
from app.pipeline.clients import HookClients
from app.pipeline.store import SyncStore
from app.pipeline.user_names import UserNames
from app.secrets import HookConfigError
from app.sync.state import HookRecord, conversation_key
from app.twoway.attributes import glpi_root

from .shape import requester_view, sync_view, ticket_view, timeline

log = logging.getLogger("cwglpi.worker")
#: Seconds a conversation's view is reused.
VIEW_SECONDS = 10.0
#: Views kept per worker.
VIEWS_KEPT = 500


class AgentViews:
    """Builds (and briefly keeps) what the dashboard shows of a conversation."""

    def __init__(self, store: SyncStore, clients: HookClients, user_names: UserNames) -> None:
        self.store = store
        self.clients = clients
        self.user_names = user_names
        self._kept: dict[tuple[int, int], tuple[float, dict[str, Any]]] = {}

    async def frame(self, hook_id: int) -> tuple[int, dict[str, Any]]:
        """HTTP status and body: the hook's Chatwoot URL (the only site that may frame its dashboard app)."""
        slot = self.store.slot(hook_id)
        if not isinstance(slot, HookRecord):
            return 404, {"error": f"hook {hook_id} is not configured"}
        return 200, {"chatwoot_url": slot.settings.chatwoot_url}

    async def view(self, hook_id: int, conversation_id: int) -> tuple[int, dict[str, Any]]:
        """HTTP status and body: 404 when the hook is not configured here, else the conversation's view."""
        slot = self.store.slot(hook_id)
        if not isinstance(slot, HookRecord):
            return 404, {"error": f"hook {hook_id} is not configured"}
        now = time.monotonic()
        kept = self._kept.get((hook_id, conversation_id))
        if kept is not None and now - kept[0] < VIEW_SECONDS:
            return 200, kept[1]
        body = await self._build(slot, conversation_id)
        if len(self._kept) >= VIEWS_KEPT:
            self._kept.pop(next(iter(self._kept)))
        self._kept[(hook_id, conversation_id)] = (now, body)
        return 200, body

    async def _build(self, hook: HookRecord, conversation_id: int) -> dict[str, Any]:
        raw = self.store.conversations.get(conversation_key(hook.account_id, conversation_id))
        conversation = {**raw, "history": self.store.trace_of(hook.account_id, conversation_id)} if raw else None
        body: dict[str, Any] = {
            "conversation_id": conversation_id,
            "chatwoot_url": hook.settings.chatwoot_url,
            "ticket": None,
            "requester": None,
            "timeline": [],
            "glpi": "ok",
            "sync": sync_view(conversation, hook_state(hook), hook.parked),
        }
        ticket_id = conversation.get("ticket_id") if conversation else None
        if not isinstance(ticket_id, int):
            body["glpi"] = "no ticket yet"
            return body
        root = glpi_root(hook.settings.api_url)
        try:
            client = self.clients.client_for(hook)
            ticket = await client.get_item("Ticket", ticket_id)
            actors = await client.get_subitems("Ticket", ticket_id, "Ticket_User")
            followups = await client.get_subitems("Ticket", ticket_id, "ITILFollowup")
            solutions = await client.get_subitems("Ticket", ticket_id, "ITILSolution")
            public = [row for row in followups if not row.get("is_private")]
            authors = [row.get("users_id") for row in (*actors, *public, *solutions)]
            names = await self.user_names.names(client, hook.hook_id, authors)
        except GlpiNotFoundError:
            body["glpi"] = f"ticket {ticket_id} is gone from GLPI"
            return body
        except (GlpiError, HookConfigError) as exc:
            log.warning("dashboard: ticket %s not read: %s", ticket_id, exc, extra={"hook_id": hook.hook_id})
            body["glpi"] = "GLPI did not answer; try again in a moment"
            return body
        body["ticket"] = ticket_view(ticket, actors, names, root)
        body["requester"] = requester_view(actors, names, root)
        body["timeline"] = timeline(public, solutions, names)
        return body
