"""Small Kafka helpers for the CLI and the demo: publish envelopes keyed by hook id, create topics."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError


def envelope_key(envelope: dict[str, Any]) -> bytes:
    """The record key producers must use: the hook id as a decimal UTF-8 string."""
    return str(int(envelope["hook_id"])).encode()


async def publish(bootstrap: str, topic: str, envelopes: Iterable[dict[str, Any]], *, batch_size: int = 1) -> int:
    """Send envelopes in order, keyed by hook id; returns how many were acknowledged (acks=all).

    ``batch_size=1`` keeps one record per batch, which the embedded Tansu broker needs.
    """
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        max_batch_size=16384 if batch_size > 1 else 1024,
        linger_ms=0 if batch_size == 1 else 5,
    )
    await producer.start()
    count = 0
    try:
        for envelope in envelopes:
            await producer.send_and_wait(topic, orjson.dumps(envelope), key=envelope_key(envelope))
            count += 1
    finally:
        await producer.stop()
    return count


async def ensure_topics(
    bootstrap: str, topics: dict[str, int], *, replication: int = 1, configs: dict[str, dict[str, str]] | None = None
) -> None:
    """Create ``{name: partitions}`` topics that do not exist yet (with per-topic ``configs``)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        configs = configs or {}
        new = [
            NewTopic(name, parts, replication, topic_configs=configs.get(name) or {})
            for name, parts in topics.items()
            if name not in existing
        ]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(new)
    finally:
        await admin.close()
