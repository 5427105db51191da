"""Stuck work: a partition whose waiting records make no progress is shown, and read again when nothing holds it."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from faust.types import TP
from prometheus_client import CollectorRegistry

from app.lanes import LaneDispatcher
from app.metrics import Metrics
from app.progress import ProgressMonitor
from app.settings import WorkerSettings
from tests.unit.test_lanes import FakeApp, FakeConsumer, FakeEvent, FakeMessage

TP0 = TP("events", 0)


class ProgressConsumer(FakeConsumer):
    """The consumer as the monitor reads it: an assignment, committed offsets, high-water marks."""

    def __init__(self, committed: int | None, highwater: int) -> None:
        super().__init__()
        self._committed_offset = {TP0: committed}
        self._highwater = highwater

    def assignment(self) -> set[TP]:
        return {TP0}

    def highwater(self, tp: TP) -> int:
        return self._highwater


def monitor(committed: int | None, highwater: int) -> tuple[ProgressMonitor, LaneDispatcher, Any, Metrics]:
    app: Any = FakeApp()
    app.consumer = ProgressConsumer(committed, highwater)
    app.tables = SimpleNamespace(recovery=SimpleNamespace(completed=SimpleNamespace(is_set=lambda: True)))
    settings = WorkerSettings(topic="events", control_topic="events.control", stuck_seconds=0.05)  # type: ignore[call-arg]
    lanes = LaneDispatcher(app, lambda event, prepared: asyncio.sleep(3600))
    metrics = Metrics(CollectorRegistry())
    return ProgressMonitor(app, settings, lanes, metrics), lanes, app, metrics


async def test_records_that_never_reached_the_lanes_are_read_again_from_the_committed_offset() -> None:
    watch, _, app, metrics = monitor(committed=32, highwater=99)
    watch.sample()
    assert await watch.watch_stuck_work() == []  # progress is recent: not stuck yet
    await asyncio.sleep(0.1)
    watch.sample()
    (stuck,) = await watch.watch_stuck_work()
    assert (stuck.partition, stuck.offset, stuck.hook, stuck.running, stuck.pending) == (0, 32, None, False, 67)
    assert ("seek", TP0, 32) in app.consumer.calls  # read again: a duplicate delivery is harmless
    assert metrics.stuck_recoveries._value.get() == 1
    assert "partition 0 of events at offset 32" in stuck.describe()


async def test_an_event_whose_handler_still_runs_is_shown_not_read_again() -> None:
    watch, lanes, app, _ = monitor(committed=32, highwater=40)
    await lanes.dispatch(FakeEvent(FakeMessage(b"7", 32)))  # type: ignore[arg-type]
    watch.sample()
    await asyncio.sleep(0.1)  # its handler runs (a GLPI that never answers)
    watch.sample()
    (stuck,) = await watch.watch_stuck_work()
    assert (stuck.offset, stuck.hook, stuck.running) == (32, "7", True)
    assert not [call for call in app.consumer.calls if call[0] == "seek"]
    await lanes.stop()


async def test_a_partition_with_nothing_waiting_is_never_stuck() -> None:
    watch, _, app, _ = monitor(committed=99, highwater=99)
    watch.sample()
    await asyncio.sleep(0.1)
    watch.sample()
    assert await watch.watch_stuck_work() == []
    assert app.consumer.calls == []
