"""Kafka for the CLI, the demo and the start-up checks: one way to connect (TLS, SASL), publish, read, administer.

:class:`KafkaConnection` is built once from the settings (``KAFKA_SECURITY_PROTOCOL``, ``KAFKA_SASL_*``,
``KAFKA_SSL_*``) and gives the same connection to aiokafka clients and to faust. Every helper starts its client,
and on any failure stops it again (no "Unclosed AIOKafkaProducer") and raises :class:`BrokerUnreachableError` or
:class:`TopicMissingError`, whose message says what to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError
from aiokafka.structs import ConsumerRecord

from app.settings import ToolSettings


class BrokerUnreachableError(Exception):
    """No Kafka broker answered (or it refused our credentials); the message names the servers and the fix."""


class TopicMissingError(Exception):
    """A topic the command needs does not exist yet."""


@dataclass(frozen=True)
class KafkaConnection:
    """Bootstrap servers plus the security every client of this deployment uses."""

    bootstrap: str
    protocol: str = "PLAINTEXT"
    ssl_context: ssl.SSLContext | None = None
    sasl_mechanism: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def from_settings(cls, settings: ToolSettings) -> KafkaConnection:
        protocol = settings.kafka_security_protocol
        context = None
        if protocol in ("SSL", "SASL_SSL"):
            context = ssl.create_default_context(
                cafile=str(settings.kafka_ssl_ca_file) if settings.kafka_ssl_ca_file else None
            )
            context.check_hostname = settings.kafka_ssl_check_hostname
            if settings.kafka_ssl_cert_file is not None:
                context.load_cert_chain(
                    str(settings.kafka_ssl_cert_file),
                    str(settings.kafka_ssl_key_file) if settings.kafka_ssl_key_file else None,
                    settings.kafka_ssl_key_password,
                )
        password = settings.kafka_sasl_password
        if settings.kafka_sasl_password_file is not None:
            password = settings.kafka_sasl_password_file.read_text(encoding="utf-8").strip()
        sasl = protocol.startswith("SASL_")
        return cls(
            settings.kafka_bootstrap_servers,
            protocol,
            context,
            settings.kafka_sasl_mechanism if sasl else None,
            settings.kafka_sasl_username if sasl else None,
            password if sasl else None,
        )

    def kwargs(self) -> dict[str, Any]:
        """Connection arguments for any aiokafka client."""
        options: dict[str, Any] = {"bootstrap_servers": self.bootstrap, "security_protocol": self.protocol}
        if self.ssl_context is not None:
            options["ssl_context"] = self.ssl_context
        if self.sasl_mechanism is not None:
            options.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.username,
                sasl_plain_password=self.password,
            )
        return options

    def faust_credentials(self) -> Any:
        """The same connection as faust ``broker_credentials`` (None for PLAINTEXT)."""
        import faust

        if self.sasl_mechanism is not None:
            return faust.SASLCredentials(
                username=self.username,
                password=self.password,
                ssl_context=self.ssl_context,
                mechanism=self.sasl_mechanism,
            )
        if self.ssl_context is not None:
            return faust.SSLCredentials(self.ssl_context)
        return None

    def unreachable(self, exc: BaseException) -> BrokerUnreachableError:
        detail = str(exc) or type(exc).__name__
        hint = (
            "check KAFKA_BOOTSTRAP_SERVERS, that the broker runs and that this host may reach it (a broker that "
            "requires TLS or SASL closes plain connections: set KAFKA_SECURITY_PROTOCOL)"
            if self.protocol == "PLAINTEXT"
            else f"check KAFKA_BOOTSTRAP_SERVERS, KAFKA_SECURITY_PROTOCOL={self.protocol}, the CA and the credentials"
        )
        return BrokerUnreachableError(f"cannot reach Kafka at {self.bootstrap} ({detail[:200]}): {hint}")


Target = KafkaConnection | str


def connection(target: Target) -> KafkaConnection:
    """A plain-text connection for a bare bootstrap string (tests, the demo), else ``target`` itself."""
    return KafkaConnection(target) if isinstance(target, str) else target


@contextlib.asynccontextmanager
async def _started(client: Any, conn: KafkaConnection) -> AsyncIterator[Any]:
    """Start an aiokafka client, stop it whatever happens, and translate connection failures."""
    try:
        try:
            await asyncio.wait_for(client.start(), 30)
        except (KafkaConnectionError, TimeoutError, OSError) as exc:
            raise conn.unreachable(exc) from None
        except KafkaError as exc:  # e.g. a SASL handshake refused by the broker
            raise conn.unreachable(exc) from None
        yield client
    finally:
        with contextlib.suppress(Exception):
            await (client.close() if isinstance(client, AIOKafkaAdminClient) else client.stop())


def _admin(conn: KafkaConnection) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**conn.kwargs(), request_timeout_ms=15000)


def envelope_key(envelope: dict[str, Any]) -> bytes:
    """The record key producers must use: the hook id as a decimal UTF-8 string."""
    return str(int(envelope["hook_id"])).encode()


async def topic_partitions(target: Target, names: list[str]) -> dict[str, int]:
    """Partition counts of those of ``names`` that exist on the cluster."""
    conn = connection(target)
    async with _started(_admin(conn), conn) as admin:
        present = set(await admin.list_topics())
        wanted = [name for name in names if name in present]
        described = await admin.describe_topics(wanted) if wanted else []
        return {t["topic"]: len(t["partitions"]) for t in described if t.get("partitions")}


async def require_topic(target: Target, topic: str, what: str) -> None:
    """Raise :class:`TopicMissingError` unless ``topic`` exists (before publishing, instead of 40 s of retries)."""
    if topic not in await topic_partitions(target, [topic]):
        raise TopicMissingError(
            f"the {what} topic {topic} does not exist yet: start a worker first (it creates its topics), "
            "or create it (deploy/k8s/components/strimzi-topics/topics.yaml)"
        )


async def read_topic(target: Target, topic: str, *, wait_s: float = 10.0) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of ``topic`` from the beginning up to its end offsets at call time (no consumer group)."""
    conn = connection(target)
    records: list[ConsumerRecord[bytes, bytes]] = []
    consumer = AIOKafkaConsumer(**conn.kwargs(), enable_auto_commit=False, auto_offset_reset="earliest")
    async with _started(consumer, conn):
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
    return sorted(records, key=lambda r: (r.partition, r.offset))


