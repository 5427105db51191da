"""One Kafka record to one final outcome: synced, skipped, parked, set aside or dead-lettered. Never raises.

The path of a record, floor by floor:

1. **parse** (``app/events.py``): not an envelope → dead-lettered (stage ``parse``);
2. **key**: the record's key must be its envelope's hook id, or it lands on another partition than the hook's
   configuration → dead-lettered (stage ``key``);
3. **topic rules**: commands only from the control topic, Chatwoot events and hook configuration only from the
   producers' topic;
4. **hook configuration** (``hook_configured``/``hook_removed``) → the hooks table, then the hook's parked events;
   **operator commands** → :class:`~app.pipeline.commands.AdminCommands`;
5. **admission** (``app/sync/admission.py``): sync, park (:class:`~app.pipeline.parking.ParkingQueue`), set aside
   (dead-lettered with the reason) or skip;
6. **sync** (``app/execute.py``): the event's GLPI steps; a hook-wide problem pauses the hook and parks the event,
   a refusal of this event dead-letters it (stage ``execute``).

A bug of ours (an unexpected exception) is retried three times, then the record is dead-lettered (stage
``internal``) so the partition keeps moving. Draining a parked queue runs in bounded batches inside the handling of
a control command (``hook_retry``, ``hook_resume``, ``hook_configured``...), which queues its own continuation: a
drain interrupted anywhere resumes from the queue's durable counters.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import faust
import orjson
from faust.types import EventT

from app import logs
from app.events import (
    ControlCommand,
    GlpiChange,
    HookConfigured,
    HookRemoved,
    InvalidEnvelopeError,
    KnownEvent,
    UnknownEvent,
    parse_envelope,
)
from app.execute import (
    EventRejected,
    EventResult,
    GlpiExecutor,
    HookUnavailable,
    OperatorInterrupt,
    RetryPolicy,
    sync_event,
)
from app.metrics import Metrics
from app.pipeline.clients import HookClients
from app.pipeline.commands import INTERRUPTING_COMMANDS, AdminCommands
from app.pipeline.dead_letters import DeadLetters
from app.pipeline.locks import Interrupts, KeyedLocks
from app.pipeline.outcomes import OutcomeLog
from app.pipeline.parking import ParkingQueue
from app.pipeline.source import SourceRecord
from app.pipeline.store import SyncStore
from app.pipeline.twoway import TwoWay
from app.secrets import HookConfigError, hook_policy, token_vault
from app.settings import WorkerSettings
from app.sync.admission import admit, with_hook_account
from app.sync.decide import apply_hook_event
from app.sync.ordering import LaneKey, contact_of, lane_of
from app.sync.state import (
    SELF_HEALING_PAUSES,
    AnyHook,
    HookRecord,
    Pause,
    PauseKind,
    SyncContext,
    SyncView,
    UnconfiguredHook,
)

log = logging.getLogger("cwglpi.worker")
INTERNAL_ATTEMPTS = 3
RESULTS_KEPT = 1000
#: One drain syncs at most this many parked events, or for this long, then queues its continuation: the control
#: partition's commit keeps moving and liveness stays honest however long the queue.
DRAIN_BATCH = 100
DRAIN_SECONDS = 20.0
#: A queued ``hook_retry`` not applied after this long (lost with a worker, or never arriving: seen once in the
#: fault suite, cause unknown) is queued again. Short enough that a healed GLPI is retried soon; long enough that
#: retries never pile up behind a hook's events.
RETRY_PENDING_SECONDS = 30.0
#: The resume timer re-requests a drain of a hook with parked events and no pause at most this often.
DRAIN_NUDGE_SECONDS = 60.0

#: ``done``: the record reached a final outcome. ``paused``: a parked record stays at its queue's head.
Disposition = Literal["done", "paused"]


@dataclass(frozen=True, slots=True)
class Prepared:
    """A record parsed once at dispatch: its envelope (or why it is not one) and its lane inside its hook."""

    record: SourceRecord
    parsed: KnownEvent | UnknownEvent | None
    error: InvalidEnvelopeError | None
    lane: LaneKey | None


def _now() -> str:
    return datetime.now(tz=UTC).isoformat(timespec="seconds")


def _reason(result: EventResult) -> str:
    if result.commands:
        return "; ".join(result.commands)
    return result.finished.reason


class Pipeline:
    """Everything one record needs: tables, GLPI clients per hook, DLQ, metrics. Built once per worker."""

    def __init__(self, app: faust.App, settings: WorkerSettings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.ctx = SyncContext(
            chatwoot_base_url=settings.chatwoot_url,
            allow_http=settings.allow_http,
            late_commit_window=settings.late_commit_window,
            ticket_recheck_seconds=settings.ticket_recheck_seconds,
            hook_policy=hook_policy(settings, refuse_inline=settings.inline_tokens == "refuse"),
        )
        self.vault = token_vault(settings)
        self.policy = RetryPolicy(
            base=settings.retry_base, budget=settings.retry_budget, late_commit_window=settings.late_commit_window
        )
        self.store = SyncStore(app, settings, metrics)
        self.parking = ParkingQueue(self.store)
        raw: dict[str, Any] = {"key_serializer": "raw", "value_serializer": "raw", "internal": False}
        self.dead_letters = DeadLetters(app.topic(settings.dlq_topic, **raw), settings.app_id, metrics)
        self.control = app.topic(settings.control_topic, **raw)
        self.clients = HookClients(
            settings.glpi_timeout,
            metrics,
            self.ctx.hook_policy,
            self.vault,
            settings.glpi_ca_file,
            max_requests=settings.hook_concurrency,
        )
        self.outcomes = OutcomeLog(metrics, settings.per_hook_metrics_limit, self.store)
        self.commands = AdminCommands(self)
        self.twoway = TwoWay(self)
        self._poll_pending: dict[int, float] = {}
        #: Concurrent lanes of one hook share its slot and its contacts' records (``app/pipeline/locks.py``).
        self.hook_locks = KeyedLocks()
        self.contact_locks = KeyedLocks()
        self.interrupts = Interrupts()
        self._drain_requested: dict[int, float] = {}
        #: Hooks whose ``hook_retry`` is queued and not applied yet: the timer queues no second one meanwhile
        #: (a retry waits behind the hook's events; piling them up would starve those events).
        self._retry_pending: dict[int, float] = {}
        #: How the latest commands ended, by event id, for ``--wait`` in the CLI (bounded, this worker's only).
        self.results: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def remember(self, event_id: str | None, outcome: str, reason: str) -> None:
        if not event_id:
            return
        self.results[event_id] = {"outcome": outcome, "reason": reason, "at": time.time()}
        while len(self.results) > RESULTS_KEPT:
            self.results.popitem(last=False)

    # ------------------------------------------------------------------------------------------- one record

    def prepare(self, event: EventT[Any]) -> Prepared:
        """Parse a record as it is dispatched and say which lane of its hook it runs in (``None``: a barrier).

        An interrupting command (``hook skip``...) raises its hook's interrupt here, before it waits for the
        hook's running events: a retry sleeping for that hook gives up, and the command applies between two retries.
        """
        record = SourceRecord.from_event(event)
        try:
            parsed = parse_envelope(record.value)
        except InvalidEnvelopeError as exc:
            return Prepared(record, None, exc, None)
        if (
            isinstance(parsed, ControlCommand)
            and parsed.event in INTERRUPTING_COMMANDS
            and record.topic == self.settings.control_topic
            and record.key == str(parsed.hook_id).encode()
        ):
            self.interrupts.raise_for(parsed.hook_id)
        return Prepared(record, parsed, None, lane_of(parsed))

    async def handle(self, event: EventT[Any], prepared: Prepared | None = None) -> None:
        """Process one Kafka record to a final outcome. Never raises."""
        prepared = prepared or self.prepare(event)
        await self.process(prepared.record, prepared)

    async def process(self, record: SourceRecord, prepared: Prepared | None = None) -> Disposition:
        started = time.monotonic()
        if prepared is None:
            try:
                parsed = parse_envelope(record.value)
            except InvalidEnvelopeError as exc:
                prepared = Prepared(record, None, exc, None)
            else:
                prepared = Prepared(record, parsed, None, None)
        if prepared.parsed is None:
            reason = prepared.error.reason if prepared.error else "not an envelope"
            await self.dead_letters.send(record, "parse", "InvalidEnvelopeError", reason)
            self.outcomes.finish(record, None, "dead_lettered", reason, started)
            return "done"
        parsed = prepared.parsed
        for attempt in range(1, INTERNAL_ATTEMPTS + 1):
            try:
                return await self._route(record, parsed, started)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug of ours: retry, then keep the record in the DLQ, keep the agent alive
                log.exception("internal error (attempt %d)", attempt, extra={"hook_id": parsed.hook_id})
                if attempt == INTERNAL_ATTEMPTS:
                    await self.dead_letters.send(record, "internal", type(exc).__name__, str(exc)[:300])
                    self.outcomes.finish(record, parsed, "dead_lettered", "internal error", started)
                    return "done"
                await asyncio.sleep(0.5 * attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    async def reject(
        self, record: SourceRecord, parsed: KnownEvent | UnknownEvent | None, stage: str, error: str, reason: str
    ) -> Disposition:
        await self.dead_letters.send(record, stage, error, reason)
        self.outcomes.finish(record, parsed, "dead_lettered", reason, time.monotonic())
        return "done"

    async def _route(self, record: SourceRecord, parsed: KnownEvent | UnknownEvent, started: float) -> Disposition:
        expected_key = str(parsed.hook_id).encode()
        if record.key != expected_key:
            kind = "null_key" if record.key is None else "wrong_key"
            self.metrics.misrouted.labels(kind).inc()
            shown = "no key" if record.key is None else f"key {record.key[:40]!r}"
            reason = (
                f"record has {shown}, but its hook id is {parsed.hook_id}: producers must key every record by its "
                f"hook id ({expected_key!r}), or it lands on another partition than the hook's configuration"
            )
            return await self.reject(record, parsed, "key", "MisroutedRecord", reason)
        from_control_topic = record.topic == self.settings.control_topic
        if isinstance(parsed, GlpiChange):
            if not from_control_topic:
                reason = f"{parsed.event} is only accepted on the control topic {self.settings.control_topic}"
                return await self.reject(record, parsed, "parse", "ForbiddenGlpiChange", reason)
            await self.twoway.apply(record, parsed, started)
            return "done"
        if isinstance(parsed, ControlCommand):
            if not from_control_topic:
                reason = f"{parsed.event} is only accepted on the control topic {self.settings.control_topic}"
                return await self.reject(record, parsed, "parse", "ForbiddenControlCommand", reason)
            await self.commands.apply(record, parsed, started)
            return "done"
        if isinstance(parsed, HookConfigured | HookRemoved):
            if not from_control_topic and self.settings.hook_config_source == "control":
                reason = (
                    f"{parsed.event} refused: GLPI_SYNC_HOOK_CONFIG_SOURCE=control accepts hook configuration only "
                    "from the control topic (glpi-sync hook set), not from the producers' topic"
                )
                return await self.reject(record, parsed, "configure", "ForbiddenHookConfiguration", reason)
            await self._configure(record, parsed, started)
            return "done"
        if from_control_topic:
            reason = f"{parsed.event} is not a control command"
            return await self.reject(record, parsed, "parse", "UnexpectedOnControlTopic", reason)
        return await self._event(record, parsed, started)

    # ------------------------------------------------------------------------------------------- admission

    async def _event(self, record: SourceRecord, parsed: KnownEvent | UnknownEvent, started: float) -> Disposition:
        if parsed.event_id and self.settings.redelivery_window_hours > 0:
            first = self.store.delivery(parsed.hook_id, parsed.event_id)
            if first is not None:
                reason = f"redelivery of {parsed.event_id} (handled already, from {first.get('source')})"
                self.metrics.redeliveries.inc()
                self.outcomes.finish(record, parsed, "skipped", reason, started)
                return "done"
        async with self.hook_locks.hold(parsed.hook_id):
            parsed = with_hook_account(self.store.slot(parsed.hook_id), parsed)
            admitted = await self._admit(record, parsed, started)
        if admitted is None:
            return "done"
        if admitted == "paused":
            return "paused"
        return await self._sync(record, parsed, admitted, started)

    async def _admit(
        self, record: SourceRecord, parsed: KnownEvent | UnknownEvent, started: float
    ) -> HookRecord | Literal["paused"] | None:
        """Admission, under the hook's lock.

        Returns the hook to sync with, ``"paused"`` (a drained head stays), or None when the event already reached
        its outcome (skipped, set aside, parked).
        """
        slot = self.store.slot(parsed.hook_id)
        draining = record.parked_seq is not None
        if slot is not None and slot.partition != record.partition and not draining:
            slot = slot.model_copy(update={"partition": record.partition})
            await self.store.save_slot(slot, durable=False)
        may_open = slot is not None or self.store.unconfigured_with_events() < self.settings.max_unconfigured_hooks
        admission = admit(
            slot,
            parsed,
            required_feature=self.ctx.required_feature,
            park_limit=self.settings.unconfigured_park_limit,
            may_open_slot=may_open,
            draining=draining,
        )
        if admission.action == "skip":
            self.outcomes.finish(record, parsed, "skipped", admission.reason, started)
            return None
        if admission.action == "set_aside":
            await self.set_aside(record, parsed, slot, admission.reason, started)
            return None
        if admission.action == "park":
            if draining:
                return "paused"  # the hook stopped being syncable mid-drain: the record stays at the head
            slot = slot or UnconfiguredHook(hook_id=parsed.hook_id, partition=record.partition)
            await self.parking.append(slot, record)
            self.metrics.parked.labels(admission.kind).inc()
            self.outcomes.finish(record, parsed, "parked", admission.reason, started)
            return None
        assert isinstance(slot, HookRecord)
        return slot

    async def set_aside(
        self, record: SourceRecord, parsed: KnownEvent | UnknownEvent, slot: AnyHook | None, reason: str, started: float
    ) -> None:
        """Dead-letter an event the hook cannot take now, and count it on the hook (``inspect hook`` shows it)."""
        await self.dead_letters.send(record, "gate", "SetAside", reason)
        if slot is not None:
            await self.store.save_slot(slot.model_copy(update={"set_aside": slot.set_aside + 1}))
        self.outcomes.finish(record, parsed, "set_aside", f"{reason} (dlq replay --hook {parsed.hook_id})", started)

    # ------------------------------------------------------------------------------------------- sync

    async def _sync(
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
        hook = await self.pause_hook(hook, exc.kind, exc.reason)
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

    async def pause_hook(self, hook: HookRecord, kind: PauseKind, reason: str) -> HookRecord:
        pause = Pause(kind=kind, reason=logs.redact(reason)[:500], since=_now())
        paused = hook.model_copy(update={"pause": pause})
        await self.store.save_slot(paused)
        self.refresh_gauges()
        log.warning("hook %s paused (%s): %s", hook.hook_id, kind, pause.reason, extra={"hook_id": hook.hook_id})
        return paused

    # ------------------------------------------------------------------------------------------- configuration

    async def _configure(self, record: SourceRecord, parsed: HookConfigured | HookRemoved, started: float) -> None:
        current = self.store.slot(parsed.hook_id)
        updated, problems = apply_hook_event(current, parsed, self.ctx)
        if problems:
            await self.reject(record, parsed, "configure", "InvalidHookSettings", "; ".join(problems))
            self.remember(parsed.event_id, "dead_lettered", "; ".join(problems))
            return
        if updated is None:
            self.outcomes.finish(record, parsed, "skipped", f"hook {parsed.hook_id} was not configured", started)
            return
        if isinstance(updated, UnconfiguredHook):
            set_aside = await self.dead_letter_queue(updated, "hook removed while its events were parked")
            self.clients.forget(parsed.hook_id)
            self.outcomes.finish(
                record, parsed, "synced", f"hook removed ({set_aside} parked event(s) set aside)", started
            )
            return
        updated = updated.model_copy(update={"partition": record.partition})
        if self.settings.inline_tokens == "encrypt":
            updated = updated.model_copy(update={"settings": self.vault.encrypt_inline(updated.settings)})
        await self.store.save_slot(updated)
        self.refresh_gauges()
        self.outcomes.finish(record, parsed, "synced", f"{parsed.event} applied", started)
        drained = await self.drain(updated.hook_id)
        if updated.settings.two_way and not updated.glpi_cursors and updated.status == "enabled":
            await self.request_poll(updated)  # two-way starts from now: the first poll sets the cursors
        self.remember(parsed.event_id, "synced", f"hook {parsed.hook_id} configured ({updated.status}); {drained}")

    async def dead_letter_queue(self, slot: AnyHook, reason: str) -> int:
        """Move every parked event of ``slot``'s hook to the DLQ (with ``reason``), saving the emptied slot."""
        moved = 0
        while slot.parked > 0:
            head = self.parking.head(slot)
            if head is not None:
                await self.dead_letters.send(head, "park", "SetAside", reason)
                moved += 1
            slot = await self.parking.pop_head(slot)
        await self.store.save_slot(slot)
        return moved

    # ------------------------------------------------------------------------------------------- draining

    async def drain(self, hook_id: int) -> str:
        """Sync the hook's parked events, a window at a time; returns a summary for the operator.

        A window is the next parked events (up to four per concurrency slot): their conversations run side by
        side as on the topic (``app/sync/ordering.py``), each conversation in order and stopping at its first event
        that cannot go on. Finished events leave the queue even when an earlier one stays (the queue skips the
        gaps), so nothing is synced twice by a later drain. Stops when the queue is empty, the hook pauses again or
        is disabled; after :data:`DRAIN_BATCH` events or :data:`DRAIN_SECONDS` it queues its own continuation
        (``hook_retry``) and returns.
        """
        started = time.monotonic()
        drained = 0
        summary = ""
        while True:
            hook = self.store.hook(hook_id)
            if hook is None or hook.status != "enabled" or hook.pause is not None or hook.parked == 0:
                break
            if drained >= DRAIN_BATCH or time.monotonic() - started > DRAIN_SECONDS:
                await self.request_drain(hook, "continue draining")
                summary = f"; {hook.parked} more will follow"
                break
            window = min(hook.parked, 4 * self.settings.hook_concurrency, DRAIN_BATCH - drained)
            finished, stuck = await self._drain_window(hook, window)
            drained += finished
            if stuck:
                break
        if drained:
            log.info("hook %s: drained %d parked event(s)%s", hook_id, drained, summary, extra={"hook_id": hook_id})
        self.refresh_gauges()
        return f"drained {drained} parked event(s){summary}"

    async def _drain_window(self, hook: HookRecord, size: int) -> tuple[int, bool]:
        """Run the next ``size`` parked events by lane; returns how many finished and whether one stays stuck."""
        lanes: dict[LaneKey | None, list[tuple[int, SourceRecord]]] = {}
        finished: list[int] = []
        for seq in range(hook.parked_first, hook.parked_first + size):
            record = self.parking.read(hook.hook_id, seq)
            if record is None:
                finished.append(seq)  # removed already (finished out of order, or lost): the queue skips it
                continue
            try:
                lane = lane_of(parse_envelope(record.value))
            except InvalidEnvelopeError:
                lane = None
            lanes.setdefault(lane, []).append((seq, record))
        slots = asyncio.Semaphore(self.settings.hook_event_concurrency)
        stuck = False

        async def run_lane(items: list[tuple[int, SourceRecord]]) -> None:
            nonlocal stuck
            for seq, record in items:
                async with slots:
                    disposition = await self.process(record)
                if disposition == "paused":
                    stuck = True
                    return  # the rest of this conversation waits behind it
                finished.append(seq)

        await asyncio.gather(*(run_lane(items) for items in lanes.values()))
        for seq in finished:
            self.parking.discard(hook.hook_id, seq)
        current = self.store.hook(hook.hook_id)
        if current is not None:
            moved = await self.parking.advance(current)
            if moved.parked_first != current.parked_first and current.head_failures:
                await self.store.save_slot(moved.model_copy(update={"head_failures": 0}))
        return len(finished), stuck

    def lanes_stopped(self) -> None:
        """After a revoke every unfinished record is delivered again: forget what was counted for the old ones."""
        self.interrupts.reset()
        self._retry_pending.clear()

    def retry_applied(self, hook_id: int) -> None:
        """The hook's queued ``hook_retry`` ran: the timer may queue the next one."""
        self._retry_pending.pop(hook_id, None)

    async def request_drain(self, hook: HookRecord, why: str) -> None:
        """Queue a ``hook_retry`` for ``hook`` on its control partition (ordered with its events)."""
        command = {"event": "hook_retry", "hook_id": hook.hook_id, "payload": {"requested_by": "worker", "reason": why}}
        sent = await self.control.send(
            key=str(hook.hook_id).encode(), value=orjson.dumps(command), partition=hook.partition
        )
        await sent
        self._drain_requested[hook.hook_id] = time.monotonic()
        self._retry_pending[hook.hook_id] = time.monotonic()

    def poll_applied(self, hook_id: int) -> None:
        self._poll_pending.pop(hook_id, None)

    def hooks_to_poll(self) -> list[HookRecord]:
        """Local hooks with two-way on, syncing, and no poll queued (a poll lost with a worker is queued again)."""
        now = time.monotonic()
        return [
            hook
            for hook in self.store.slots()
            if isinstance(hook, HookRecord)
            and hook.settings.two_way
            and hook.status == "enabled"
            and hook.pause is None
            and hook.partition is not None
            and now - self._poll_pending.get(hook.hook_id, -RETRY_PENDING_SECONDS) >= RETRY_PENDING_SECONDS
        ]

    async def request_poll(self, hook: HookRecord) -> None:
        """Queue a ``hook_poll`` on the hook's control partition (run by its owner, in the hook's poll lane)."""
        command = {"event": "hook_poll", "hook_id": hook.hook_id, "payload": {"requested_by": "worker"}}
        sent = await self.control.send(
            key=str(hook.hook_id).encode(), value=orjson.dumps(command), partition=hook.partition
        )
        await sent
        self._poll_pending[hook.hook_id] = time.monotonic()

    def hooks_to_retry(self) -> list[HookRecord]:
        """Local hooks the resume timer should nudge: self-healing pauses, and parked queues no drain is on."""
        now = time.monotonic()
        due = []
        for hook in self.store.slots():
            if not isinstance(hook, HookRecord) or hook.partition is None or hook.status != "enabled":
                continue
            queued = self._retry_pending.get(hook.hook_id)
            if queued is not None and now - queued < RETRY_PENDING_SECONDS:
                continue
            if (hook.pause is not None and hook.pause.kind in SELF_HEALING_PAUSES) or (
                hook.pause is None
                and hook.parked > 0
                and now - self._drain_requested.get(hook.hook_id, 0.0) > DRAIN_NUDGE_SECONDS
            ):
                due.append(hook)
        return due

    def refresh_gauges(self) -> None:
        """Recount paused hooks and parked events from the table (cheap: one record per hook)."""
        paused = dict.fromkeys(("transient", "auth", "endpoint", "operator"), 0)
        parked = 0
        for slot in self.store.slots():
            if isinstance(slot, HookRecord) and slot.pause is not None:
                paused[slot.pause.kind] += 1
            parked += slot.parked
        for kind, count in paused.items():
            self.metrics.hooks_paused.labels(kind).set(count)
        self.metrics.parked_pending.set(parked)

    async def aclose(self) -> None:
        await self.clients.aclose()
