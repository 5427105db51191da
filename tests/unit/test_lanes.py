"""Per-hook lanes with fake events: concurrency between keys, order within a key, acks in offset order only."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aiokafka.structs import TopicPartition
from faust.types import TP

from app.lanes import LaneDispatcher, Placement

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
        self.not_faust_tps: list[Any] = []

    def pause_partitions(self, tps: Any) -> None:
        for tp in tps:
            self.paused.add(tp)
            self.calls.append(("pause", tp))

    async def seek(self, tp: TP, offset: int) -> None:
        self.calls.append(("seek", tp, offset))  # type: ignore[arg-type]

    def resume_partitions(self, tps: Any) -> None:
        # faust adds these to its active set as given, and its fetcher asserts they are faust TPs.
        self.not_faust_tps.extend(tp for tp in tps if type(tp) is not TP)
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

    async def handler(event: Any, _prepared: Any = None) -> None:
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

    async def handler(event: Any, _prepared: Any = None) -> None:
        if event.message.key == b"A":
            await asyncio.sleep(3600)

    lanes = LaneDispatcher(FakeApp(), handler)  # type: ignore[arg-type]
    for event in events("AB", acks):
        await lanes.dispatch(event)
    await asyncio.sleep(0.05)
    await lanes.stop()
    assert acks == []  # B finished but sits behind unfinished A: neither is acked
    assert lanes.lane_count() == 0 and lanes.inflight == 0


async def test_events_of_an_older_generation_are_read_again_never_skipped() -> None:
    # faust re-seeks a rebalanced partition to its committed offset; one that never committed keeps its
    # position, so a record dropped as stale would never come back, and acking the next one would skip it.
    acks: list[int] = []
    handled: list[int] = []

    async def handler(event: Any, _prepared: Any = None) -> None:
        handled.append(event.message.offset)

    app = FakeApp()
    lanes = LaneDispatcher(app, handler)  # type: ignore[arg-type]
    stale, fresh = events("AA", acks)
    stale.message.generation_id = 0
    await lanes.dispatch(stale)
    await lanes.dispatch(fresh)  # faust went on at offset 1
    await asyncio.sleep(0.05)
    assert handled == [] and acks == []
    assert ("seek", TP0, 0) in app.consumer.calls  # read again from the stale record
    for again in events("AA", acks):  # what the seek delivers
        await lanes.dispatch(again)
    await asyncio.sleep(0.05)
    assert handled == [0, 1] and acks == [0, 1]
    await lanes.stop()


async def test_unfinished_events_at_a_rebalance_are_read_again_from_the_oldest() -> None:
    acks: list[int] = []
    release = asyncio.Event()

    async def handler(event: Any, _prepared: Any = None) -> None:
        await release.wait()

    app = FakeApp()
    lanes = LaneDispatcher(app, handler)  # type: ignore[arg-type]
    for event in events("AB", acks):
        await lanes.dispatch(event)
    await asyncio.sleep(0.05)
    await lanes.stop()  # revoke: both unfinished, nothing acked
    app.consumer_generation_id = 2
    release.set()
    later = FakeEvent(FakeMessage(b"A", 2, generation_id=2), acks)
    await lanes.dispatch(later)  # a partition with no committed offset: faust went on where it was
    assert app.consumer.calls[-1] == ("seek", TP0, 0)
    again = [FakeEvent(FakeMessage(key.encode(), n, generation_id=2), acks) for n, key in enumerate("ABA")]
    for event in again:
        await lanes.dispatch(event)
    await asyncio.sleep(0.05)
    assert acks == [0, 1, 2]
    await lanes.stop()


async def test_a_partition_given_to_another_worker_forgets_its_replay_point() -> None:
    app = FakeApp()
    lanes = LaneDispatcher(app, lambda event, prepared=None: asyncio.sleep(3600))  # type: ignore[arg-type]
    await lanes.dispatch(FakeEvent(FakeMessage(b"A", 0)))
    await asyncio.sleep(0.01)
    await lanes.stop()
    lanes.assigned(set())  # the partition went to another worker, which commits as it goes
    app.consumer_generation_id = 3
    app.consumer._committed_offset = {TP0: 40}  # type: ignore[attr-defined]  # what the other worker committed
    await lanes.dispatch(FakeEvent(FakeMessage(b"A", 40, generation_id=3)))  # given back later: from its commit
    assert not any(call[0] == "seek" for call in app.consumer.calls)
    assert lanes.inflight == 1
    await lanes.stop()


async def test_the_inflight_cap_makes_the_dispatcher_wait() -> None:
    acks: list[int] = []
    gate = asyncio.Event()

    async def handler(event: Any, _prepared: Any = None) -> None:
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

    async def handler(event: Any, _prepared: Any = None) -> None:
        if event.message.key == b"S":
            await slow.wait()
        if event.message.tp == tp1:
            other.append(event.message.offset)

    app = FakeApp()
    lanes = LaneDispatcher(app, handler, max_inflight=1000, per_partition=4)  # type: ignore[arg-type]
    for event in events("SBBBB", acks):  # partition 0: a slow head, then four quick events of another hook
        event.message.tp = TopicPartition("events", 0)  # as faust delivers it
        await lanes.dispatch(event)
    assert app.consumer.paused == {TP0}  # the cap of 4 was reached on partition 0 only
    for offset in range(10):
        # As faust delivers them: with aiokafka's TopicPartition, not faust's TP.
        message = FakeMessage(b"C", offset, tp=TopicPartition("events", 1))  # type: ignore[arg-type]
        await lanes.dispatch(FakeEvent(message, acked=[]))
    await asyncio.sleep(0.05)
    assert other == list(range(10))  # partition 1 flowed meanwhile
    assert acks == []  # nothing of partition 0 is acknowledged past its unfinished head
    slow.set()
    await asyncio.sleep(0.05)
    assert acks == [0, 1, 2, 3, 4]
    assert app.consumer.paused == set()
    # Resuming reads on after the last dispatched record (faust dropped what it fetched while paused).
    assert [call for call in app.consumer.calls if call[1] == TP0] == [
        ("pause", TP0),
        ("seek", TP0, 5),
        ("resume", TP0),
    ]
    assert app.consumer.not_faust_tps == []
    await lanes.stop()


def placed(spec: str) -> Any:
    """A place function from ``"A:x A:y A:- B:x"`` style keys: group A lane x, group A barrier, ..."""

    def place(event: Any) -> Placement:
        group, lane = event.message.key.decode().split(":")
        return Placement(group.encode(), None if lane == "-" else lane, prepared=event.message.offset)

    return place


def keyed(keys: list[str], acks: list[int]) -> list[Any]:
    made = []
    for offset, key in enumerate(keys):
        event = FakeEvent(FakeMessage(key.encode(), offset))
        event.acked = acks
        made.append(event)
    return made


async def test_lanes_of_one_group_run_side_by_side_and_each_lane_in_order() -> None:
    acks: list[int] = []
    started: list[int] = []
    gates = {offset: asyncio.Event() for offset in range(4)}

    async def handler(event: Any, prepared: Any) -> None:
        assert prepared == event.message.offset  # what place() prepared reaches the handler
        started.append(event.message.offset)
        await gates[event.message.offset].wait()

    lanes = LaneDispatcher(FakeApp(), handler, place=placed(""))  # type: ignore[arg-type]
    for event in keyed(["A:x", "A:y", "A:x", "A:z"], acks):
        await lanes.dispatch(event)
    await asyncio.sleep(0.05)
    assert started == [0, 1, 3]  # x, y and z at once; the second x waits for the first
    gates[3].set()
    gates[1].set()
    await asyncio.sleep(0.05)
    assert acks == []  # offsets 1 and 3 are done but 0 is not: nothing acknowledged past it
    gates[0].set()
    await asyncio.sleep(0.05)
    assert started == [0, 1, 3, 2] and acks == [0, 1]
    gates[2].set()
    await asyncio.sleep(0.05)
    assert acks == [0, 1, 2, 3]
    await lanes.stop()


async def test_a_barrier_waits_for_its_group_and_holds_back_what_follows() -> None:
    acks: list[int] = []
    log: list[str] = []
    release = asyncio.Event()

    async def handler(event: Any, prepared: Any) -> None:
        log.append(f"start {prepared}")
        if prepared == 0:
            await release.wait()
        await asyncio.sleep(0)
        log.append(f"end {prepared}")

    lanes = LaneDispatcher(FakeApp(), handler, place=placed(""))  # type: ignore[arg-type]
    for event in keyed(["A:x", "A:-", "A:y", "B:x"], acks):
        await lanes.dispatch(event)
    await asyncio.sleep(0.05)
    # The barrier (1) waits for lane x (0); lane y (2) waits for the barrier; group B is not held.
    assert log == ["start 0", "start 3", "end 3"]
    release.set()
    await asyncio.sleep(0.05)
    assert log[3:] == ["end 0", "start 1", "end 1", "start 2", "end 2"]
    assert acks == [0, 1, 2, 3]
    await lanes.stop()


async def test_a_group_runs_at_most_its_concurrency() -> None:
    acks: list[int] = []
    running = 0
    peak = 0
    gate = asyncio.Event()

    async def handler(event: Any, prepared: Any) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await gate.wait()
        running -= 1

    lanes = LaneDispatcher(FakeApp(), handler, place=placed(""), group_concurrency=3)  # type: ignore[arg-type]
    for event in keyed([f"A:{n}" for n in range(10)] + ["B:0"], acks):
        await lanes.dispatch(event)
    await asyncio.sleep(0.05)
    assert peak == 4  # three of group A, plus group B's own slot
    gate.set()
    await asyncio.sleep(0.05)
    assert acks == list(range(11)) and lanes.lane_count() == 0
    await lanes.stop()


async def test_a_window_that_empties_during_a_rebalance_resumes_after_it() -> None:
    acks: list[int] = []
    gate = asyncio.Event()

    async def handler(event: Any, _prepared: Any = None) -> None:
        await gate.wait()

    app = FakeApp()
    lanes = LaneDispatcher(app, handler, per_partition=2)  # type: ignore[arg-type]
    for event in events("AB", acks):
        await lanes.dispatch(event)
    assert app.consumer.paused == {TP0}
    app.rebalancing = True
    gate.set()
    await asyncio.sleep(0.05)
    assert acks == [0, 1] and app.consumer.paused == {TP0}  # not resumed while faust rebalances
    app.rebalancing = False
    lanes.resume_drained()
    await asyncio.sleep(0.01)
    assert app.consumer.paused == set()
    await lanes.stop()


# ------------------------------------------------------------------------------------------ nothing goes by unseen


class CommittedConsumer(FakeConsumer):
    """A consumer that knows the partition's committed offset (or its first offset) and re-reads after a seek."""

    def __init__(self, committed: int | None) -> None:
        super().__init__()
        self._committed_offset = {TP0: committed}


