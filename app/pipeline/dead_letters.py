"""The dead-letter writer: the original record plus Kafka-Connect-style headers saying where it came from and why.

Every record the parser accepts must be dead-letterable. A value too big for one Kafka record next to its headers
(the input topic may accept more than our producer may send) is cut, and the headers say so and point at the source
topic, partition and offset, where ``glpi-sync dlq replay`` reads the whole record back.
"""

from __future__ import annotations

import hashlib
import socket
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka.errors import MessageSizeTooLargeError

from app import logs
from app.events import TOKEN_FIELDS
from app.metrics import Metrics
from app.pipeline.source import SourceRecord

#: The worker's producer sends requests of at most this many bytes (faust ``producer_max_request_size``).
MAX_REQUEST_BYTES = 1_048_576
#: Room left for the key, the headers and the record batch's own overhead.
HEADERS_ROOM = 32 * 1024
MAX_DLQ_VALUE = MAX_REQUEST_BYTES - HEADERS_ROOM
#: When the broker still refuses (a DLQ topic with a lower ``max.message.bytes``), the value is cut to this.
FALLBACK_DLQ_VALUE = 64 * 1024
TRUNCATED_HEADER = "cwglpi.value.truncated"


def _now() -> str:
    return datetime.now(tz=UTC).isoformat(timespec="seconds")


def without_inline_tokens(value: bytes) -> tuple[bytes, bool]:
    """``value`` with the inline tokens of a hook configuration replaced by ``***`` (and whether any was).

    A refused ``hook_configured`` is dead-lettered for the operator to read, and tokens never belong in the DLQ
    (references such as ``{"env": ...}`` are not secrets and stay).
    """
    if b"hook_configured" not in value or b"_token" not in value:
        return value, False
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError:
        return value, False
    settings = data.get("payload", {}).get("settings") if isinstance(data, dict) else None
    if not isinstance(settings, dict):
        return value, False
    hidden = False
    for name in TOKEN_FIELDS:
        if isinstance(settings.get(name), str) and settings[name]:
            settings[name] = "***"
            hidden = True
    return (orjson.dumps(data), True) if hidden else (value, False)


class DeadLetters:
    """Sends records to the dead-letter topic and waits for the broker's acknowledgement."""

    def __init__(self, topic: Any, app_id: str, metrics: Metrics) -> None:
        self.topic = topic
        self.app_id = app_id
        self.metrics = metrics
        self.host = socket.gethostname()

    def headers(
        self,
        record: SourceRecord,
        stage: str,
        error_class: str,
        message: str,
        glpi_code: str | None = None,
        http_status: int | None = None,
    ) -> list[tuple[str, str]]:
        return [
            ("__connect.errors.topic", record.topic),
            ("__connect.errors.partition", str(record.partition)),
            ("__connect.errors.offset", str(record.offset)),
            ("__connect.errors.connector.name", self.app_id),
            ("__connect.errors.task.id", self.host),
            ("__connect.errors.stage", stage),
            ("__connect.errors.class.name", "app.pipeline"),
            ("__connect.errors.exception.class.name", error_class),
            ("__connect.errors.exception.message", logs.redact(message)[:1000]),
            ("cwglpi.glpi.code", glpi_code or ""),
            ("cwglpi.glpi.status", str(http_status or "")),
            ("cwglpi.failed_at", _now()),
        ]

    async def send(
        self,
        record: SourceRecord,
        stage: str,
        error_class: str,
        message: str,
        glpi_code: str | None = None,
        http_status: int | None = None,
    ) -> None:
        """Dead-letter ``record`` (cut when too big, with headers saying so), then count it."""
        headers = self.headers(record, stage, error_class, message, glpi_code, http_status)
        value, hidden = without_inline_tokens(record.value if record.value is not None else b"")
        if hidden:
            headers.append(("cwglpi.value.redacted", "inline tokens"))
        try:
            await self._send(record.key, value, headers, MAX_DLQ_VALUE)
        except MessageSizeTooLargeError:
            await self._send(record.key, value, headers, FALLBACK_DLQ_VALUE)
        self.metrics.dead_letters.labels(error_class).inc()

    async def _send(self, key: bytes | None, value: bytes, headers: list[tuple[str, str]], limit: int) -> None:
        if len(value) > limit:
            digest = hashlib.sha256(value).hexdigest()
            headers = [*headers, (TRUNCATED_HEADER, str(len(value))), ("cwglpi.value.sha256", digest)]
            value = value[:limit]
        fut = await self.topic.send(key=key, value=value, headers=[(k, v.encode()) for k, v in headers])
        await fut