async def read_record(target: Target, topic: str, partition: int, offset: int) -> ConsumerRecord[bytes, bytes] | None:
    """One record by its position (None when retention removed it)."""
    conn = connection(target)
    consumer = AIOKafkaConsumer(**conn.kwargs(), enable_auto_commit=False, max_partition_fetch_bytes=4_194_304)
    async with _started(consumer, conn):
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, offset)
        batch = await consumer.getmany(tp, timeout_ms=5000, max_records=1)
        found = [m for m in batch.get(tp, []) if m.offset == offset]
        return found[0] if found else None


def _producer(conn: KafkaConnection, **options: Any) -> AIOKafkaProducer:
    return AIOKafkaProducer(**conn.kwargs(), acks="all", **options)


#: One record to produce: key, value, headers.
Record = tuple[bytes | None, bytes, list[tuple[str, bytes]]]


async def publish_raw(target: Target, topic: str, records: Iterable[Record]) -> int:
    """Send ``(key, value, headers)`` records in order (acks=all); returns how many were acknowledged."""
    conn = connection(target)
    count = 0
    async with _started(_producer(conn, max_request_size=2_097_152), conn) as producer:
        for key, value, headers in records:
            await producer.send_and_wait(topic, value, key=key, headers=headers)
            count += 1
    return count