async def _run(app: Any, offsets: list[int]) -> list[int]:
    handled: list[int] = []

    async def handler(event: Any, prepared: Any) -> None:
        handled.append(event.message.offset)

    lanes = LaneDispatcher(app, handler)
    for offset in offsets:
        await lanes.dispatch(FakeEvent(FakeMessage(b"7", offset)))  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    await lanes.stop()
    return handled


async def test_a_partition_read_from_past_its_start_is_read_again_from_it() -> None:
    """Never committed, read from 57 (faust keeps a partition's position): the records before 57 come first."""
    app: Any = FakeApp()
    app.consumer = CommittedConsumer(committed=None)
    handled = await _run(app, [57, 58, *range(0, 60)])  # after the seek, the broker sends 0 onwards
    assert ("seek", TP0, 0) in app.consumer.calls
    assert handled == list(range(0, 60))  # each once, in order, nothing skipped


async def test_a_record_missing_in_the_middle_is_read_again_never_skipped() -> None:
    app: Any = FakeApp()
    app.consumer = CommittedConsumer(committed=30)
    handled = await _run(app, [30, 31, 33, 34, 32, 33, 34, 35])  # 32 went missing on the way, then the re-read
    assert ("seek", TP0, 32) in app.consumer.calls
    assert handled == [30, 31, 32, 33, 34, 35]


