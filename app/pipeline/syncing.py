"""An admitted Chatwoot event's GLPI steps (``app/execute/``), and what its failures mean for the hook.

The event runs under its contact's lock (concurrent lanes of one hook share their contacts' records). A hook-wide
problem (GLPI down, credentials refused) pauses the hook and parks the event; a refusal of this event alone
dead-letters it (stage ``execute``); an operator command arriving between two retries parks it.
"""

from __future__ import annotations

from app.events import KnownEvent, UnknownEvent
from app.execute import (
    EventRejected,
    EventResult,
    GlpiExecutor,
    HookUnavailable,
    OperatorInterrupt,
    RetryPolicy,
    sync_event,
)
from app.files.transfer import FileMover
from app.metrics import Metrics
from app.pipeline.clients import HookClients
from app.pipeline.dead_letters import DeadLetters
from app.pipeline.hook_status import HookStatus
from app.pipeline.locks import Interrupts, KeyedLocks
from app.pipeline.outcomes import OutcomeLog
from app.pipeline.parking import ParkingQueue
from app.pipeline.requests import ControlRequests
from app.pipeline.source import Disposition, SourceRecord
from app.pipeline.store import SyncStore
from app.secrets import HookConfigError
from app.settings import WorkerSettings
from app.sync.ordering import contact_of
from app.sync.state import HookRecord, SyncContext, SyncView


def _reason(result: EventResult) -> str:
    if result.commands:
        return "; ".join(result.commands)
    return result.finished.reason


