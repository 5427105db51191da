"""Two-way sync's I/O: poll GLPI for technicians' changes on our tickets, and apply them to Chatwoot.

The same poll serves write-back (a hook with a Chatwoot connection, two-way or not): our tickets modified since
its ``Ticket`` cursor whose status or technicians differ from what was last written become ``glpi_ticket_changed``
events, applied by :mod:`app.pipeline.write_back`.

**Poll** (``hook_poll``, queued by the worker's timer on the hook's control partition, so it runs on the worker
that owns the hook): list the most recently modified followups, solutions and tickets (``GET /{itemtype}`` sorted
by ``date_mod``, a few requests per poll), keep what is newer than the hook's cursors, turn it into ``glpi_*``
events (``app/twoway/plan.py``), publish them to the control topic keyed by hook, then move the cursors. A crash in
between publishes them again; the events' stable ids and the ``replies`` table make that harmless. The first poll
of a hook only sets its cursors: turning two-way on does not replay a ticket's history into the conversation.

**Apply** (a ``glpi_*`` event, in its conversation's lane): post the message through Chatwoot's API with the
intent protocol of the other direction. Before the POST, ``replies[<account>:<ref>]`` gets ``pending_at``
(awaited on the changelog); after it, the Chatwoot message id. A POST whose outcome is unknown (timeout, dropped
connection, 5xx, a crash) is never repeated blindly: the next attempt reads the conversation's messages and adopts
the one carrying our marker (``content_attributes.cwglpi``) before posting again. A status is set with an explicit
``toggle_status`` (safe to repeat), after the conversation record says so, so Chatwoot's echo of it changes nothing
in GLPI.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

import orjson

from app.chatwoot.api import ChatwootClient, ChatwootError, ChatwootUnreachableError
from app.events import GlpiChange
from app.files.transfer import Fetched, FileMover
from app.glpi import GlpiError
from app.metrics import Metrics
from app.pipeline.chatwoot import chatwoot_client, chatwoot_failure
from app.pipeline.clients import HookClients
from app.pipeline.dead_letters import DeadLetters
from app.pipeline.documents import TechnicianFiles
from app.pipeline.locks import KeyedLocks
from app.pipeline.outcomes import OutcomeLog
from app.pipeline.source import SourceRecord
from app.pipeline.store import SyncStore
from app.pipeline.user_names import UserNames
from app.secrets import HookConfigError, TokenVault
from app.sync.state import HookRecord, SyncContext, SyncView
from app.twoway.attributes import conversation_of_ticket, technicians, ticket_changes
from app.twoway.plan import (
    Cursor,
    action_for,
    change_events,
    glpi_epoch,
    newer_rows,
    rows_to_sync,
    status_events,
)

if TYPE_CHECKING:
    from app.glpi.client import GlpiClient


@dataclass(frozen=True)
class _OurTickets:
    """Per ticket of ours: its conversation, and the conversation's last status."""

    conversations: dict[int, int]
    statuses: dict[int, str | None]


log = logging.getLogger("cwglpi.worker")
#: Rows read per itemtype and page, and pages per poll (a busier GLPI is caught up over the next polls).
POLL_PAGE = 50
POLL_PAGES = 4
#: Attempts of one Chatwoot action whose outcome stays unknown, and the pause between them.
APPLY_ATTEMPTS = 4
APPLY_PAUSE_SECONDS = 2.0


