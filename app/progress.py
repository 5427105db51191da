"""What a worker tells about its own progress: lag, commit stalls, stuck work, liveness.

**Stuck work.** For every partition this worker holds, records past the committed offset (the first record without
an outcome) must make progress: be dispatched, reach an outcome, be acknowledged. When a partition has such records
and none of that happened for ``GLPI_SYNC_STUCK_SECONDS``, its work is stuck:

- it is shown: ``cwglpi_stuck_work_seconds{topic,partition}``, ``/state/workers`` (``stuck``) and ``glpi-sync
  doctor``, naming the partition, the offset and the hook of its oldest held event;
- when nothing of the partition is held here (the records never reached the lanes, or were dropped on the way),
  it is read again from its committed offset: safe, since a record delivered twice changes nothing in GLPI;
- when its oldest event is held and its handler runs (GLPI or Chatwoot very slow), it is only shown: the handler
  ends by its own budgets, and reading again would run the event twice at once.

A hook that is paused, or whose events are parked, is not stuck: its events reach an outcome (parked) at once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any, cast

from faust.types import TP, AppT

from app.lanes import LaneDispatcher
from app.metrics import Metrics
from app.settings import WorkerSettings

log = logging.getLogger("cwglpi.worker")


@dataclass(frozen=True)
class StuckPartition:
    """A partition whose records past its committed offset made no progress for ``seconds``."""

    topic: str
    partition: int
    #: The first record without an outcome (the committed offset).
    offset: int
    #: The hook (record key) of the oldest event held here; None when nothing of the partition is held here.
    hook: str | None
    seconds: float
    #: The oldest held event's handler is running (a slow GLPI or Chatwoot): shown, not read again.
    running: bool
    #: Records after the committed offset.
    pending: int

    def describe(self) -> str:
        where = f"partition {self.partition} of {self.topic} at offset {self.offset}"
        who = f"hook {self.hook}" if self.hook else "no event of it held by this worker"
        state = "its handler still runs" if self.running else "nothing runs it"
        return f"{where} ({who}; {self.pending} record(s) waiting): no progress for {self.seconds:.0f} s, {state}"

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _consumer_state(app: AppT, tp: TP) -> str:
    """What faust's consumer says of ``tp`` (for the stuck-work line: which layer holds the records back)."""
    consumer: Any = app.consumer
    parts = [
        f"faust active={tp in (getattr(consumer, '_active_partitions', None) or ())}",
        f"paused={tp in getattr(consumer, '_paused_partitions', ())}",
        f"buffered={tp in getattr(consumer, '_buffered_partitions', ())}",
        f"flow={getattr(consumer, 'flow_active', '?')}",
    ]
    return ", ".join(parts)


class ProgressMonitor:
    """Samples lag, the oldest unfinished event, commit progress and stuck work every few seconds."""

    def __init__(self, app: AppT, settings: WorkerSettings, lanes: LaneDispatcher, metrics: Metrics) -> None:
        self.app = app
        self.settings = settings
        self.lanes = lanes
        self.metrics = metrics
        self._commits: dict[TP, tuple[int | None, float]] = {}
        #: Per partition: committed offset, high-water mark (next offset to be written) at the last sample.
        self._offsets: dict[TP, tuple[int | None, int | None]] = {}
        #: Per partition, when its committed offset last moved (``time.monotonic``).
        self._moved_at: dict[TP, float] = {}
        self.stuck: list[StuckPartition] = []
        self.stalled_for = 0.0
        self.last_sample = time.time()
        self.announced = False

    def sample(self) -> None:
        now = time.time()
        if not self.ready():
            # Recovering tables or rebalancing: nothing commits, by design. A long recovery is not a stall, so
            # liveness cannot kill it; the clocks start again once events flow.
            self._commits.clear()
            self._offsets.clear()
            self._moved_at.clear()
            self.stuck = []
            self.stalled_for = 0.0
            self.metrics.commit_stalled.set(0)
            self.metrics.stuck_work.clear()
            self.last_sample = now
            return
        consumer = self.app.consumer
        oldest = self.lanes.oldest_pending()
        worst = 0.0
        self.metrics.consumer_lag.clear()
        self.metrics.oldest_pending_age.clear()
        self._offsets = {}
        for tp in sorted(consumer.assignment()):
            if tp.topic not in (self.settings.topic, self.settings.control_topic):
                continue
            committed = cast(Any, consumer)._committed_offset.get(tp)  # faust exposes no public getter
            try:
                highwater = consumer.highwater(tp)
            except Exception:  # highwater is unknown until the first fetch
                highwater = None
            self._offsets[tp] = (committed, highwater)
            lag = max(0, (highwater or 0) - (committed or 0)) if highwater is not None else 0
            if tp.topic == self.settings.topic:
                self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(lag)
            event = oldest.get(tp)
            age = max(0.0, now - float(event.message.timestamp)) if event is not None else 0.0
            self.metrics.oldest_pending_age.labels(tp.topic, str(tp.partition)).set(age)
            previous = self._commits.get(tp)
            if previous is None or previous[0] != committed or lag == 0:
                self._commits[tp] = (committed, now)
                self._moved_at[tp] = time.monotonic()
            else:
                worst = max(worst, now - previous[1])
        self.stalled_for = worst
        self.metrics.commit_stalled.set(worst)
        self.metrics.inflight.set(self.lanes.inflight)
        self.last_sample = now

    async def watch_stuck_work(self) -> list[StuckPartition]:
        """Find stuck partitions (see the module docstring), read again those nothing here holds; returns them all."""
        if not self.ready():
            return []
        now = time.monotonic()
        found: list[StuckPartition] = []
        self.metrics.stuck_work.clear()
        for tp, (committed, highwater) in self._offsets.items():
            start = committed or 0
            if highwater is None or highwater <= start:
                continue
            progress = max(self._moved_at.get(tp, now), self.lanes.progress_at(tp) or 0.0)
            idle = now - progress
            if idle < self.settings.stuck_seconds:
                continue
            head = self.lanes.head(tp)
            stuck = StuckPartition(
                tp.topic,
                tp.partition,
                start,
                head[1].decode("utf-8", "replace") if head else None,
                round(idle, 1),
                bool(head and head[2]),
                highwater - start,
            )
            found.append(stuck)
            self.metrics.stuck_work.labels(tp.topic, str(tp.partition)).set(idle)
            state = _consumer_state(self.app, tp)
            if head is None and await self.lanes.reread(tp, start):
                self.metrics.stuck_recoveries.inc()
                log.warning("stuck work: %s; reading it again from offset %d (%s)", stuck.describe(), start, state)
            else:
                log.warning("stuck work: %s (%s)", stuck.describe(), state)
        self.stuck = found
        return found

    def ready(self) -> bool:
        """Table recovery is done and no rebalance runs: this worker processes events."""
        recovery = cast(Any, self.app.tables).recovery
        return bool(recovery.completed.is_set()) and not self.app.rebalancing

    def live(self) -> tuple[bool, dict[str, Any]]:
        """Not live when commits stopped with lag, or when the sampling timer itself stopped (loop wedged)."""
        sample_age = time.time() - self.last_sample
        ok = self.stalled_for < self.settings.liveness_stall_seconds and sample_age < 120
        return ok, {"commit_stalled_seconds": round(self.stalled_for, 1), "last_sample_age": round(sample_age, 1)}
