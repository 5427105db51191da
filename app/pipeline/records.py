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
6. **sync** (``app/execute/``): the event's GLPI steps; a hook-wide problem pauses the hook and parks the event,
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
from dataclasses import dataclass
from typing import Any, Literal

import faust
from faust.types import EventT

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
from app.execute import RetryPolicy
from app.metrics import Metrics
from app.pipeline.clients import HookClients
from app.pipeline.commands import INTERRUPTING_COMMANDS, AdminCommands
from app.pipeline.dead_letters import DeadLetters
from app.pipeline.draining import Drainer
from app.pipeline.files import FileTransfers
from app.pipeline.hook_status import HookStatus
from app.pipeline.locks import Interrupts, KeyedLocks
from app.pipeline.outcomes import CommandResults, OutcomeLog
from app.pipeline.parking import ParkingQueue
from app.pipeline.requests import ControlRequests
from app.pipeline.resync import Resync
from app.pipeline.source import Disposition, SourceRecord
from app.pipeline.store import SyncStore
from app.pipeline.syncing import EventSync
from app.pipeline.twoway import TwoWay
from app.pipeline.user_names import UserNames
from app.pipeline.write_back import WriteBack
from app.secrets import hook_policy, token_vault
from app.settings import WorkerSettings
from app.sync.admission import admit, with_hook_account
from app.sync.hook_config import apply_hook_event
from app.sync.ordering import LaneKey, lane_of
from app.sync.state import (
    AnyHook,
    HookRecord,
    SyncContext,
    UnconfiguredHook,
)

log = logging.getLogger("cwglpi.worker")
INTERNAL_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class Prepared:
    """A record parsed once at dispatch: its envelope (or why it is not one) and its lane inside its hook."""

    record: SourceRecord
    parsed: KnownEvent | UnknownEvent | None
    error: InvalidEnvelopeError | None
    lane: LaneKey | None


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
            files=settings.file_policy,
        )
        self.files = FileTransfers(settings, metrics) if settings.files else None
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
        #: How the latest commands ended, for ``--wait`` in the CLI.
        self.results = CommandResults()
        #: Concurrent lanes of one hook share its slot and its contacts' records (``app/pipeline/locks.py``).
        self.hook_locks = KeyedLocks()
        self.contact_locks = KeyedLocks()
        self.interrupts = Interrupts()
        self.status = HookStatus(self.store, metrics)
        self.requests = ControlRequests(self.control, self.store)
        self.drainer = Drainer(
            self.store,
            self.parking,
            self.dead_letters,
            self.requests,
            self.status,
            max_window=4 * settings.hook_concurrency,
            concurrency=settings.hook_event_concurrency,
            process=self.process,
        )
        self.syncing = EventSync(
            settings=settings,
            ctx=self.ctx,
            policy=self.policy,
            store=self.store,
            parking=self.parking,
            clients=self.clients,
            dead_letters=self.dead_letters,
            outcomes=self.outcomes,
            status=self.status,
            metrics=metrics,
            interrupts=self.interrupts,
            hook_locks=self.hook_locks,
            contact_locks=self.contact_locks,
            requests=self.requests,
            files=self.files,
        )
        self.user_names = UserNames()
        self.twoway = TwoWay(
            store=self.store,
            clients=self.clients,
            control=self.control,
            hook_locks=self.hook_locks,
            ctx=self.ctx,
            vault=self.vault,
            chatwoot_timeout=settings.chatwoot_timeout,
            outcomes=self.outcomes,
            dead_letters=self.dead_letters,
            metrics=metrics,
            user_names=self.user_names,
            files=self.files,
        )
        self.write_back = WriteBack(
            store=self.store,
            ctx=self.ctx,
            vault=self.vault,
            chatwoot_timeout=settings.chatwoot_timeout,
            outcomes=self.outcomes,
            dead_letters=self.dead_letters,
        )
        self.commands = AdminCommands(
            store=self.store,
            parking=self.parking,
            dead_letters=self.dead_letters,
            outcomes=self.outcomes,
            results=self.results,
            interrupts=self.interrupts,
            clients=self.clients,
            status=self.status,
            requests=self.requests,
            drainer=self.drainer,
            twoway=self.twoway,
            resync=Resync(self.store, self.clients, self.policy, self.ctx),
        )

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
            if parsed.event == "glpi_ticket_changed":
                await self.write_back.apply(record, parsed, started)
            else:
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
        return await self.syncing.sync(record, parsed, admitted, started)

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
        self.outcomes.finish(record, parsed, "set_aside", f"{reason} (dlq replay --hook-id {parsed.hook_id})", started)

    # ------------------------------------------------------------------------------------------- configuration

    async def _configure(self, record: SourceRecord, parsed: HookConfigured | HookRemoved, started: float) -> None:
        current = self.store.slot(parsed.hook_id)
        updated, problems = apply_hook_event(current, parsed, self.ctx)
        if problems:
            await self.reject(record, parsed, "configure", "InvalidHookSettings", "; ".join(problems))
            self.results.remember(parsed.event_id, "dead_lettered", "; ".join(problems))
            return
        if updated is None:
            self.outcomes.finish(record, parsed, "skipped", f"hook {parsed.hook_id} was not configured", started)
            return
        if isinstance(updated, UnconfiguredHook):
            set_aside = await self.drainer.dead_letter_all(updated, "hook removed while its events were parked")
            self.clients.forget(parsed.hook_id)
            self.outcomes.finish(
                record, parsed, "synced", f"hook removed ({set_aside} parked event(s) set aside)", started
            )
            return
        updated = updated.model_copy(update={"partition": record.partition})
        if self.settings.inline_tokens == "encrypt":
            updated = updated.model_copy(update={"settings": self.vault.encrypt_inline(updated.settings)})
        await self.store.save_slot(updated)
        self.status.refresh_gauges()
        self.outcomes.finish(record, parsed, "synced", f"{parsed.event} applied", started)
        drained = await self.drainer.drain(updated.hook_id)
        polled = updated.settings.two_way or updated.settings.writes_back
        if polled and not updated.glpi_cursors and updated.status == "enabled":
            await self.requests.request_poll(updated)  # two-way starts from now: the first poll sets the cursors
        self.results.remember(
            parsed.event_id, "synced", f"hook {parsed.hook_id} configured ({updated.status}); {drained}"
        )

    def lanes_stopped(self) -> None:
        """After a revoke every unfinished record is delivered again: forget what was counted for the old ones."""
        self.interrupts.reset()
        self.requests.forget_pending()
        self.store.traces.forget_positions()

    async def aclose(self) -> None:
        await self.clients.aclose()
        if self.files is not None:
            await self.files.close()