class TwoWay:
    """Poll and apply for the hooks with ``two_way`` on."""

    def __init__(
        self,
        *,
        store: SyncStore,
        clients: HookClients,
        control: Any,
        hook_locks: KeyedLocks,
        ctx: SyncContext,
        vault: TokenVault,
        chatwoot_timeout: float,
        outcomes: OutcomeLog,
        dead_letters: DeadLetters,
        metrics: Metrics,
        user_names: UserNames,
        files: FileMover | None = None,
    ) -> None:
        self.store = store
        #: Technicians' Documents: listed by the poll, posted as Chatwoot attachments (None: they stay links).
        self.documents = TechnicianFiles(files, clients, ctx.files.max_per_message) if files is not None else None
        self.clients = clients
        #: The control topic: polls publish the GLPI changes there, keyed by hook.
        self.control = control
        self.hook_locks = hook_locks
        self.ctx = ctx
        self.vault = vault
        self.chatwoot_timeout = chatwoot_timeout
        self.outcomes = outcomes
        self.dead_letters = dead_letters
        self.metrics = metrics
        #: Technicians' names for the message signature and write-back.
        self.user_names = user_names

    # ------------------------------------------------------------------------------------------- poll

    def _tickets(self, account_id: int) -> _OurTickets:
        """Our tickets of the account: their conversations and the conversations' last status (a scan: two-way)."""
        ours = _OurTickets({}, {})
        for value in list(self.store.conversations.values()):
            if isinstance(value, dict) and value.get("account_id") == account_id and value.get("ticket_id"):
                ticket = int(value["ticket_id"])
                ours.conversations[ticket] = int(value["conversation_id"])
                ours.statuses[ticket] = value.get("status")
        return ours

    async def _recent(self, client: GlpiClient, itemtype: str, cursor: Cursor | None) -> list[dict[str, Any]]:
        """Rows newest first, page after page while a whole page is newer than ``cursor``."""
        rows: list[dict[str, Any]] = []
        for page in range(POLL_PAGES):
            try:
                batch = await client.recent_items(itemtype, start=page * POLL_PAGE, limit=POLL_PAGE)
            except GlpiError as exc:
                if exc.code == "ERROR_RANGE_EXCEED_TOTAL":
                    break  # no (more) rows
                raise
            rows += batch
            oldest = batch[-1] if batch else None
            if (
                cursor is None
                or len(batch) < POLL_PAGE
                or oldest is None
                or not cursor.before(str(oldest.get("date_mod") or ""), int(oldest.get("id") or 0))
            ):
                break
        return rows

    async def _ticket_changes(
        self, client: GlpiClient, hook: HookRecord, cursors: dict[str, tuple[str, int]]
    ) -> list[dict[str, Any]]:
        """Write-back: our tickets changed since the cursor whose status or technicians differ from what was written.

        A ticket's ``date_mod`` moves with every change (a followup, an actor added or removed), so each changed
        ticket of ours costs one read of its actors; the first poll looks at the newest page only. A row is ours
        when its marker names a conversation whose record holds that ticket (looked up one by one: no scan).
        """
        known = cursors.get("Ticket")
        # The same ticket changes again and again, and GLPI's times have whole seconds: the last second seen is
        # read again (a second change within it would otherwise hide behind the cursor). Comparing states makes
        # seeing a ticket twice harmless.
        cursor = Cursor(known[0], -1) if known else None
        rows = await self._recent(client, "Ticket", cursor)
        fresh, moved = newer_rows(rows, cursor or Cursor())
        cursors["Ticket"] = (moved.date_mod, moved.item_id) if fresh else (known or ("", 0))
        conversations: dict[int, int] = {}
        written: dict[int, dict[str, Any] | None] = {}
        technician_of: dict[int, str | None] = {}
        for row in fresh:
            conversation_id = conversation_of_ticket(row, hook.account_id)
            record = self.store.conversation(hook.account_id, conversation_id) if conversation_id else None
            if record is None or record.ticket_id != row["id"]:
                continue
            conversations[row["id"]], written[row["id"]] = record.conversation_id, record.written_back
            actors = [a for a in await client.get_subitems("Ticket", row["id"], "Ticket_User") if a.get("type") == 2]
            technician_of[row["id"]] = technicians(
                actors, await self.user_names.names(client, hook.hook_id, [a.get("users_id") for a in actors])
            )
        return ticket_changes(fresh, conversations, written, technician_of, hook.hook_id, hook.account_id)

    async def poll(self, hook: HookRecord) -> tuple[str, str]:
        """One poll of the hook's GLPI; returns the outcome and reason for the ``hook_poll`` command."""
        settings = hook.settings
        if not settings.two_way and not settings.writes_back:
            return "skipped", "two-way sync is off and the hook has no Chatwoot connection"
        if hook.pause is not None or hook.status != "enabled":
            return "skipped", f"hook {hook.status}{' and paused' if hook.pause else ''}: not polled"
        ours = self._tickets(hook.account_id) if settings.two_way else _OurTickets({}, {})
        client = self.clients.client_for(hook)
        events: list[dict[str, Any]] = []
        cursors = dict(hook.glpi_cursors)
        first = settings.two_way and "ITILFollowup" not in cursors
        try:
            if settings.two_way:
                for kind, itemtype in (
                    ("glpi_followup_added", "ITILFollowup"),
                    ("glpi_solution_added", "ITILSolution"),
                ):
                    known = cursors.get(itemtype)
                    cursor = Cursor(*known) if known else None
                    rows = await self._recent(client, itemtype, cursor)
                    fresh, moved = newer_rows(rows, cursor or Cursor())
                    cursors[itemtype] = (moved.date_mod, moved.item_id)
                    if cursor is not None:
                        rows = rows_to_sync(fresh, ours.conversations)
                        authors = await self.user_names.names(client, hook.hook_id, [r.get("users_id") for r in rows])
                        events += change_events(kind, fresh, ours.conversations, hook.hook_id, hook.account_id, authors)  # type: ignore[arg-type]
                if not first:
                    ticket_rows = await client.recent_items("Ticket", limit=POLL_PAGE)
                    events += status_events(
                        ticket_rows, ours.conversations, ours.statuses, hook.hook_id, hook.account_id
                    )
            if settings.writes_back:
                events += await self._ticket_changes(client, hook, cursors)
        except (GlpiError, HookConfigError) as exc:
            return "skipped", f"poll of GLPI failed, tried again at the next poll: {exc}"[:300]
        for event in events:
            if event["event"] in ("glpi_followup_added", "glpi_solution_added"):
                event["payload"]["attachments"] = await TechnicianFiles.listed(client, hook, event["payload"])
            sent = await self.control.send(
                key=str(hook.hook_id).encode(), value=orjson.dumps(event), partition=hook.partition
            )
            await sent
        if cursors != hook.glpi_cursors:
            async with self.hook_locks.hold(hook.hook_id):  # lanes change the slot meanwhile
                current = self.store.hook(hook.hook_id) or hook
                await self.store.save_slot(current.model_copy(update={"glpi_cursors": cursors}))
        if first:
            return "synced", "two-way: first poll, cursors set (earlier GLPI changes are not replayed)"
        return "synced", f"{len(events)} GLPI change(s) queued for Chatwoot"

    # ------------------------------------------------------------------------------------------- apply

    async def apply(self, record: SourceRecord, change: GlpiChange, started: float) -> None:
        """Apply one GLPI change to its conversation and log its outcome."""
        outcome, reason = await self._apply(record, change)
        self.outcomes.finish(record, change, outcome, reason, started)
        if outcome == "synced":
            self.metrics.twoway.labels(change.event).inc()

    async def _apply(self, record: SourceRecord, change: GlpiChange) -> tuple[str, str]:
        hook = self.store.hook(change.hook_id)
        if hook is None or not hook.settings.two_way or hook.status != "enabled":
            return "skipped", "two-way sync is off for this hook"
        settings = hook.settings
        action = action_for(
            change.event,
            change.payload.model_dump(),
            private_followups=settings.two_way_private_followups,
            resolve_on_solution=settings.two_way_resolve_on_solution,
        )
        if isinstance(action, str):
            return "skipped", action
        key = f"{hook.account_id}:{action.ref}"
        reply = self.store.replies.get(key)
        reply = dict(reply) if isinstance(reply, dict) else {}
        conversation_id = change.payload.conversation_id
        ref = action.ref
        attachments: list[tuple[str, str | None, Fetched]] = []
        try:
            async with chatwoot_client(hook, self.ctx, self.vault, self.chatwoot_timeout) as client:
                done = []
                if action.content is not None and not reply.get("message_id"):
                    listed = change.payload.attachments
                    if self.documents is not None and any("document_id" in entry for entry in listed):
                        marked, attachments = await self.documents.fetch(hook, client, conversation_id, listed)
                        payload = {**change.payload.model_dump(), "attachments": marked}
                        action = action_for(
                            change.event,
                            payload,
                            private_followups=settings.two_way_private_followups,
                            resolve_on_solution=settings.two_way_resolve_on_solution,
                        )
                        if isinstance(action, str):  # pragma: no cover - it had content before its files were marked
                            return "skipped", action
                    files = [(name, mime, data.file) for name, mime, data in attachments]
                    message_id = await self._post(
                        client, key, reply, conversation_id, action.content or "", action, files
                    )
                    if self.documents is not None:
                        self.documents.sent(attachments)
                    done.append(f"posted message {message_id}" + (f" with {len(files)} file(s)" if files else ""))
                    since = glpi_epoch(change.payload.date, settings.timezone)
                    if since is not None:
                        self.metrics.twoway_lag.observe(max(0.0, time.time() - since))
                if action.status is not None and reply.get("status") != action.status:
                    await self._set_status(hook, client, conversation_id, action.status)
                    await self.store.replies.put_durable(
                        key, {**(self.store.replies.get(key) or {}), "status": action.status}
                    )
                    done.append(f"{'resolved' if action.status == 'resolved' else 'reopened'} the conversation")
        except (HookConfigError, ChatwootError) as exc:
            return await chatwoot_failure(
                exc, record, self.dead_letters, hook.hook_id, f"{ref} to conversation {conversation_id}"
            )
        finally:
            for _, _, data in attachments:
                data.close()
        if not done:
            return "skipped", f"{ref} is in conversation {conversation_id} already"
        return "synced", f"{ref}: " + ", ".join(done) + f" in conversation {conversation_id}"

    async def _post(
        self,
        client: ChatwootClient,
        key: str,
        reply: dict[str, Any],
        conversation_id: int,
        content: str,
        action: Any,
        files: list[tuple[str, str | None, IO[bytes]]] | None = None,
    ) -> int:
        """Post once: look for our marker first whenever an earlier attempt may have landed."""
        for attempt in range(1, APPLY_ATTEMPTS + 1):
            if reply.get("pending_at"):
                found = await client.find_marked(conversation_id, action.ref)
                if found is not None and isinstance(found.get("id"), int):
                    await self.store.replies.put_durable(key, {"message_id": found["id"]})
                    return int(found["id"])
            reply = {"pending_at": time.time()}
            await self.store.replies.put_durable(key, reply)  # the intent, before the POST
            try:
                posted = await client.post_message(
                    conversation_id, content, private=action.private, ref=action.ref, files=files or ()
                )
            except ChatwootUnreachableError:
                if attempt == APPLY_ATTEMPTS:
                    raise
                await asyncio.sleep(APPLY_PAUSE_SECONDS * attempt)
                continue
            message_id = posted.get("id")
            if not isinstance(message_id, int):
                raise ChatwootError("Chatwoot answered the message post without a message id")
            await self.store.replies.put_durable(key, {"message_id": message_id})
            return message_id
        raise ChatwootError("unreachable")  # pragma: no cover

    async def _set_status(self, hook: HookRecord, client: ChatwootClient, conversation_id: int, status: str) -> None:
        """Record the status on the conversation first (its echo from Chatwoot then matches), then set it."""
        current = self.store.conversation(hook.account_id, conversation_id)
        if current is not None and current.status != status:
            after = current.model_copy(update={"status": status})
            await self.store.persist(SyncView(conversation=current), SyncView(conversation=after), True)
        await client.set_status(conversation_id, status)
