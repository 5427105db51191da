"""A hook's pause, and the gauges of paused hooks and parked events."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from app import logs
from app.metrics import Metrics
from app.pipeline.store import SyncStore
from app.sync.state import HookRecord, Pause, PauseKind

log = logging.getLogger("cwglpi.worker")


class HookStatus:
    """Pause hooks (durably, with the reason redacted) and keep the hook gauges true to the hooks table."""

    def __init__(self, store: SyncStore, metrics: Metrics) -> None:
        self.store = store
        self.metrics = metrics

    async def pause(self, hook: HookRecord, kind: PauseKind, reason: str) -> HookRecord:
        """Save ``hook`` paused for ``reason``; returns the paused record."""
        pause = Pause(
            kind=kind, reason=logs.redact(reason)[:500], since=datetime.now(tz=UTC).isoformat(timespec="seconds")
        )
        paused = hook.model_copy(update={"pause": pause})
        await self.store.save_slot(paused)
        self.refresh_gauges()
        log.warning("hook %s paused (%s): %s", hook.hook_id, kind, pause.reason, extra={"hook_id": hook.hook_id})
        return paused

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
