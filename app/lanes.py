"""Lanes inside one faust agent: hooks run concurrently; inside a hook, conversations run concurrently.

Contract (measured in ``faust-per-hook-lanes.md``):
- the agent iterates ``stream.noack().events()`` and only *dispatches*: a ``place`` function says where each event
  runs (:class:`Placement`): its **group** (the record key: one hook) and its **lane** inside the group;
- **ordering rules** (the pipeline decides the lane, ``app/sync/ordering.py``): events of one lane run strictly in
  order; different lanes of one group run concurrently, at most ``group_concurrency`` at a time; an event with no
  lane is a **barrier**: it starts once every earlier event of its group has finished, and no later event of the
  group starts before it has finished. Different groups never wait for each other;
- each event runs in a copy of the context captured at dispatch, so faust's ``current_event()`` — and with it the
  table partition, the RocksDB partition and the changelog partition — is the event's own;
- acks reach faust **in offset order only**: per topic-partition, finished events are acknowledged as a contiguous
  prefix, so the committed offset never passes an unfinished event (out-of-order acks lose events, faust's
  ``_new_offset`` off-by-one);
- on revoke and on shutdown every lane is cancelled and nothing unfinished is acked; faust re-seeks to the
  committed offset and the work is delivered again (the sync is idempotent). This needs ``stream_wait_empty=False``;
- events fetched in an older consumer generation are dropped without ack, and so are the unfinished ones at a
  rebalance; the partition is then read again from the oldest of them (faust re-seeks a partition to its
  committed offset, but one that never committed keeps its position: the dropped events would be lost);
- memory is bounded per partition: when ``per_partition`` events of one partition are held (finished ones wait
  behind a slow head for their in-order ack), fetching *that* partition pauses until its window is half empty, so
  other partitions keep flowing; ``max_inflight`` is the global bound at which the dispatcher itself waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine, Hashable
from dataclasses import dataclass, field
from typing import Any

from faust.types import TP, AppT, EventT

from app.faust_consumer import confirm_membership, shorten_fetch_waits, wake_fetcher

log = logging.getLogger("cwglpi.lanes")
#: Seconds the group coordinator has to confirm a new generation, and the pause before it is asked again.
CONFIRM_SECONDS = 5.0
CONFIRM_PAUSE_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Placement:
    """Where an event runs: ``group`` (its hook), ``lane`` inside the group (``None``: a barrier of the group).

    ``prepared`` is handed to the handler with the event (the parsed envelope: each record is parsed once).
    """

    group: bytes
    lane: Hashable | None = None
    prepared: Any = None


Handler = Callable[[EventT[Any], Any], Coroutine[Any, Any, None]]
Place = Callable[[EventT[Any]], Placement]


def by_key(event: EventT[Any]) -> Placement:
    """Every event of one key in order, as a barrier each (the strictest placement)."""
    key = event.message.key
    return Placement(key if isinstance(key, bytes) else b"")


@dataclass(eq=False)
class _Entry:
    event: EventT[Any]
    context: contextvars.Context
    placement: Placement
    tp: TP
    done: bool = False
    running: bool = False


@dataclass(eq=False)
class _Lane:
    key: Hashable
    queue: deque[_Entry] = field(default_factory=deque)


@dataclass(eq=False)
class _Group:
    """One hook: events not yet placed (arrival order), its running lanes, and the slots they share."""

    key: bytes
    slots: asyncio.Semaphore
    queue: deque[_Entry] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    lanes: dict[Hashable, _Lane] = field(default_factory=dict)
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    runner: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.idle.set()


class LaneDispatcher:
    def __init__(
        self,
        app: AppT,
        handler: Handler,
        *,
        place: Place = by_key,
        max_inflight: int = 2000,
        per_partition: int = 250,
        group_concurrency: int = 8,
        idle_seconds: float = 30.0,
    ) -> None:
        self.app = app
        self.handler = handler
        self.place = place
        self.max_inflight = max_inflight
        self.per_partition = per_partition
        self.group_concurrency = group_concurrency
        self.idle_seconds = idle_seconds
        self._windows: dict[TP, deque[_Entry]] = {}
        self._groups: dict[bytes, _Group] = {}
        self._inflight = 0
        self._space = asyncio.Event()
        self._space.set()
        #: Partitions whose fetching this dispatcher paused (it never resumes one faust paused itself).
        self._paused: set[TP] = set()
        #: Per partition, the offset after the last record dispatched: where reading goes on after a pause.
        self._next_offset: dict[TP, int] = {}
        self._resuming: set[asyncio.Task[None]] = set()
        self._fetch_waits_tried = False  # once, at the first event: faust's consumer thread runs by then
        #: Per partition, the oldest event dropped unfinished at a rebalance or as fetched in an older generation:
        #: reading must start there again. faust re-seeks a partition to its committed offset, but a partition
        #: that never committed one keeps its position, and the dropped events would never come back (lost, and
        #: the later ones acknowledged past them).
        self._replay_from: dict[TP, int] = {}
        self._replay_sought: set[TP] = set()
        #: Per partition, when an event of it was last dispatched or acknowledged (monotonic): its progress.
        self._progress_at: dict[TP, float] = {}
        #: Partitions whose first record of the current generation was seen (logged once: where reading started).
        self._started: set[TP] = set()
        #: Partitions cleared to be processed in this generation, once the group coordinator confirmed it.
        self._confirmed: set[TP] = set()
        self._generation_confirmed = False
        #: Per partition, a gap being checked: (offset expected, offset seen); reading again from the expected one.
        self._gap_checks: dict[TP, tuple[int, int]] = {}

    # ------------------------------------------------------------------------------------------------ state

    @property
    def inflight(self) -> int:
        return self._inflight

    def lane_count(self) -> int:
        return sum(len(group.lanes) for group in self._groups.values())

    def group_count(self) -> int:
        return len(self._groups)

    @property
    def paused_partitions(self) -> frozenset[TP]:
        return frozenset(self._paused)

    def describe(self) -> dict[str, Any]:
        """What the dispatcher holds, for ``/state/workers``: per partition its window and whether it is paused."""
        return {
            "inflight": self._inflight,
            "groups": {
                group.key.decode("utf-8", "replace"): {"queued": len(group.queue), "lanes": len(group.lanes)}
                for group in self._groups.values()
            },
            "partitions": {
                f"{tp.topic}/{tp.partition}": {
                    "held": len(window),
                    "unfinished": sum(1 for entry in window if not entry.done),
                    "oldest_offset": window[0].event.message.offset if window else None,
                    "fetch_paused": tp in self._paused,
                }
                for tp, window in self._windows.items()
            },
        }

    def oldest_pending(self) -> dict[TP, EventT[Any]]:
        """Per topic-partition, the oldest event not yet acknowledged (the one holding the commit back)."""
        return {tp: window[0].event for tp, window in self._windows.items() if window}

    def progress_at(self, tp: TP) -> float | None:
        """When an event of ``tp`` was last dispatched or acknowledged here (``time.monotonic``), if ever."""
        return self._progress_at.get(tp)

    def head(self, tp: TP) -> tuple[int, bytes, bool] | None:
        """The oldest event of ``tp`` held here: its offset, its group (hook) and whether its handler runs now."""
        window = self._windows.get(tp)
        if not window:
            return None
        entry = window[0]
        return entry.event.message.offset, entry.placement.group, entry.running

    async def reread(self, tp: TP, offset: int) -> bool:
        """Read ``tp`` again from ``offset`` when nothing of it is held here; False (nothing done) otherwise.

        For a partition whose records past its committed offset never reached an outcome and are not here either
        (lost between faust's fetcher and the agent): they are delivered again; a duplicate is harmless.
        """
        if self._windows.get(tp):
            return False
        self._replay_from.pop(tp, None)
        self._replay_sought.discard(tp)
        self._gap_checks.pop(tp, None)
        self._next_offset[tp] = offset
        self._progress_at[tp] = time.monotonic()
        await self.app.consumer.seek(tp, offset)
        if tp in self._paused:
            self._paused.discard(tp)
            self.app.consumer.resume_partitions([tp])
        wake_fetcher(self.app.consumer)
        return True

    # ------------------------------------------------------------------------------------------------ dispatch

    async def dispatch(self, event: EventT[Any]) -> None:
        """Queue ``event`` in its group; waits while ``max_inflight`` events are unfinished."""
        while self._inflight >= self.max_inflight:
            self._space.clear()
            await self._space.wait()
        # faust's own TP: messages carry aiokafka's TopicPartition, and faust's resume_partitions adds what it is
        # given to its active set unconverted, where anything else than a TP crashes the fetcher.
        tp = TP(event.message.tp.topic, event.message.tp.partition)
        if not self._fetch_waits_tried:
            self._fetch_waits_tried = True
            shorten_fetch_waits(self.app.consumer)
        if event.message.generation_id != self.app.consumer_generation_id:
            if tp not in self._replay_from:
                log.info(
                    "partition %s: record at offset %d was fetched in generation %d, now %d: read again, unacked",
                    tp,
                    event.message.offset,
                    event.message.generation_id,
                    self.app.consumer_generation_id,
                )
            self._must_replay(tp, event.message.offset)  # fetched before the rebalance: read again, unacked
            return
        if tp not in self._started:
            self._started.add(tp)
            log.info(
                "partition %s: generation %d starts at offset %d",
                tp,
                self.app.consumer_generation_id,
                event.message.offset,
            )
        if tp in self._replay_from and not await self._replayed(tp, event.message.offset):
            return  # dropped unacknowledged: the partition is read again from its oldest unfinished event
        if tp not in self._confirmed and not await self._confirm(tp, event.message.offset):
            return  # dropped unacknowledged: read again once the generation is confirmed, or by the real owner
        if not await self._in_sequence(tp, event.message.offset):
            return  # dropped unacknowledged: the partition is read again from the record that should come now
        entry = _Entry(event, contextvars.copy_context(), self.place(event), tp)
        self._next_offset[tp] = event.message.offset + 1
        self._progress_at[tp] = time.monotonic()
        window = self._windows.setdefault(tp, deque())
        window.append(entry)
        self._inflight += 1
        if len(window) >= self.per_partition and tp not in self._paused:
            self._paused.add(tp)
            self.app.consumer.pause_partitions([tp])
            log.info("partition %s paused: %d events held behind its oldest unfinished one", tp, len(window))
        group = self._groups.get(entry.placement.group)
        if group is None:
            group = _Group(entry.placement.group, asyncio.Semaphore(self.group_concurrency))
            self._groups[group.key] = group
            group.runner = asyncio.ensure_future(self._run_group(group))
        group.queue.append(entry)
        group.wake.set()

    async def _run_group(self, group: _Group) -> None:
        """Place the group's events in arrival order: into their lanes, or run a barrier once all lanes are idle."""
        try:
            while True:
                if not group.queue:
                    group.wake.clear()
                    try:
                        await asyncio.wait_for(group.wake.wait(), self.idle_seconds)
                    except TimeoutError:
                        if not group.queue and not group.lanes:
                            return
                    continue
                entry = group.queue.popleft()
                if entry.placement.lane is None:
                    await group.idle.wait()
                    await self._execute(entry)
                    continue
                lane = group.lanes.get(entry.placement.lane)
                if lane is None:
                    lane = _Lane(entry.placement.lane)
                    group.lanes[lane.key] = lane
                    group.idle.clear()
                    task = asyncio.ensure_future(self._run_lane(group, lane))
                    group.tasks.add(task)
                    task.add_done_callback(group.tasks.discard)
                lane.queue.append(entry)
        finally:
            if self._groups.get(group.key) is group:
                del self._groups[group.key]

    async def _run_lane(self, group: _Group, lane: _Lane) -> None:
        try:
            while lane.queue:
                entry = lane.queue.popleft()
                async with group.slots:
                    await self._execute(entry)
        finally:
            del group.lanes[lane.key]
            if not group.lanes:
                group.idle.set()

    async def _execute(self, entry: _Entry) -> None:
        message = entry.event.message
        entry.running = True
        for attempt in itertools.count(1):
            if message.generation_id != self.app.consumer_generation_id:
                entry.running = False
                self._forget(entry)  # fetched before a rebalance: faust delivers it again, unacked
                return
            task: asyncio.Task[None] = asyncio.get_running_loop().create_task(
                self.handler(entry.event, entry.placement.prepared), context=entry.context
            )
            try:
                await task
                break
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # the lanes stop (revoke, shutdown): the event stays unacknowledged, read again later
                # Something the handler awaited was cancelled under it (a library's future, during a broker
                # outage): the event has no outcome yet.
                log.error(
                    "partition %s offset %d: its handler was cancelled from within (attempt %d); running it again",
                    entry.tp,
                    message.offset,
                    attempt,
                )
            except Exception:
                # The handler promises never to raise (a bug). The event has no outcome yet.
                log.critical(
                    "partition %s offset %d: its handler failed (attempt %d); running it again",
                    entry.tp,
                    message.offset,
                    attempt,
                    exc_info=True,
                )
            # Run it again, in its place: the sync is idempotent, and the events behind it in its group must not
            # start first. Meanwhile the partition's commit waits here, and shows as stuck work (app/progress.py).
            await asyncio.sleep(min(30.0, 0.5 * attempt))
        entry.done, entry.running = True, False
        self._release(entry.tp)

    def _forget(self, entry: _Entry) -> None:
        window = self._windows.get(entry.tp)
        if window is not None and entry in window:
            window.remove(entry)
            self._inflight -= 1
            self._space.set()
        self._must_replay(entry.tp, entry.event.message.offset)

    def _must_replay(self, tp: TP, offset: int) -> None:
        known = self._replay_from.get(tp)
        self._replay_from[tp] = offset if known is None else min(known, offset)

    async def _replayed(self, tp: TP, offset: int) -> bool:
        """Whether a record at ``offset`` may be dispatched while ``tp`` must be read again from an older event.

        A record at or before the replay point means reading starts there again (faust re-sought the partition,
        or our seek took effect): dispatched, and the replay is done. A later one means faust went on from where
        it was: the partition is sought back once, and records are dropped unacknowledged until it takes effect.
        """
        replay = self._replay_from[tp]
        if offset <= replay:
            del self._replay_from[tp]
            self._replay_sought.discard(tp)
            return True
        if tp not in self._replay_sought:
            self._replay_sought.add(tp)
            log.warning(
                "partition %s: reading again from offset %d (events dropped unfinished at a rebalance; faust went "
                "on at %d, as it does for a partition with no committed offset yet)",
                tp,
                replay,
                offset,
            )
            await self.app.consumer.seek(tp, replay)
        return False

    async def _confirm(self, tp: TP, offset: int) -> bool:
        """Whether this worker may process ``tp`` in this generation (asked once, before its first record).

        An assignment the group has moved past (this worker was cut off meanwhile) is not processed: the record is
        dropped unacknowledged and ``tp`` is read again from it, to be asked about again a moment later (the
        partition's real owner reads it from the committed offset; aiokafka's rejoin revokes it here). Without that
        check two workers wrote the same followups to GLPI.
        """
        if not self._generation_confirmed:
            self._generation_confirmed = await confirm_membership(self.app.consumer, CONFIRM_SECONDS)
        if self._generation_confirmed:
            self._confirmed.add(tp)
            return True
        await asyncio.sleep(CONFIRM_PAUSE_SECONDS)  # no hot loop while the coordinator says no or nothing
        self._must_replay(tp, offset)
        self._replay_sought.add(tp)  # records fetched after it are dropped until the re-read brings it back
        await self.app.consumer.seek(tp, self._replay_from[tp])
        return False

    async def _in_sequence(self, tp: TP, offset: int) -> bool:
        """Whether the record at ``offset`` is the next of ``tp``: never let a record go by unseen.

        faust acknowledges (and so commits past) any record missing from the acks it is given, and commits a
        never-committed partition from wherever reading started: a record that never reached this dispatcher (a
        re-read dropped by faust, an agent restarted by faust mid-dispatch) would be lost for good. So each
        partition's records must arrive in order, from its committed offset (offset 0 when it never committed). A
        record after a gap makes the partition be read again from the record expected; when the re-read brings the
        same record again, the offsets in between do not exist (transaction markers, compaction, retention) and
        reading goes on. A record already dispatched in this generation is dropped.
        """
        check = self._gap_checks.get(tp)
        if check is not None:
            start, seen = check
            if offset > seen:
                return False  # read before the re-read arrived
            del self._gap_checks[tp]
            if offset < start:
                return False
            if offset == seen and seen > start:
                log.info("partition %s: offsets %d to %d hold no record (read twice); going on", tp, start, seen - 1)
                await self._no_records(tp, start, seen - 1)
            return True
        expected = self._next_offset.get(tp)
        if expected is None:
            expected = self._next_offset[tp] = self._start_offset(tp)
        if offset == expected:
            return True
        if offset < expected:
            return False
        self._gap_checks[tp] = (expected, offset)
        log.warning(
            "partition %s: record %d arrived where %d was expected: reading again from %d (nothing may go by unseen)",
            tp,
            offset,
            expected,
            expected,
        )
        await self.app.consumer.seek(tp, expected)
        return False

    async def _no_records(self, tp: TP, first: int, last: int) -> None:
        """Tell faust that offsets ``first`` to ``last`` of ``tp`` hold no record, so its commits may pass them.

        faust commits the first unbroken run of acknowledged offsets; a run of missing offsets (an aborted
        transaction, compaction, records expired before being read) would hold its commits back forever.
        """
        add_gap = getattr(self.app.consumer, "_add_gap", None)  # faust's own bookkeeping of offsets with no record
        if add_gap is not None:
            await add_gap(tp, first, last)

    def _start_offset(self, tp: TP) -> int:
        """Where ``tp`` must be read from in a new generation: its committed offset, else 0.

        0 for a partition never committed, without asking the broker (that call can fail or hang while the broker is
        away): when 0 is gone (retention), the seek back lands on the partition's first record, which then arrives
        twice and is taken as the start.
        """
        committed = getattr(self.app.consumer, "_committed_offset", {}).get(tp)  # faust exposes no public getter
        return int(committed) if committed is not None else 0

    def _release(self, tp: TP) -> None:
        window = self._windows.get(tp)
        while window and window[0].done:
            finished = window.popleft()
            finished.event.ack()
            self._inflight -= 1
            self._progress_at[tp] = time.monotonic()
        self._maybe_resume(tp)
        if self._inflight < self.max_inflight:
            self._space.set()

    def _maybe_resume(self, tp: TP) -> None:
        if tp in self._paused and len(self._windows.get(tp) or ()) <= self.per_partition // 2:
            if self.app.rebalancing:
                return  # faust pauses and resumes partitions itself meanwhile: retried by resume_drained()
            self._paused.discard(tp)
            task = asyncio.ensure_future(self._resume(tp))
            self._resuming.add(task)
            task.add_done_callback(self._resuming.discard)

    async def _resume(self, tp: TP) -> None:
        """Read on from the first record not dispatched yet, then resume fetching.

        faust silently drops the records of a batch it already fetched for a partition paused meanwhile, and its
        next record would then count as a gap (acknowledged): without this seek they would be skipped, lost.
        """
        offset = self._next_offset.get(tp)
        if offset is not None:
            await self.app.consumer.seek(tp, offset)
        self.app.consumer.resume_partitions([tp])
        wake_fetcher(self.app.consumer)

    def assigned(self, tps: set[TP]) -> None:
        """A rebalance gave this worker ``tps``: the replay points of other partitions go.

        Their new owner reads from the committed offset; ours would make this worker read again, if one came back
        later, what the other worker did meanwhile.
        """
        for tp in [tp for tp in self._replay_from if tp not in tps]:
            log.info("partition %s went to another worker: its replay point %d is forgotten", tp, self._replay_from[tp])
            del self._replay_from[tp]
        self._started.clear()
        self._confirmed.clear()
        self._generation_confirmed = False
        now = time.monotonic()
        for tp in tps:
            self._progress_at[tp] = now  # a fresh start: the stuck-work clock counts from the assignment

    def resume_drained(self) -> None:
        """Resume the partitions whose window emptied while a rebalance forbade it (called by a timer)."""
        for tp in list(self._paused):
            self._maybe_resume(tp)

    # ------------------------------------------------------------------------------------------------ stop

    async def stop(self, grace: float = 0.0) -> None:
        """Stop every lane (revoke or shutdown); unfinished events stay unacknowledged."""
        groups = list(self._groups.values())
        runners = [group.runner for group in groups if group.runner is not None]
        if grace > 0 and runners:
            await asyncio.wait(runners, timeout=grace)
        tasks = [task for group in groups for task in (*group.tasks, group.runner) if task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for tp, window in self._windows.items():
            if window:  # its head is the oldest event not acknowledged: everything before it is done
                self._must_replay(tp, window[0].event.message.offset)
        self._replay_sought.clear()  # a seek of the generation that ends now does not count for the next one
        self._gap_checks.clear()
        self._groups.clear()
        self._windows.clear()
        self._paused.clear()  # faust re-seeks and resumes the partitions it assigns
        self._next_offset.clear()
        for resuming in list(self._resuming):
            resuming.cancel()
        self._inflight = 0
        self._space.set()
        with contextlib.suppress(Exception):
            await self.app.producer.flush()
        if groups:
            log.info("stopped %d groups", len(groups))
