"""Logging: a library's repeated errors (a broker down) are damped; the product's own lines never are."""

from __future__ import annotations

import logging

from app.logs import RepeatDamper


def _record(name: str, message: str, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, (), None)


def test_a_library_error_repeating_is_logged_once_per_window_with_how_many_were_held_back() -> None:
    now = [0.0]
    damper = RepeatDamper(window=30.0, clock=lambda: now[0])
    passed = []
    for attempt in range(1000):  # aiokafka, one line per connection attempt while the broker is down
        now[0] = attempt * 0.05
        record = _record("aiokafka.conn", f"Unable connect to node with id {attempt % 3}: [Errno 111] port 9{attempt}")
        if damper.filter(record):
            passed.append(record.getMessage())
    assert len(passed) == 2  # the first (what changed), then one line for the next 30 s
    assert passed[1].endswith("(and 599 more like it in the last 30 s)")


def test_different_troubles_and_the_products_own_lines_are_not_held_back() -> None:
    damper = RepeatDamper(window=30.0, clock=lambda: 5.0)
    assert damper.filter(_record("aiokafka.conn", "Unable connect to node with id 1"))
    assert damper.filter(_record("aiokafka.consumer.group_coordinator", "Heartbeat failed: coordinator not available"))
    assert not damper.filter(_record("aiokafka.conn", "Unable connect to node with id 2"))
    for n in range(50):  # outcome lines, warnings of ours: every one
        assert damper.filter(
            _record("cwglpi.worker", f"hook 7 paused (transient): GLPI unreachable {n}", logging.WARNING)
        )
    assert damper.filter(
        _record("aiokafka.conn", "connected", logging.INFO)
    )  # info lines pass (the level filters them)