async def test_offsets_that_hold_no_record_are_checked_once_then_passed() -> None:
    """A transaction marker takes an offset: the re-read brings the same next record, and reading goes on."""
    app: Any = FakeApp()
    app.consumer = CommittedConsumer(committed=30)
    handled = await _run(app, [30, 31, 33, 33, 34])
    assert [call for call in app.consumer.calls if call[0] == "seek"] == [("seek", TP0, 32)]
    assert handled == [30, 31, 33, 34]


async def test_a_record_whose_dispatch_was_cut_short_is_read_again() -> None:
    """faust restarts its agent when a dispatch is cancelled: the record at 0 never reached the lanes, 1 comes next."""
    app: Any = FakeApp()
    app.consumer = CommittedConsumer(committed=None)
    handled = await _run(app, [1, 2, 0, 1, 2])
    assert ("seek", TP0, 0) in app.consumer.calls
    assert handled == [0, 1, 2]


class GapConsumer(CommittedConsumer):
    def __init__(self, committed: int | None) -> None:
        super().__init__(committed)
        self.gaps: list[tuple[TP, int, int]] = []

    async def _add_gap(self, tp: TP, first: int, last: int) -> None:
        self.gaps.append((tp, first, last))


async def test_offsets_with_no_record_are_told_to_faust_so_its_commits_pass_them() -> None:
    """An aborted transaction leaves offsets 32 to 35 empty: faust commits its first unbroken run of acks only."""
    app: Any = FakeApp()
    app.consumer = GapConsumer(committed=30)
    handled = await _run(app, [30, 31, 36, 36, 37])
    assert handled == [30, 31, 36, 37]
    assert app.consumer.gaps == [(TP0, 32, 35)]


