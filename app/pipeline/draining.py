"""Draining a hook's parked queue: its events synced in order, a bounded window at a time.

A window is the next parked events (up to four per concurrency slot): their conversations run side by side as on
the topic (``app/sync/ordering.py``), each conversation in order and stopping at its first event that cannot go
on. Finished events leave the queue even when an earlier one stays (the queue skips the gaps), so nothing is synced
twice by a later drain. A drain runs inside the handling of a control command (``hook_retry``, ``hook_resume``,
``hook_configured``...) and queues its own continuation after :data:`DRAIN_BATCH` events or
:data:`DRAIN_SECONDS`: the control partition's commit keeps moving, liveness stays honest however long the queue,
and a drain interrupted anywhere resumes from the queue's durable counters.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from app.events import InvalidEnvelopeError, parse_envelope
from app.pipeline.dead_letters import DeadLetters
from app.pipeline.hook_status import HookStatus
from app.pipeline.parking import ParkingQueue
from app.pipeline.requests import ControlRequests
from app.pipeline.source import Disposition, SourceRecord
from app.pipeline.store import SyncStore
from app.sync.ordering import LaneKey, lane_of
from app.sync.state import AnyHook, HookRecord

log = logging.getLogger("cwglpi.worker")
#: One drain syncs at most this many parked events, or for this long, then queues its continuation.
DRAIN_BATCH = 100
DRAIN_SECONDS = 20.0

#: Runs one parked record to its outcome (the pipeline's route).
Process = Callable[[SourceRecord], Awaitable[Disposition]]


class Drainer:
    """Sync a hook's parked events in order, or move them all to the dead-letter topic."""

    def __init__(
        self,
        store: SyncStore,
        parking: ParkingQueue,
        dead_letters: DeadLetters,
        requests: ControlRequests,
        status: HookStatus,
        *,
        max_window: int,
        concurrency: int,
        process: Process,
    ) -> None:
        self.store = store
        self.parking = parking
        self.dead_letters = dead_letters
        self.requests = requests
        self.status = status
        self.max_window = max_window
        self.concurrency = concurrency
        self.process = process

    async def drain(self, hook_id: int) -> str:
        """Sync the hook's parked events; returns a summary for the operator.

        Stops when the queue is empty, the hook pauses again or is disabled, or the batch is used up (then its
        continuation is queued).
        """
        started = time.monotonic()
        drained = 0
        summary = ""
        while True:
            hook = self.store.hook(hook_id)
            if hook is None or hook.status != "enabled" or hook.pause is not None or hook.parked == 0:
                break
            if drained >= DRAIN_BATCH or time.monotonic() - started > DRAIN_SECONDS:
                await self.requests.request_drain(hook, "continue draining")
                summary = f"; {hook.parked} more will follow"
                break
            window = min(hook.parked, self.max_window, DRAIN_BATCH - drained)
            finished, stuck = await self._drain_window(hook, window)
            drained += finished
            if stuck:
                break
        if drained:
            log.info("hook %s: drained %d parked event(s)%s", hook_id, drained, summary, extra={"hook_id": hook_id})
        self.status.refresh_gauges()
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
        slots = asyncio.Semaphore(self.concurrency)
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

    async def dead_letter_all(self, slot: AnyHook, reason: str) -> int:
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
