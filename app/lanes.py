"""Per-hook lanes inside one faust agent: hooks of one partition run concurrently, each hook strictly in order.

Contract (measured in ``faust-per-hook-lanes.md``):
- the agent iterates ``stream.noack().events()`` and only *dispatches*: each event joins the queue of its key's lane
  (one asyncio task per busy key; idle lanes end), so a slow or dead hook never delays another hook;
- each event runs in a copy of the context captured at dispatch, so faust's ``current_event()`` — and with it the
  table partition, the RocksDB partition and the changelog partition — is the event's own;
- acks reach faust **in offset order only**: per topic-partition, finished events are acknowledged as a contiguous
  prefix, so the committed offset never passes an unfinished event (out-of-order acks lose events, faust's
  ``_new_offset`` off-by-one);
- on revoke and on shutdown every lane is cancelled and nothing unfinished is acked; faust re-seeks to the
  committed offset and the work is delivered again (the sync is idempotent). This needs ``stream_wait_empty=False``;
- events fetched in an older consumer generation are dropped without ack;
- memory is bounded per partition: when ``per_partition`` events of one partition are held (finished ones wait
  behind a slow head for their in-order ack), fetching *that* partition pauses until its window is half empty, so
  other partitions keep flowing; ``max_inflight`` is the global bound at which the dispatcher itself waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from faust.types import TP, AppT, EventT

log = logging.getLogger("cwglpi.lanes")

Handler = Callable[[EventT[Any]], Coroutine[Any, Any, None]]


@dataclass(eq=False)
class _Entry:
    event: EventT[Any]
    context: contextvars.Context
    done: bool = False


@dataclass(eq=False)
class _Lane:
    key: bytes
    queue: asyncio.Queue[_Entry] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None


class LaneDispatcher:
    def __init__(
        self,
        app: AppT,
        handler: Handler,
        *,
        max_inflight: int = 2000,
        per_partition: int = 250,
        idle_seconds: float = 30.0,
    ) -> None:
        self.app = app
        self.handler = handler
        self.max_inflight = max_inflight
        self.per_partition = per_partition
        self.idle_seconds = idle_seconds
        self._windows: dict[TP, deque[_Entry]] = {}
        self._lanes: dict[bytes, _Lane] = {}
        self._inflight = 0
        self._space = asyncio.Event()
        self._space.set()
        #: Partitions whose fetching this dispatcher paused (it never resumes one faust paused itself).
        self._paused: set[TP] = set()

    # ------------------------------------------------------------------------------------------------ state

    @property
    def inflight(self) -> int:
        return self._inflight

    def lane_count(self) -> int:
        return len(self._lanes)

    @property
    def paused_partitions(self) -> frozenset[TP]:
        return frozenset(self._paused)

    def oldest_pending(self) -> dict[TP, EventT[Any]]:
        """Per topic-partition, the oldest event not yet acknowledged (the one holding the commit back)."""
        return {tp: window[0].event for tp, window in self._windows.items() if window}

    # ------------------------------------------------------------------------------------------------ dispatch

    async def dispatch(self, event: EventT[Any]) -> None:
        """Queue ``event`` on its key's lane; waits while ``max_inflight`` events are unfinished."""
        while self._inflight >= self.max_inflight:
            self._space.clear()
            await self._space.wait()
        entry = _Entry(event, contextvars.copy_context())
        tp = event.message.tp
        window = self._windows.setdefault(tp, deque())
        window.append(entry)
        self._inflight += 1
        if len(window) >= self.per_partition and tp not in self._paused:
            self._paused.add(tp)
            self.app.consumer.pause_partitions([tp])
            log.info("partition %s paused: %d events held behind its oldest unfinished one", tp, len(window))
        key = event.message.key if isinstance(event.message.key, bytes) else b""
        lane = self._lanes.get(key)
        if lane is None:
            lane = _Lane(key)
            self._lanes[key] = lane
            lane.task = asyncio.ensure_future(self._run_lane(lane))
        lane.queue.put_nowait(entry)

    async def _run_lane(self, lane: _Lane) -> None:
        try:
            while True:
                try:
                    entry = await asyncio.wait_for(lane.queue.get(), self.idle_seconds)
                except TimeoutError:
                    if lane.queue.empty():
                        return
                    continue
                message = entry.event.message
                if message.generation_id != self.app.consumer_generation_id:
                    self._forget(entry)  # fetched before a rebalance: faust delivers it again, unacked
                    continue
                task: asyncio.Task[None] = asyncio.get_running_loop().create_task(
                    self.handler(entry.event), context=entry.context
                )
                try:
                    await task
                except Exception:
                    # The handler promises never to raise. If it does, the event stays unacknowledged: the
                    # partition's commit stops here, liveness fails after GLPI_SYNC_LIVENESS_STALL_SECONDS, and the
                    # restarted worker delivers the event again. Losing it silently would be worse.
                    log.critical("lane %r: handler failed; the event stays unacknowledged", lane.key, exc_info=True)
                    raise
                entry.done = True
                self._release(message.tp)
        finally:
            if self._lanes.get(lane.key) is lane:
                del self._lanes[lane.key]

    def _forget(self, entry: _Entry) -> None:
        window = self._windows.get(entry.event.message.tp)
        if window is not None and entry in window:
            window.remove(entry)
            self._inflight -= 1
            self._space.set()

    def _release(self, tp: TP) -> None:
        window = self._windows.get(tp)
        while window and window[0].done:
            finished = window.popleft()
            finished.event.ack()
            self._inflight -= 1
        if tp in self._paused and len(window or ()) <= self.per_partition // 2 and not self.app.rebalancing:
            self._paused.discard(tp)
            self.app.consumer.resume_partitions([tp])
        if self._inflight < self.max_inflight:
            self._space.set()

    # ------------------------------------------------------------------------------------------------ stop

    async def stop(self, grace: float = 0.0) -> None:
        """Stop every lane (revoke or shutdown); unfinished events stay unacknowledged."""
        lanes = list(self._lanes.values())
        tasks = [lane.task for lane in lanes if lane.task is not None]
        if grace > 0 and tasks:
            await asyncio.wait(tasks, timeout=grace)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._lanes.clear()
        self._windows.clear()
        self._paused.clear()  # faust re-seeks and resumes the partitions it assigns
        self._inflight = 0
        self._space.set()
        with contextlib.suppress(Exception):
            await self.app.producer.flush()
        if lanes:
            log.info("stopped %d lanes", len(lanes))
