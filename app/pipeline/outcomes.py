"""Every record ends with one outcome, counted and logged once: synced, skipped, parked, set aside, dead-lettered.

``set_aside`` is a dead letter by decision (the hook is disabled, removed, or cannot hold more events): the record
is in the dead-letter topic with the reason, and ``glpi-sync dlq replay --hook N`` brings it back.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from app import logs
from app.events import KnownEvent, UnknownEvent
from app.execute import EventResult
from app.metrics import Metrics, event_type_label, skip_reason_class
from app.pipeline.source import SourceRecord

log = logging.getLogger("cwglpi.worker")
_WARN = frozenset({"dead_lettered", "parked", "set_aside"})


class OutcomeLog:
    def __init__(self, metrics: Metrics, per_hook_metrics_limit: int) -> None:
        self.metrics = metrics
        self.per_hook_metrics_limit = per_hook_metrics_limit

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
