"""Every record ends with one outcome, counted and logged once: synced, skipped, parked, set aside, dead-lettered.

``set_aside`` is a dead letter by decision (the hook is disabled, removed, or cannot hold more events): the record
is in the dead-letter topic with the reason, and ``glpi-sync dlq replay --hook-id N`` brings it back.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

from app import logs
from app.events import ControlCommand, ConversationEvent, GlpiChange, KnownEvent, MessageEvent, UnknownEvent
from app.execute import EventResult
from app.metrics import Metrics, event_type_label, skip_reason_class
from app.pipeline.source import SourceRecord
from app.pipeline.store import SyncStore

log = logging.getLogger("cwglpi.worker")
#: Command results kept per worker for ``--wait`` (the oldest go first).
RESULTS_KEPT = 1000
_WARN = frozenset({"dead_lettered", "parked", "set_aside"})


def _conversation_of(parsed: KnownEvent | UnknownEvent) -> int | None:
    if isinstance(parsed, ConversationEvent):
        return parsed.payload.id
    if isinstance(parsed, MessageEvent):
        return parsed.payload.conversation.id
    if isinstance(parsed, ControlCommand):  # resync or repair of one conversation
        return parsed.payload.conversation_id
    if isinstance(parsed, GlpiChange):  # two-way: a GLPI change posted to the conversation
        return parsed.payload.conversation_id
    return None


class OutcomeLog:
    def __init__(self, metrics: Metrics, per_hook_metrics_limit: int, store: SyncStore | None = None) -> None:
        self.metrics = metrics
        self.per_hook_metrics_limit = per_hook_metrics_limit
        self.store = store

    def _trace(
        self, record: SourceRecord, parsed: KnownEvent | UnknownEvent, outcome: str, reason: str, ids: dict[str, int]
    ) -> None:
        """Append the outcome to its conversation's history (for ``glpi-sync trace``)."""
        if self.store is None:
            return
        conversation = _conversation_of(parsed)
        if conversation is None:
            return
        account = parsed.account_id if not isinstance(parsed, ControlCommand | GlpiChange) else None
        if account is None:  # a command, or not admitted yet (parked before its hook was configured)
            hook = self.store.hook(parsed.hook_id)
            if hook is None:
                return
            account = hook.account_id
        entry = {
            "at": datetime.now(tz=UTC).isoformat(timespec="seconds"),
            "event": parsed.event,
            "source": record.origin + (f" (parked #{record.parked_seq})" if record.parked_seq is not None else ""),
            "outcome": outcome,
            "reason": reason[:300],
            "glpi_ids": ids,
        }
        # Commands and GLPI changes are traced on a known conversation only.
        known_only = isinstance(parsed, ControlCommand | GlpiChange)
        self.store.trace_conversation(account, conversation, entry, create=not known_only)

    def finish(
        self,
        record: SourceRecord,
        parsed: KnownEvent | UnknownEvent | None,
        outcome: str,
        reason: str,
        started: float,
        result: EventResult | None = None,
    ) -> None:
        event_type = event_type_label(parsed.event if parsed else None)
        self.metrics.events.labels(event_type, outcome).inc()
        if outcome == "skipped":
            self.metrics.skips.labels(skip_reason_class(reason)).inc()
        lag = None
        if outcome == "synced" and parsed is not None:
            now = time.time()
            occurred = parsed.occurred_at.timestamp() if parsed.occurred_at else record.timestamp
            lag = max(0.0, now - occurred)
            self.metrics.sync_lag.labels(event_type).observe(lag)
            self.metrics.last_success.set(now)
            self.metrics.mark_hook_synced(parsed.hook_id, now, self.per_hook_metrics_limit)
        if parsed is not None:
            self._trace(record, parsed, outcome, reason, result.finished.glpi_ids if result else {})
        level = logging.WARNING if outcome in _WARN else logging.INFO
        if not log.isEnabledFor(level):
            return
        extra: dict[str, Any] = {
            "hook_id": parsed.hook_id if parsed else None,
            "event": parsed.event if parsed else None,
            "outcome": outcome,
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "parked_seq": record.parked_seq,
            "glpi_ids": result.finished.glpi_ids if result else {},
            "duration_ms": round((time.monotonic() - started) * 1000, 1),
            "lag_s": round(lag, 3) if lag is not None else None,
        }
        log.log(level, "%s %s: %s", parsed.event if parsed else "record", outcome, logs.redact(reason), extra=extra)


class CommandResults:
    """How the latest operator commands ended, by event id, for the CLI's ``--wait`` (bounded, this worker's only)."""

    def __init__(self, kept: int = RESULTS_KEPT) -> None:
        self.kept = kept
        self._results: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def remember(self, event_id: str | None, outcome: str, reason: str) -> None:
        if not event_id:
            return
        self._results[event_id] = {"outcome": outcome, "reason": reason, "at": time.time()}
        while len(self._results) > self.kept:
            self._results.popitem(last=False)

    def get(self, event_id: str) -> dict[str, Any] | None:
        return self._results.get(event_id)
