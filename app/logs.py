"""Logging: one JSON object per line (or a human format for terminals), with secrets redacted everywhere.

Any string registered with :func:`register_secret` (resolved GLPI tokens) is replaced by ``***`` in every record
that passes through the root handler, whoever logged it.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

_SECRETS: set[str] = set()
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def register_secret(value: str | None) -> None:
    """Redact ``value`` from all log output from now on (ignores values too short to be tokens)."""
    if value and len(value) >= 6:
        _SECRETS.add(value)


def redact(text: str) -> str:
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, "***")
    return text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return redact(orjson.dumps(payload, default=str).decode())


def _plain(value: Any) -> str:
    """A log field for people: ``user_id:40,ticket_id:100`` rather than ``{'user_id': 40, ...}``."""
    if isinstance(value, dict):
        return ",".join(f"{k}:{_plain(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ",".join(_plain(v) for v in value)
    return str(value)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(
            f"{k}={_plain(v)}"
            for k, v in record.__dict__.items()
            if k not in _STANDARD and not k.startswith("_") and v not in (None, {}, [])
        )
        return redact(super().format(record) + (f" [{extras}]" if extras else ""))


class FirstStartNoise(logging.Filter):
    """aiokafka's "coordinator not available" errors on a cluster's first start are expected: say so, at INFO."""

    EXPECTED = ("CoordinatorNotAvailable", "GroupCoordinatorNotAvailable", "NotCoordinatorForGroup")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.levelno >= logging.WARNING and any(name in message for name in self.EXPECTED):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg = (
                message + " (expected while a new cluster creates its group coordinator, or during a broker "
                "restart: the worker retries)"
            )
            record.args = ()
        return True


#: Loggers whose repeated warnings and errors are damped (the product's own lines are never held back).
LIBRARY_LOGGERS = ("aiokafka", "faust", "mode", "kafka")
#: Numbers, addresses and ids in a library message: two lines that differ only there repeat each other.
_VARYING = re.compile(r"0x[0-9a-f]+|\d+(\.\d+)*|<[^>]*>|'[^']*'|\([^)]*\)")


@dataclass
class _Burst:
    started: float
    held: int = 0


class RepeatDamper(logging.Filter):
    """A library warning or error that repeats is logged once per ``window`` seconds, with how many were held back.

    While a broker is down aiokafka logs a line (often with a traceback) per connection attempt: a thousand a
    second. The first line of a burst says what changed; while it lasts, one line per window says it still does and
    how many like it were not logged. Lines differing only in numbers, addresses or quoted values repeat each other.
    """

    def __init__(self, window: float = 30.0, clock: Callable[[], float] = time.monotonic, kept: int = 500) -> None:
        super().__init__()
        self.window = window
        self.clock = clock
        self.kept = kept
        self._bursts: dict[tuple[str, int, str], _Burst] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not record.name.startswith(LIBRARY_LOGGERS):
            return True
        message = record.getMessage()
        key = (record.name, record.levelno, _VARYING.sub("#", message)[:200])
        now = self.clock()
        burst = self._bursts.get(key)
        if burst is not None and now - burst.started < self.window:
            burst.held += 1
            return False
        if len(self._bursts) >= self.kept:
            self._bursts = {k: b for k, b in self._bursts.items() if now - b.started < self.window}
        self._bursts[key] = _Burst(now)
        if burst is not None and burst.held:
            record.msg = f"{message} (and {burst.held} more like it in the last {now - burst.started:.0f} s)"
            record.args = ()
        return True


def configure(level: str = "INFO", fmt: str = "json") -> None:
    """Install one stderr handler on the root logger (idempotent)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RepeatDamper())
    root.addHandler(handler)
    root.setLevel(level)
    # The libraries' INFO lines (every rebalance step) only at DEBUG, where they tell a stuck partition's story.
    library_level = logging.INFO if logging.getLevelName(level) <= logging.DEBUG else logging.WARNING
    for noisy in ("aiokafka", "faust", "mode"):
        logging.getLogger(noisy).setLevel(max(library_level, logging.getLevelName(level)))
    for name in ("aiokafka", "aiokafka.consumer.group_coordinator", "faust.transport.drivers.aiokafka"):
        target = logging.getLogger(name)
        if not any(isinstance(f, FirstStartNoise) for f in target.filters):
            target.addFilter(FirstStartNoise())
