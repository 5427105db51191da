"""The pipeline's rooms on their own: parking queue, dead-letter writer, table guards, rebuilt partitions.

Tables are replaced by a dict with the two write calls the rooms use (a fake for pure unit tests); the real tables
run in the end-to-end suite.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka.errors import MessageSizeTooLargeError
from prometheus_client import CollectorRegistry

from app.metrics import Metrics
from app.pipeline.dead_letters import FALLBACK_DLQ_VALUE, MAX_DLQ_VALUE, DeadLetters
from app.pipeline.parking import CHUNK_BYTES, ParkingQueue
from app.pipeline.source import SourceRecord
from app.pipeline.store import MAX_TABLE_VALUE_BYTES, CautiousPartitions, DurableTable, TableValueTooLargeError
from app.sync.state import AnyHook, UnconfiguredHook


class FakeTable(dict[str, Any]):
    async def put_durable(self, key: str, value: Any) -> None:
        DurableTable._check_size(key, value)
        self[key] = value


class FakeStore:
    def __init__(self) -> None:
        self.parked = FakeTable()
        self.saved: list[AnyHook] = []

    async def save_slot(self, slot: AnyHook, *, durable: bool = True) -> None:
        self.saved.append(slot)


def record(value: bytes | None, offset: int = 5) -> SourceRecord:
    return SourceRecord("events", 2, offset, 1.5, b"7", value, (("cwglpi.replayed_from", b"dlq:0:3"),))


async def test_parked_records_come_back_byte_for_byte_in_order() -> None:
    store = FakeStore()
    queue = ParkingQueue(store)  # type: ignore[arg-type]
    slot: AnyHook = UnconfiguredHook(hook_id=7)
    small, big = b'{"event": "x"}', bytes(range(256)) * 3900  # ~1 MB of every byte value
    slot = await queue.append(slot, record(small, 5))
    slot = await queue.append(slot, record(big, 6))
    assert slot.parked == 2 and store.saved[-1] == slot
    head = queue.head(slot)
    assert head is not None and head.value == small and head.parked_seq == 0
    assert head.headers == (("cwglpi.replayed_from", b"dlq:0:3"),) and head.key == b"7"
    slot = await queue.pop_head(slot)
    head = queue.head(slot)
    assert head is not None and head.value == big and head.offset == 6
    # The big record was stored in pieces, each far below one Kafka record.
    pieces = [k for k in store.parked if k.count(":") == 2]
    assert len(pieces) == -(-len(big) // CHUNK_BYTES)
    assert max(len(orjson.dumps(v)) for v in store.parked.values()) < 500_000
    slot = await queue.pop_head(slot)
    assert slot.parked == 0 and store.parked == {}  # pieces removed with their entry


async def test_a_missing_entry_reads_as_none_so_the_drain_skips_it() -> None:
    store = FakeStore()
    queue = ParkingQueue(store)  # type: ignore[arg-type]
    slot = await queue.append(UnconfiguredHook(hook_id=7), record(b"x" * (CHUNK_BYTES + 1)))
    store.parked.pop("7:000000000000:1")  # a piece lost: the record is not half-read
    assert queue.head(slot) is None


async def test_a_record_redelivered_after_a_crash_is_not_parked_twice() -> None:
    store = FakeStore()
    queue = ParkingQueue(store)  # type: ignore[arg-type]
    slot: AnyHook = UnconfiguredHook(hook_id=7)
    for offset in (7, 5, 6):  # lanes admit a partition's records out of offset order: each is parked
        slot = await queue.append(slot, record(b"x", offset))
    # kill -9 before the offsets were committed: the same three come again, then a new one.
    for offset in (5, 6, 7, 8):
        slot = await queue.append(slot, record(b"x", offset))
    assert slot.parked == 4
    assert [queue.read(7, seq).offset for seq in range(4)] == [7, 5, 6, 8]  # type: ignore[union-attr]
    # Once drained, the index entry goes with its record.
    slot = await queue.pop_head(slot)
    assert "7:src:events:2:7" not in store.parked and "7:src:events:2:5" in store.parked
    # Another partition's offsets are counted on their own.
    other = SourceRecord("events", 3, 1, 1.5, b"7", b"x", ())
    assert (await queue.append(slot, other)).parked == 4


async def test_a_crash_between_the_index_and_the_counter_loses_no_parked_record() -> None:
    store = FakeStore()
    queue = ParkingQueue(store)  # type: ignore[arg-type]
    before: AnyHook = UnconfiguredHook(hook_id=7)
    await queue.append(before, record(b"first", 5))  # kill -9 here: the counter's save never reached the changelog
    store.saved.clear()
    # The redelivered record is known by its index; the counter must move past it, or the next record takes its seq.
    slot = await queue.append(before, record(b"first", 5))
    assert slot.parked_next == 1 and store.saved == [slot]
    # Redelivered again once the counter moved: not parked twice, the counter saved again (it may have been local).
    assert await queue.append(slot, record(b"first", 5)) == slot and store.saved == [slot, slot]
    slot = await queue.append(slot, record(b"second", 6))
    assert [queue.read(7, seq).value for seq in range(2)] == [b"first", b"second"]  # type: ignore[union-attr]


async def test_an_index_entry_whose_record_was_overwritten_does_not_count_as_parked() -> None:
    store = FakeStore()
    queue = ParkingQueue(store)  # type: ignore[arg-type]
    before: AnyHook = UnconfiguredHook(hook_id=7)
    await queue.append(before, record(b"first", 5))  # counter lost again, and before the redelivery arrives...
    slot = await queue.append(before, record(b"other", 9))  # ...another lane's record took seq 0 (no index of 5)
    slot = await queue.append(slot, record(b"first", 5))  # the stale index of 5 names seq 0: 5 is parked anew
    assert slot.parked == 2
    assert [queue.read(7, seq).offset for seq in range(2)] == [9, 5]  # type: ignore[union-attr]


class FakeTopic:
    def __init__(self, refuse_above: int | None = None) -> None:
        self.sent: list[dict[str, Any]] = []
        self.refuse_above = refuse_above

    async def send(self, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> Any:
        if self.refuse_above is not None and len(value) > self.refuse_above:
            raise MessageSizeTooLargeError
        self.sent.append({"key": key, "value": value, "headers": dict(headers)})

        async def acknowledged() -> None:
            return None

        return acknowledged()


async def test_dead_letters_carry_their_origin_and_reason() -> None:
    topic = FakeTopic()
    writer = DeadLetters(topic, "cwglpi", Metrics(CollectorRegistry()))
    await writer.send(record(b"{}"), "gate", "SetAside", "hook 7 is disabled", "ERROR_X", 400)
    (sent,) = topic.sent
    assert sent["value"] == b"{}" and sent["key"] == b"7"
    headers = {k: v.decode() for k, v in sent["headers"].items()}
    assert headers["__connect.errors.topic"] == "events"
    assert headers["__connect.errors.partition"] == "2"
    assert headers["__connect.errors.offset"] == "5"
    assert headers["__connect.errors.stage"] == "gate"
    assert headers["__connect.errors.exception.message"] == "hook 7 is disabled"
    assert (headers["cwglpi.glpi.code"], headers["cwglpi.glpi.status"]) == ("ERROR_X", "400")


@pytest.mark.parametrize(("refuse_above", "kept"), [(None, MAX_DLQ_VALUE), (100_000, FALLBACK_DLQ_VALUE)])
async def test_a_value_too_big_for_the_dlq_is_cut_with_its_size(refuse_above: int | None, kept: int) -> None:
    topic = FakeTopic(refuse_above)
    writer = DeadLetters(topic, "cwglpi", Metrics(CollectorRegistry()))
    huge = b"a" * 1_100_000
    await writer.send(record(huge), "parse", "InvalidEnvelopeError", "too big")
    (sent,) = topic.sent
    assert len(sent["value"]) == kept
    assert sent["headers"]["cwglpi.value.truncated"] == str(len(huge)).encode()
    assert len(sent["headers"]["cwglpi.value.sha256"]) == 64


def test_a_table_value_too_big_for_its_changelog_is_refused_before_faust_sees_it() -> None:
    DurableTable._check_size("ok", {"content": "x" * 1000})
    with pytest.raises(TableValueTooLargeError, match="over"):
        DurableTable._check_size("big", {"content": "x" * MAX_TABLE_VALUE_BYTES})


def test_rebuilt_partitions_stay_cautious_across_restarts(tmp_path: Path) -> None:
    marks = CautiousPartitions(tmp_path)
    assert 3 not in marks
    marks.mark(3)
    assert 3 in CautiousPartitions(tmp_path)  # read back from the data directory by the next worker
    CautiousPartitions(tmp_path).mark(1, now=0.0)  # marked long ago: expired
    assert 1 not in CautiousPartitions(tmp_path) and 3 in CautiousPartitions(tmp_path)


# ------------------------------------------------------------------------------------------- locks and interrupts


async def test_keyed_locks_serialise_one_key_and_are_dropped_when_free() -> None:
    from app.pipeline.locks import KeyedLocks

    locks = KeyedLocks()
    order: list[str] = []

    async def work(key: str, name: str) -> None:
        async with locks.hold(key):
            order.append(f"{name} in")
            await asyncio.sleep(0.01)
            order.append(f"{name} out")

    await asyncio.gather(work("c1", "a"), work("c1", "b"), work("c2", "c"))
    assert order.index("a out") < order.index("b in")  # one contact: one at a time
    assert order.index("c in") < order.index("a out")  # another contact: side by side
    assert len(locks) == 0


async def test_an_interrupt_cuts_a_retry_wait_and_drops_with_the_last_command() -> None:
    from app.execute import GlpiExecutor, OperatorInterrupt
    from app.pipeline.locks import Interrupts

    interrupts = Interrupts()
    executor = GlpiExecutor(client=None, interrupt=interrupts.flag(7))  # type: ignore[arg-type]
    waiting = asyncio.ensure_future(executor._wait(3600))
    await asyncio.sleep(0.01)
    interrupts.raise_for(7)
    interrupts.raise_for(7)
    with pytest.raises(OperatorInterrupt):
        await asyncio.wait_for(waiting, 1)
    interrupts.applied(7)
    assert interrupts.flag(7).is_set()  # a second command still waits
    interrupts.applied(7)
    assert not interrupts.flag(7).is_set()
    await asyncio.wait_for(executor._wait(0.01), 1)  # no command waiting: a plain sleep


class FakeControl:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send(self, key: bytes, value: bytes, partition: int | None) -> Any:
        self.sent.append({"key": key, **orjson.loads(value)})

        async def acknowledged() -> None:
            return None

        return acknowledged()


async def test_new_tickets_ask_for_one_poll_at_a_time_not_one_each() -> None:
    from app.events import HookSettings
    from app.pipeline.requests import ControlRequests
    from app.sync.state import HookRecord

    control = FakeControl()
    requests = ControlRequests(control, FakeStore())  # type: ignore[arg-type]
    settings = HookSettings.model_validate({"api_url": "https://glpi.example.com/apirest.php", "user_token": "t"})
    hook = HookRecord(hook_id=7, account_id=7, partition=0, settings=settings)
    for _ in range(50):  # a backlog of new conversations
        await requests.request_poll_soon(hook)
    assert [(c["event"], c["hook_id"]) for c in control.sent] == [("hook_poll", 7)]
    requests.poll_applied(7)  # it ran; the next new ticket waits out the few seconds since the last request
    await requests.request_poll_soon(hook)
    assert len(control.sent) == 1
