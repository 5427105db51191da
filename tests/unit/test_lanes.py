"""Per-hook lanes with fake events: concurrency between keys, order within a key, acks in offset order only."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from faust.types import TP

from app.lanes import LaneDispatcher

TP0 = TP("events", 0)


@dataclass
class FakeMessage:
    key: bytes
    offset: int
    tp: TP = TP0
    generation_id: int = 1
    timestamp: float = 0.0


@dataclass
class FakeEvent:
    message: FakeMessage
    acked: list[int] = field(default_factory=list)

    def ack(self) -> bool:
        self.acked.append(self.message.offset)
        return True


class FakeProducer:
    async def flush(self) -> None:
        return None


class FakeConsumer:
    """Records which partitions the dispatcher paused and resumed (faust's fetcher honours the same calls)."""

    def __init__(self) -> None:
        self.paused: set[TP] = set()
        self.calls: list[tuple[str, TP]] = []

    def pause_partitions(self, tps: Any) -> None:
        for tp in tps:
            self.paused.add(tp)
            self.calls.append(("pause", tp))

    def resume_partitions(self, tps: Any) -> None:
        for tp in tps:
            self.paused.discard(tp)
            self.calls.append(("resume", tp))


class FakeApp:
    consumer_generation_id = 1
    producer = FakeProducer()
    rebalancing = False

    def __init__(self) -> None:
        self.consumer = FakeConsumer()


def events(keys: str, acks: list[int]) -> list[Any]:
    made = []
    for offset, key in enumerate(keys):
        event = FakeEvent(FakeMessage(key.encode(), offset))
        event.acked = acks  # one shared list: the global ack order
        made.append(event)
    return made


async def test_a_slow_key_does_not_delay_others_and_acks_stay_in_offset_order() -> None:
    acks: list[int] = []
    finished: list[tuple[str, int]] = []
    release_slow = asyncio.Event()

    async def handler(event: Any) -> None:
        if event.message.key == b"A":
            await release_slow.wait()
        finished.append((event.message.key.decode(), event.message.offset))

    lanes = LaneDispatcher(FakeApp(), handler)  # type: ignore[arg-type]
    for event in events("ABABB", acks):
        await lanes.dispatch(event)
    await asyncio.sleep(0.05)
    # B's three events are done while A's first is still running; nothing is acked past offset 0.
    assert finished == [("B", 1), ("B", 3), ("B", 4)]
    assert acks == []
    assert lanes.oldest_pending()[TP0].message.offset == 0
    release_slow.set()
    await asyncio.sleep(0.05)
    assert finished[3:] == [("A", 0), ("A", 2)]  # A in its own order
    assert acks == [0, 1, 2, 3, 4]
    assert lanes.inflight == 0
    await lanes.stop()


async def test_stop_cancels_and_never_acks_unfinished_work() -> None:
    acks: list[int] = []

    async def handler(event: Any) -> None:
        if event.message.key == b"A":
            await asyncio.sleep(3600)

    lanes = LaneDispatcher(FakeApp(), handler)  # type: ignore[arg-type]
    for event in events("AB", acks):
        await lanes.dispatch(event)
    await asyncio.sleep(0.05)
    await lanes.stop()
    assert acks == []  # B finished but sits behind unfinished A: neither is acked
    assert lanes.lane_count() == 0 and lanes.inflight == 0


async def test_events_of_an_older_generation_are_dropped_unacked() -> None:
    acks: list[int] = []
    handled: list[int] = []

    async def handler(event: Any) -> None:
        handled.append(event.message.offset)

    lanes = LaneDispatcher(FakeApp(), handler)  # type: ignore[arg-type]
    stale, fresh = events("AA", acks)
    stale.message.generation_id = 0
    await lanes.dispatch(stale)
    await lanes.dispatch(fresh)
    await asyncio.sleep(0.05)
    assert handled == [1] and acks == [1]
    await lanes.stop()


async def test_the_inflight_cap_makes_the_dispatcher_wait() -> None:
    acks: list[int] = []
    gate = asyncio.Event()

    async def handler(event: Any) -> None:
        await gate.wait()

    lanes = LaneDispatcher(FakeApp(), handler, max_inflight=2)  # type: ignore[arg-type]
    a, b, c = events("ABC", acks)
    await lanes.dispatch(a)
    await lanes.dispatch(b)
    third = asyncio.ensure_future(lanes.dispatch(c))
    await asyncio.sleep(0.05)
    assert not third.done()
    gate.set()
    await asyncio.wait_for(third, 1)
    await asyncio.sleep(0.05)
    assert acks == [0, 1, 2]
    await lanes.stop()


async def test_a_slow_head_pauses_only_its_own_partition() -> None:
    """Finished events wait behind a slow head for their in-order ack: that partition stops fetching at the cap,
    the other partitions keep flowing, and it resumes once the head is done."""
    tp1 = TP("events", 1)
    acks: list[int] = []
    other: list[int] = []
    slow = asyncio.Event()

    async def handler(event: Any) -> None:
        if event.message.key == b"S":
            await slow.wait()
        if event.message.tp == tp1:
            other.append(event.message.offset)

    app = FakeApp()
    lanes = LaneDispatcher(app, handler, max_inflight=1000, per_partition=4)  # type: ignore[arg-type]
    for event in events("SBBBB", acks):  # partition 0: a slow head, then four quick events of another hook
        await lanes.dispatch(event)
    assert app.consumer.paused == {TP0}  # the cap of 4 was reached on partition 0 only
    for offset in range(10):
        await lanes.dispatch(FakeEvent(FakeMessage(b"C", offset, tp=tp1), acked=[]))
    await asyncio.sleep(0.05)
    assert other == list(range(10))  # partition 1 flowed meanwhile
    assert acks == []  # nothing of partition 0 is acknowledged past its unfinished head
    slow.set()
    await asyncio.sleep(0.05)
    assert acks == [0, 1, 2, 3, 4]
    assert app.consumer.paused == set()
    assert [call for call in app.consumer.calls if call[1] == TP0] == [("pause", TP0), ("resume", TP0)]
    await lanes.stop()
