"""A conversation's trace as a ring of small records: appending writes one entry, the newest 40 are kept in
order, positions are found again after a restart or a rebalance, and old records' ``history`` is read first."""

from __future__ import annotations

from typing import Any

from app.pipeline.traces import TraceLog
from app.sync.state import TRACE_KEPT


class Table(dict[str, Any]):
    """A table stand-in that counts writes (the worker's is a faust Table over RocksDB)."""

    writes = 0

    def put_buffered(self, key: str, value: Any) -> None:
        self.writes += 1
        self[key] = value


def _entry(n: int) -> dict[str, Any]:
    return {"at": f"t{n}", "event": "message_created", "outcome": "synced", "reason": f"#{n}"}


def test_each_entry_is_one_small_write_and_the_newest_are_kept_in_order() -> None:
    table = Table()
    log = TraceLog(table)
    for n in range(TRACE_KEPT + 15):
        log.append(7, 57, _entry(n))
    assert table.writes == TRACE_KEPT + 15 and len(table) == TRACE_KEPT
    assert [e["reason"] for e in log.read(7, 57)] == [f"#{n}" for n in range(15, TRACE_KEPT + 15)]
    assert "seq" not in log.read(7, 57)[0]
    assert log.read(7, 58) == []


def test_a_restarted_or_rebalanced_worker_goes_on_after_the_newest_entry() -> None:
    table = Table()
    TraceLog(table).append(7, 57, _entry(0))
    for n in range(1, TRACE_KEPT + 3):  # another worker's log: it finds the position by reading the ring
        other = TraceLog(table)
        other.append(7, 57, _entry(n))
    assert [e["reason"] for e in TraceLog(table).read(7, 57)][-3:] == [
        f"#{n}" for n in (TRACE_KEPT, TRACE_KEPT + 1, TRACE_KEPT + 2)
    ]
    log = TraceLog(table)
    log.append(7, 57, _entry(100))
    table[f"7:57:{(TRACE_KEPT + 4) % TRACE_KEPT:02d}"] = {**_entry(101), "seq": TRACE_KEPT + 4}  # written elsewhere
    log.forget_positions()
    log.append(7, 57, _entry(102))
    assert [e["reason"] for e in log.read(7, 57)][-2:] == ["#101", "#102"]


def test_an_old_records_history_comes_first() -> None:
    log = TraceLog(Table())
    log.append(7, 57, _entry(2))
    legacy = [_entry(0), _entry(1), "not an entry"]
    assert [e["reason"] for e in log.read(7, 57, legacy)] == ["#0", "#1", "#2"]