@contextlib.asynccontextmanager
async def open_publisher(target: Target, topic: str) -> AsyncIterator[Callable[[list[Record]], Awaitable[int]]]:
    """A producer kept open across calls (acks=all, idempotent).

    ``await send(records)`` sends ``(key, value, headers)`` records in order and returns once the broker
    acknowledged every one of them.
    """
    conn = connection(target)
    async with _started(_producer(conn, enable_idempotence=True, linger_ms=5), conn) as producer:

        async def send(records: list[Record]) -> int:
            futures = [await producer.send(topic, value, key=key, headers=headers) for key, value, headers in records]
            for future in futures:
                await future
            return len(futures)

        yield send


async def publish(target: Target, topic: str, envelopes: Iterable[dict[str, Any]], *, batch_size: int = 1) -> int:
    """Send envelopes in order, keyed by hook id; returns how many were acknowledged (acks=all).

    ``batch_size=1`` keeps one record per batch, which the embedded Tansu broker needs.
    """
    conn = connection(target)
    count = 0
    options = {"max_batch_size": 16384 if batch_size > 1 else 1024, "linger_ms": 0 if batch_size == 1 else 5}
    async with _started(_producer(conn, **options), conn) as producer:
        for envelope in envelopes:
            await producer.send_and_wait(topic, orjson.dumps(envelope), key=envelope_key(envelope))
            count += 1
    return count


async def ensure_topics(
    target: Target,
    topics: Mapping[str, int],
    *,
    replication: int = 1,
    configs: Mapping[str, Mapping[str, str]] | None = None,
) -> None:
    """Create ``{name: partitions}`` topics that do not exist yet (with per-topic ``configs``)."""
    conn = connection(target)
    async with _started(_admin(conn), conn) as admin:
        existing = set(await admin.list_topics())
        configs = configs or {}
        new = [
            NewTopic(name, parts, replication, topic_configs=dict(configs.get(name) or {}))
            for name, parts in topics.items()
            if name not in existing
        ]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(new)


async def read_topic_since(target: Target, topic: str, since: datetime) -> list[ConsumerRecord[bytes, bytes]]:
    """Records of ``topic`` with a timestamp at or after ``since``, up to the end offsets at call time."""
    conn = connection(target)
    records: list[ConsumerRecord[bytes, bytes]] = []
    consumer = AIOKafkaConsumer(**conn.kwargs(), enable_auto_commit=False)
    async with _started(consumer, conn):
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
    return sorted(records, key=lambda r: (r.timestamp, r.partition, r.offset))


async def end_offsets(target: Target, topic: str, partitions: list[int]) -> dict[int, int]:
    conn = connection(target)
    consumer = AIOKafkaConsumer(**conn.kwargs(), enable_auto_commit=False)
    async with _started(consumer, conn):
        tps = [TopicPartition(topic, p) for p in partitions]
        ends = await consumer.end_offsets(tps)
        return {tp.partition: offset for tp, offset in ends.items()}


async def committed_offsets(target: Target, group: str, topic: str) -> dict[int, int]:
    """The consumer group's committed offset per partition of ``topic``; partitions never committed are absent.

    The partitions are named in the request: a request for all of a group's offsets is optional in Kafka's
    protocol, and some brokers (Tansu) answer it with a reply aiokafka cannot read.
    """
    conn = connection(target)
    consumer = AIOKafkaConsumer(**conn.kwargs(), enable_auto_commit=False)
    async with _started(consumer, conn):
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
    if not tps:
        return {}
    async with _started(_admin(conn), conn) as admin:
        offsets = await admin.list_consumer_group_offsets(group, partitions=tps)
        return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset >= 0}


async def delete_before(target: Target, topic: str, offsets: Mapping[int, int]) -> None:
    """Delete every record of ``topic`` below ``offsets[partition]`` (Kafka's only way to delete records)."""
    from aiokafka.admin import RecordsToDelete

    conn = connection(target)
    async with _started(_admin(conn), conn) as admin:
        await admin.delete_records(
            {TopicPartition(topic, partition): RecordsToDelete(offset) for partition, offset in offsets.items()}
        )