async def test_a_partition_whose_first_records_expired_starts_at_its_first_record() -> None:
    """Never committed, offsets 0 to 39 deleted by retention: the seek to 0 lands on 40, which comes twice."""
    app: Any = FakeApp()
    app.consumer = GapConsumer(committed=None)
    handled = await _run(app, [40, 40, 41])
    assert [call for call in app.consumer.calls if call[0] == "seek"] == [("seek", TP0, 0)]
    assert handled == [40, 41]
    assert app.consumer.gaps == [(TP0, 0, 39)]


async def test_a_handler_cancelled_from_within_runs_again_before_the_next_event_of_its_group() -> None:
    """A library future cancelled under the handler (a broker outage) must not end the event without an outcome."""
    app: Any = FakeApp()
    app.consumer = CommittedConsumer(committed=0)
    calls: list[int] = []
    acks: list[int] = []

    async def handler(event: Any, prepared: Any) -> None:
        calls.append(event.message.offset)
        if calls.count(event.message.offset) == 1 and event.message.offset == 0:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            future.cancel()
            await future  # raises CancelledError inside the handler, as a cancelled changelog future does

    lanes = LaneDispatcher(app, handler, place=lambda e: Placement(e.message.key, None, None))  # barriers
    for event in events("77", acks):
        await lanes.dispatch(event)
    await asyncio.sleep(1.0)
    assert calls == [0, 0, 1]  # run again in its place; the next event of the group waited for it
    assert acks == [0, 1]
    await lanes.stop()


def test_faust_hands_every_record_of_the_lanes_topics_over_even_after_a_seek(tmp_path: Any) -> None:
    """faust's drain loop drops a record below its "read offset", which an in-flight batch raises past a seek."""
    from app.settings import WorkerSettings
    from app.worker import build_app

    settings = WorkerSettings(topic="events", control_topic="events.control", data_dir=tmp_path)  # type: ignore[call-arg]
    consumer: Any = build_app(settings).consumer
    lanes_tp, changelog_tp = TP("events", 3), TP("some-changelog", 0)
    get_read_offset = consumer._read_offset.__getitem__  # what faust's _drain_messages binds at its start
    consumer._read_offset[lanes_tp] = 10  # what faust's seek sets
    consumer._read_offset[lanes_tp] = 57  # the rest of the batch fetched before the seek went through
    consumer._read_offset[changelog_tp] = 57
    assert get_read_offset(lanes_tp) is None  # faust's test: "r_offset is None or offset >= r_offset" lets 10 in
    assert get_read_offset(changelog_tp) == 57  # other topics keep faust's own filter
    assert get_read_offset(TP("other", 1)) is None


class FakeConsumerThread:
    """faust's aiokafka consumer thread as far as :func:`app.faust_consumer.confirm_membership` uses it."""

    def __init__(self, answers: list[bool]) -> None:
        self.answers = answers
        self.asked = 0
        self._coordinator = self

    def _ensure_consumer(self) -> Any:
        return self

    async def _do_heartbeat(self) -> bool:
        self.asked += 1
        return self.answers.pop(0)

    async def call_thread(self, fun: Any) -> Any:
        return await fun()


async def test_a_generation_the_coordinator_does_not_confirm_processes_nothing_until_it_does(monkeypatch: Any) -> None:
    # A worker cut off from the broker was handed an assignment the group had moved past; processing it beside
    # the partition's real owner wrote the same followups twice. Nothing is processed before a heartbeat with the
    # worker's generation is accepted; what was dropped meanwhile is read again.
    monkeypatch.setattr("app.lanes.CONFIRM_PAUSE_SECONDS", 0.01)
    acks: list[int] = []
    handled: list[int] = []

    async def handler(event: Any, _prepared: Any = None) -> None:
        handled.append(event.message.offset)

    app = FakeApp()
    thread = FakeConsumerThread([False, True])
    app.consumer._thread = thread  # type: ignore[attr-defined]
    lanes = LaneDispatcher(app, handler)  # type: ignore[arg-type]
    lanes.assigned({TP0})
    first = events("ABC", acks)
    for event in first:
        await lanes.dispatch(event)
    await asyncio.sleep(0.05)
    assert handled == [] and acks == []  # refused: nothing processed, nothing acknowledged
    assert ("seek", TP0, 0) in app.consumer.calls  # read again from the first record dropped
    assert thread.asked == 1  # the records fetched after it wait for the re-read, unasked
    for event in events("ABC", acks):  # the re-read
        await lanes.dispatch(event)
    await asyncio.sleep(0.05)
    assert sorted(handled) == [0, 1, 2] and acks == [0, 1, 2]
    assert thread.asked == 2  # confirmed once for the whole generation
    await lanes.stop()
