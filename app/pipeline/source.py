"""A record as read from Kafka or from a parked queue, independent of faust's Event."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

from faust.types import EventT

#: How handling a record ended. ``done``: it reached a final outcome. ``paused``: a parked record stays at its
#: queue's head (its hook cannot go on yet).
Disposition = Literal["done", "paused"]


def _headers(raw: Any) -> tuple[tuple[str, bytes], ...]:
    items = raw.items() if isinstance(raw, dict) else (raw or ())
    return tuple((str(k), v if isinstance(v, bytes) else str(v).encode()) for k, v in items)


@dataclass(frozen=True)
class SourceRecord:
    """Where a record came from (topic, partition, offset), and its key, value and headers.

    ``parked_seq`` is set when the record comes out of its hook's parked queue.
    """

    topic: str
    partition: int
    offset: int
    timestamp: float
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = field(default=())
    parked_seq: int | None = None

    @classmethod
    def from_event(cls, event: EventT[Any]) -> SourceRecord:
        msg = event.message
        key = msg.key if isinstance(msg.key, bytes) else None
        value = msg.value if isinstance(msg.value, bytes) else None
        return cls(
            msg.topic,
            msg.partition,
            msg.offset,
            float(msg.timestamp or time.time()),
            key,
            value,
            _headers(getattr(msg, "headers", None)),
        )

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value.decode("utf-8", "replace")
        return None

    @property
    def origin(self) -> str:
        """``topic/partition@offset`` for log lines and operators."""
        return f"{self.topic}/{self.partition}@{self.offset}"