class EventSync:
    """Sync one admitted event to GLPI and bring it to its outcome (synced, skipped, parked or dead-lettered)."""

    def __init__(
        self,
        *,
        settings: WorkerSettings,
        ctx: SyncContext,
        policy: RetryPolicy,
        store: SyncStore,
        parking: ParkingQueue,
        clients: HookClients,
        dead_letters: DeadLetters,
        outcomes: OutcomeLog,
        status: HookStatus,
        metrics: Metrics,
        interrupts: Interrupts,
        hook_locks: KeyedLocks,
        contact_locks: KeyedLocks,
        requests: ControlRequests,
        files: FileMover | None = None,
    ) -> None:
        self.settings = settings
        self.ctx = ctx
        self.policy = policy
        self.store = store
        self.parking = parking
        self.clients = clients
        self.dead_letters = dead_letters
        self.outcomes = outcomes
        self.status = status
        self.metrics = metrics
        self.interrupts = interrupts
        self.hook_locks = hook_locks
        self.contact_locks = contact_locks
        self.requests = requests
        #: Moves Chatwoot attachments into GLPI (None: they stay links).
        self.files = files

    async def sync(
        self, record: SourceRecord, parsed: KnownEvent | UnknownEvent, hook: HookRecord, started: float
    ) -> Disposition:
        contact = contact_of(parsed)
        if contact is None:
            return await self._sync_locked(record, parsed, hook, started)
        async with self.contact_locks.hold((hook.hook_id, contact)):
            return await self._sync_locked(record, parsed, hook, started)

    async def _sync_locked(
        self, record: SourceRecord, parsed: KnownEvent | UnknownEvent, hook: HookRecord, started: float
    ) -> Disposition:
        view = self.store.load_view(parsed, record.partition)
        state = {"view": view}

        async def persist(after: SyncView, durable: bool) -> None:
            await self.store.persist(state["view"], after, durable)
            state["view"] = after

        def executor() -> GlpiExecutor:
            return GlpiExecutor(
                self.clients.client_for(hook),
                self.policy,
                on_retry=lambda code: self.metrics.retries.labels(code).inc(),
                on_duplicate_removed=lambda itemtype: self.metrics.duplicates_removed.labels(itemtype).inc(),
                interrupt=self.interrupts.flag(hook.hook_id),
                files=self.files,
                hook_id=hook.hook_id,
            )

        try:
            result = await sync_event(view, parsed, self.ctx, executor, persist, lambda: self.clients.probe(hook))
        except HookConfigError as exc:
            return await self._unavailable(record, parsed, HookUnavailable("auth", str(exc)), started)
        except HookUnavailable as exc:
            return await self._unavailable(record, parsed, exc, started)
        except OperatorInterrupt:
            return await self._held(record, parsed, started)
        except EventRejected as exc:
            await self.dead_letters.send(record, "execute", exc.error_class, exc.reason, exc.code, exc.status)
            self.outcomes.finish(record, parsed, "dead_lettered", exc.reason, started)
            return "done"
        if parsed.event_id and self.settings.redelivery_window_hours > 0:
            self.store.remember_delivery(parsed.hook_id, parsed.event_id, record.origin)
        self.outcomes.finish(record, parsed, result.outcome, _reason(result), started, result)
        before = view.conversation.ticket_id if view.conversation else None
        after = state["view"].conversation.ticket_id if state["view"].conversation else None
        if hook.settings.writes_back and after is not None and after != before:
            await self.requests.request_poll_soon(hook)  # write-back: the new ticket's number on its conversation
        return "done"

    async def _held(self, record: SourceRecord, parsed: KnownEvent | UnknownEvent, started: float) -> Disposition:
        """An operator command interrupted the event's retries: park it (a drained one stays at its queue's head)."""
        reason = "held between two retries for an operator command of the hook (skip, pause or disable)"
        if record.parked_seq is not None:
            self.outcomes.finish(record, parsed, "parked", f"still parked: {reason}", started)
            return "paused"
        async with self.hook_locks.hold(parsed.hook_id):
            hook = self.store.hook(parsed.hook_id)
            assert hook is not None  # only a configured hook reaches GLPI
            await self.parking.append(hook, record)
        self.metrics.parked.labels("operator").inc()
        self.outcomes.finish(record, parsed, "parked", reason, started)
        return "done"

    async def _unavailable(
        self, record: SourceRecord, parsed: KnownEvent | UnknownEvent, exc: HookUnavailable, started: float
    ) -> Disposition:
        """The hook cannot work now: pause it and keep the event (parked, or left at the head of the queue).

        A parked event that keeps failing on its own while GLPI answers other requests is dead-lettered after
        ``GLPI_SYNC_MAX_EVENT_FAILURES`` drains, so that one event never holds its hook forever.
        """
        async with self.hook_locks.hold(parsed.hook_id):
            return await self._pause_and_park(record, parsed, exc, started)

    async def _pause_and_park(
        self, record: SourceRecord, parsed: KnownEvent | UnknownEvent, exc: HookUnavailable, started: float
    ) -> Disposition:
        hook = self.store.hook(parsed.hook_id)
        assert hook is not None  # only a configured hook reaches GLPI
        if record.parked_seq is not None and exc.request_specific:
            failures = hook.head_failures + 1
            if failures >= self.settings.max_event_failures:
                reason = (
                    f"failed {failures} times in a row ({exc.reason}) while GLPI answers other requests; "
                    "dead-lettered so the hook can carry on"
                )
                await self.dead_letters.send(record, "execute", "RepeatedFailure", reason, exc.code)
                await self.store.save_slot(hook.model_copy(update={"head_failures": 0}))
                self.outcomes.finish(record, parsed, "dead_lettered", reason, started)
                return "done"
            hook = hook.model_copy(update={"head_failures": failures})
            await self.store.save_slot(hook)
        hook = await self.status.pause(hook, exc.kind, exc.reason)
        reason = f"hook paused ({exc.kind}): {exc.reason}"
        if record.parked_seq is not None:
            self.outcomes.finish(record, parsed, "parked", f"still parked: {reason}", started)
            return "paused"
        if exc.request_specific and hook.parked == 0:
            hook = hook.model_copy(update={"head_failures": 1})
        await self.parking.append(hook, record)
        self.metrics.parked.labels(exc.kind).inc()
        self.outcomes.finish(record, parsed, "parked", reason, started)
        return "done"
