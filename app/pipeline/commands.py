"""Operator and worker commands from the control topic, applied between two events of their hook.

| command                         | effect                                                                     |
|---------------------------------|----------------------------------------------------------------------------|
| ``hook_pause``                  | pause (``operator``): new events are parked, in order                      |
| ``hook_resume``                 | clear any pause and drain the parked events                                |
| ``hook_retry``                  | the worker's own: clear a self-healing pause, or continue a drain          |
| ``hook_disable``                | new events are set aside (dead-lettered with the reason); parked ones stay |
| ``hook_enable``                 | sync again, drain the parked events (``dlq replay --hook-id N``: set aside)|
| ``hook_skip``                   | the parked event the hook is stuck on goes to the DLQ, with who and why    |
| ``hook_reset``/``hook_rebuilt`` | forget the hook's mappings and adopt what GLPI holds while replaying       |
| ``set_*_mapping``               | point a contact or conversation at a GLPI id, or clear it                  |
| ``resync_*``                    | check GLPI against the state and recreate what is missing                  |
| ``hook_poll``                   | the worker's own (two-way): look in GLPI for technicians' changes          |
"""

from __future__ import annotations

import logging
import time

from app.events import ControlCommand
from app.glpi import GlpiError
from app.pipeline.clients import HookClients
from app.pipeline.dead_letters import DeadLetters
from app.pipeline.draining import Drainer
from app.pipeline.hook_status import HookStatus
from app.pipeline.locks import Interrupts
from app.pipeline.outcomes import CommandResults, OutcomeLog
from app.pipeline.parking import ParkingQueue
from app.pipeline.requests import ControlRequests
from app.pipeline.resync import Resync
from app.pipeline.source import SourceRecord
from app.pipeline.store import SyncStore
from app.pipeline.twoway import TwoWay
from app.secrets import HookConfigError
from app.sync.state import SELF_HEALING_PAUSES, ContactRecord, ConversationRecord, HookRecord, SyncView

#: Commands that act between two retries of the hook's running events (``app/pipeline/locks.py``).
INTERRUPTING_COMMANDS = frozenset({"hook_skip", "hook_pause", "hook_disable"})

log = logging.getLogger("cwglpi.worker")


