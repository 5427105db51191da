"""Small Kafka helpers for the CLI and the demo: publish envelopes keyed by hook id, create topics."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.structs import ConsumerRecord


def envelope_key(envelope: dict[str, Any]) -> bytes:
    """The record key producers must use: the hook id as a decimal UTF-8 string."""
    return str(int(envelope["hook_id"])).encode()


async def read_topic(bootstrap: str, topic: str, *, wait_s: float = 10.0) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of ``topic`` from the beginning up to its end offsets at call time (no consumer group)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        remaining = {tp for tp in tps if end[tp] > 0}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while remaining and loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for tp, msgs in batch.items():
                records.extend(m for m in msgs if m.offset < end[tp])
                if msgs and msgs[-1].offset >= end[tp] - 1:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return sorted(records, key=lambda r: (r.partition, r.offset))


async def publish_raw(
    bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]
) -> int:
    """Send ``(key, value, headers)`` records in order (acks=all); returns how many were acknowledged."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    count = 0
    try:
        for key, value, headers in records:
            await producer.send_and_wait(topic, value, key=key, headers=headers)
            count += 1
    finally:
        await producer.stop()
    return count


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


async def read_topic_since(bootstrap: str, topic: str, since: datetime) -> list[ConsumerRecord[bytes, bytes]]:
    """Records of ``topic`` with a timestamp at or after ``since``, up to the end offsets at call time."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        starts = await consumer.offsets_for_times({tp: int(since.timestamp() * 1000) for tp in tps})
        end = await consumer.end_offsets(tps)
        pending = set()
        for tp in tps:
            found = starts.get(tp)
            if found is not None and found.offset < end[tp]:
                consumer.seek(tp, found.offset)
                pending.add(tp)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 120
        while pending and loop.time() < deadline:
            batch = await consumer.getmany(*pending, timeout_ms=500)
            for tp, msgs in batch.items():
                records.extend(m for m in msgs if m.offset < end[tp])
                if msgs and msgs[-1].offset >= end[tp] - 1:
                    pending.discard(tp)
    finally:
        await consumer.stop()
    return sorted(records, key=lambda r: (r.timestamp, r.partition, r.offset))


async def end_offsets(bootstrap: str, topic: str, partitions: list[int]) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        ends = await consumer.end_offsets(tps)
        return {tp.partition: offset for tp, offset in ends.items()}
    finally:
        await consumer.stop()


async def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The consumer group's committed offset per partition of ``topic``."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
        return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset >= 0}
    finally:
        await admin.close()