class AdminCommands:
    """Apply one command to its hook, with the collaborators a command may need."""

    def __init__(
        self,
        *,
        store: SyncStore,
        parking: ParkingQueue,
        dead_letters: DeadLetters,
        outcomes: OutcomeLog,
        results: CommandResults,
        interrupts: Interrupts,
        clients: HookClients,
        status: HookStatus,
        requests: ControlRequests,
        drainer: Drainer,
        twoway: TwoWay,
        resync: Resync,
    ) -> None:
        self.store = store
        self.parking = parking
        self.dead_letters = dead_letters
        self.outcomes = outcomes
        self.results = results
        self.interrupts = interrupts
        self.clients = clients
        self.status = status
        self.requests = requests
        self.drainer = drainer
        self.twoway = twoway
        self.resync = resync

    async def apply(self, record: SourceRecord, command: ControlCommand, started: float) -> None:
        """Apply ``command`` to its hook and log its outcome (with the reason an operator reads)."""
        try:
            outcome, reason = await self._apply(record, command)
        finally:
            if command.event in INTERRUPTING_COMMANDS:
                self.interrupts.applied(command.hook_id)
        self.outcomes.finish(record, command, outcome, reason, started)
        self.results.remember(command.event_id, outcome, reason)

    async def _apply(self, record: SourceRecord, command: ControlCommand) -> tuple[str, str]:
        hook = self.store.hook(command.hook_id)
        if hook is None:
            return "skipped", f"hook {command.hook_id} is not configured"
        if hook.partition is not None and hook.partition != record.partition:
            reason = (
                f"command arrived on partition {record.partition} but hook {hook.hook_id} lives on partition "
                f"{hook.partition}: producers and tools must use the murmur2 (Java default) partitioner"
            )
            await self.dead_letters.send(record, "configure", "MisroutedCommand", reason)
            return "dead_lettered", reason
        who = f" (by {command.payload.requested_by})" if command.payload.requested_by else ""
        match command.event:
            case "hook_pause":
                reason = command.payload.reason or "paused by an operator"
                await self.status.pause(hook, "operator", reason)
                return "synced", f"hook paused{who}: {reason}"
            case "hook_disable":
                await self.store.save_slot(hook.model_copy(update={"status": "disabled"}))
                kept = f"; its {hook.parked} parked event(s) wait for hook enable" if hook.parked else ""
                return "synced", f"hook disabled{who}: new events are set aside{kept}"
            case "hook_enable":
                return "synced", await self._enable(hook, who)
            case "hook_skip":
                return await self._skip_head(hook, command)
            case "hook_reset":
                forgotten = self.store.forget_account(hook.account_id)
                await self.store.save_slot(hook.model_copy(update={"rebuilding": True}))
                return "synced", f"hook reset: {forgotten} mapping(s) forgotten, rebuilding"
            case "hook_rebuilt":
                await self.store.save_slot(hook.model_copy(update={"rebuilding": False}))
                return "synced", "rebuild finished: creates no longer look first"
            case "set_contact_mapping" | "set_conversation_mapping":
                return await self._set_mapping(record, hook, command)
            case "resync_contact" | "resync_conversation":
                try:
                    return "synced", await self.resync.run(hook, command)
                except (GlpiError, HookConfigError) as exc:
                    return "skipped", f"resync failed: {exc}"[:300]
            case "hook_retry" | "hook_resume":
                return await self._resume(hook, command, who)
            case "hook_poll":
                self.requests.poll_applied(hook.hook_id)
                return await self.twoway.poll(hook)

    async def _enable(self, hook: HookRecord, who: str) -> str:
        enabled = hook.model_copy(update={"status": "enabled", "set_aside": 0})
        await self.store.save_slot(enabled)
        drained = await self.drainer.drain(hook.hook_id)
        replay = (
            f"; {hook.set_aside} event(s) set aside while disabled: glpi-sync dlq replay --hook-id {hook.hook_id}"
            if hook.set_aside
            else ""
        )
        return f"hook enabled{who}: {drained}{replay}"

    async def _resume(self, hook: HookRecord, command: ControlCommand, who: str) -> tuple[str, str]:
        if command.event == "hook_retry":
            self.requests.retry_applied(hook.hook_id)
            self_healing = hook.pause is not None and hook.pause.kind in SELF_HEALING_PAUSES
            if not self_healing and not (hook.pause is None and hook.parked > 0):
                return "skipped", "nothing to retry"
            if self_healing and hook.status == "enabled":
                # One cheap look before replaying anything: while GLPI is still down, the parked head would only
                # spend its whole retry budget again, holding every event of the hook behind this command.
                problem = await self.clients.probe(hook, fresh=True)
                if problem is not None:
                    return "skipped", f"still paused: {problem.reason}"
        if hook.pause is not None:
            hook = hook.model_copy(update={"pause": None})
            await self.store.save_slot(hook)
            self.status.refresh_gauges()
        if hook.status != "enabled":
            return "synced", f"{command.event}{who}: the hook is disabled, its {hook.parked} parked event(s) wait"
        return "synced", f"{command.event}{who}: " + await self.drainer.drain(hook.hook_id)

    async def _skip_head(self, hook: HookRecord, command: ControlCommand) -> tuple[str, str]:
        """The guide's "clear stuck jobs": the event the hook is stuck on goes to the DLQ, with who and why."""
        if hook.parked == 0:
            return "skipped", "no parked event to skip"
        seq = hook.parked_first
        head = self.parking.head(hook)
        if head is not None:
            reason = f"skipped by operator {command.payload.requested_by or '?'}: {command.payload.reason or '-'}"
            await self.dead_letters.send(head, "operator-skip", "SkippedByOperator", reason)
        await self.parking.pop_head(hook.model_copy(update={"head_failures": 0}))
        done = f"parked event #{seq} moved to the dead-letter topic"
        if hook.pause is None and hook.status == "enabled" and hook.parked > 1:
            done += "; " + await self.drainer.drain(hook.hook_id)  # what waited behind it goes on
        return "synced", done

    async def _set_mapping(self, record: SourceRecord, hook: HookRecord, command: ControlCommand) -> tuple[str, str]:
        """Point a contact or conversation at a GLPI id (after a manual merge), or clear the mapping."""
        payload = command.payload
        if command.event == "set_contact_mapping" and payload.contact_id is not None:
            current = self.store.contact(hook.account_id, payload.contact_id) or ContactRecord(
                account_id=hook.account_id, contact_id=payload.contact_id
            )
            itemtype = (
                payload.glpi_itemtype
                or current.glpi_itemtype
                or ("User" if hook.settings.sync_type == "user" else "Contact")
            )
            updated = current.model_copy(
                update={"glpi_id": payload.glpi_id, "glpi_itemtype": itemtype, "pending": None}
            )
            await self.store.persist(SyncView(), SyncView(contact=updated), True)
            what = f"contact {payload.contact_id} → {itemtype} {payload.glpi_id}"
        elif command.event == "set_conversation_mapping" and payload.conversation_id is not None:
            conv = self.store.conversation(hook.account_id, payload.conversation_id) or ConversationRecord(
                account_id=hook.account_id, conversation_id=payload.conversation_id
            )
            update = {"ticket_id": payload.glpi_id, "pending": None, "ticket_checked_at": time.time()}
            after = conv.model_copy(update=update)
            await self.store.persist(SyncView(), SyncView(conversation=after), True)
            what = f"conversation {payload.conversation_id} → Ticket {payload.glpi_id}"
        else:
            reason = f"{command.event} needs a contact_id or conversation_id"
            await self.dead_letters.send(record, "configure", "InvalidCommand", reason)
            return "dead_lettered", reason
        log.warning("mapping repaired: %s", what, extra={"hook_id": hook.hook_id})
        return "synced", f"mapping set: {what}"
