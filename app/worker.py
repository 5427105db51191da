"""Composition root: the Faust app, its topics and tables, the HTTP pages, and the per-event pipeline.

Per record: parse → (control event: update the hook table) → load the sync view from the tables →
:func:`app.execute.sync_event` → log and count. Nothing here decides sync rules. No exception leaves the agent
(faust-streaming/faust#527 would skip the offset): a record that cannot be synced goes to the dead-letter topic
with Kafka-Connect-style headers, and only then is it acknowledged.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import aiohttp
import faust
from faust.types import EventT, StreamT
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from app import logs
from app.events import (
    HookConfigured,
    HookRemoved,
    InvalidEnvelopeError,
    KnownEvent,
    TokenFromEnv,
    TokenFromFile,
    UnknownEvent,
    parse_envelope,
)
from app.execute import EventResult, GlpiExecutor, RetryPolicy, sync_event
from app.glpi import GlpiAuthError, GlpiClient, GlpiError, GlpiRejectedError, GlpiRetryableError
from app.metrics import Metrics, event_type_label, skip_reason_class
from app.settings import WorkerSettings
from app.sync.decide import apply_hook_event, record_ids
from app.sync.state import (
    ContactRecord,
    ConversationRecord,
    HookRecord,
    MessageRecord,
    SyncContext,
    SyncView,
    contact_key,
    conversation_key,
    message_key,
)

log = logging.getLogger("cwglpi.worker")


class HookConfigError(Exception):
    """A hook's token reference cannot be resolved (missing env variable or unreadable file)."""


def resolve_token(ref: str | TokenFromEnv | TokenFromFile | None) -> str | None:
    """The token value behind an inline string or an ``{"env": …}`` / ``{"file": …}`` reference."""
    if ref is None or isinstance(ref, str):
        return ref
    if isinstance(ref, TokenFromEnv):
        value = os.environ.get(ref.env)
        if not value:
            raise HookConfigError(f"token environment variable {ref.env} is not set")
        return value.strip()
    try:
        return Path(ref.file).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise HookConfigError(f"token file {ref.file} cannot be read: {exc.strerror}") from None


class DurableTable(faust.Table[Any, Any]):
    """A Table whose writes can be awaited until the changelog record is acknowledged by the broker."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._changelog_futures: dict[Any, asyncio.Future[Any]] = {}

    def on_key_set(self, key: Any, value: Any) -> None:
        fut = self.send_changelog(self.partition_for_key(key), key, value)
        partition = fut.message.partition
        assert partition is not None
        self._maybe_set_key_ttl(key, partition)
        self._sensor_on_set(self, key, value)
        self._changelog_futures[key] = fut

    async def put_durable(self, key: Any, value: Any) -> None:
        """Set ``key`` and wait until its changelog record is acknowledged (acks=all)."""
        self[key] = value
        fut = self._changelog_futures.pop(key, None)
        if fut is not None:
            await fut

    def put_buffered(self, key: Any, value: Any) -> None:
        self[key] = value
        self._changelog_futures.pop(key, None)


@dataclass
class HookClient:
    fingerprint: str
    client: GlpiClient


class Pipeline:
    """Everything one record needs: tables, GLPI clients per hook, DLQ, metrics. Built once per worker."""

    def __init__(self, app: faust.App, settings: WorkerSettings, metrics: Metrics) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.ctx = SyncContext(chatwoot_base_url=settings.chatwoot_url, allow_http=settings.allow_http)
        self.policy = RetryPolicy(base=settings.retry_base, budget=settings.retry_budget)
        self.hooks = self._table("hooks", "hook id → HookRecord")
        self.contacts = self._table("contacts", "account:contact → ContactRecord")
        self.conversations = self._table("conversations", "account:conversation → ConversationRecord")
        self.messages = self._table("messages", "account:message → MessageRecord")
        self.dlq = app.topic(settings.dlq_topic, key_serializer="raw", value_serializer="raw", internal=False)
        self._http: aiohttp.ClientSession | None = None
        self._clients: dict[int, HookClient] = {}
        self._background: set[asyncio.Future[None]] = set()
        self._host = socket.gethostname()

    def _table(self, name: str, help_text: str) -> DurableTable:
        schema: faust.Schema[Any, Any] = faust.Schema(key_serializer="json", value_serializer="json")
        table = self.app.Table(name, partitions=self.settings.partitions, schema=schema, help=help_text)
        assert isinstance(table, DurableTable)
        return table

    # ------------------------------------------------------------------------------------------- GLPI clients

    def _http_session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
        return self._http

    def client_for(self, hook: HookRecord) -> GlpiClient:
        """The hook's client, reused across events; rebuilt when its URL or tokens change."""
        settings = hook.settings
        app_token = resolve_token(settings.app_token)
        user_token = resolve_token(settings.user_token)
        assert user_token is not None  # HookSettings requires it
        logs.register_secret(app_token)
        logs.register_secret(user_token)
        fingerprint = hashlib.sha256(f"{settings.api_url}\0{app_token}\0{user_token}".encode()).hexdigest()
        current = self._clients.get(hook.hook_id)
        if current is not None and current.fingerprint == fingerprint:
            return current.client
        if current is not None:
            closing = asyncio.ensure_future(current.client.close())
            self._background.add(closing)
            closing.add_done_callback(self._background.discard)
        client = GlpiClient(
            settings.api_url,
            app_token=app_token,
            user_token=user_token,
            http=self._http_session(),
            timeout=self.settings.glpi_timeout,
            observer=self.metrics.observe_glpi_request,
            on_session_opened=self.metrics.sessions_opened.inc,
        )
        self._clients[hook.hook_id] = HookClient(fingerprint, client)
        return client

    async def aclose(self) -> None:
        """Kill every GLPI session (best effort) and close the HTTP pool."""
        await asyncio.gather(*(hc.client.close() for hc in self._clients.values()), return_exceptions=True)
        self._clients.clear()
        if self._http is not None:
            await self._http.close()

    def sessions(self) -> dict[int, bool]:
        return {hook_id: hc.client.has_session for hook_id, hc in self._clients.items()}

    # ------------------------------------------------------------------------------------------- state

    def load_view(self, event: KnownEvent | UnknownEvent) -> SyncView:
        hook_raw = self.hooks.get(str(event.hook_id))
        contact_id, conversation_id, message_id = record_ids(event)
        account = event.account_id
        contact_raw = self.contacts.get(contact_key(account, contact_id)) if contact_id is not None else None
        conv_raw = (
            self.conversations.get(conversation_key(account, conversation_id)) if conversation_id is not None else None
        )
        msg_raw = self.messages.get(message_key(account, message_id)) if message_id is not None else None
        return SyncView(
            hook=HookRecord.model_validate(hook_raw) if hook_raw else None,
            contact=ContactRecord.model_validate(contact_raw) if contact_raw else None,
            conversation=ConversationRecord.model_validate(conv_raw) if conv_raw else None,
            message=MessageRecord.model_validate(msg_raw) if msg_raw else None,
        )

    async def persist(self, before: SyncView, after: SyncView, durable: bool) -> None:
        """Write the records that changed; with ``durable`` wait for the changelog acknowledgements."""
        writes: list[tuple[Any, str, Any]] = []
        if after.contact is not None and after.contact != before.contact:
            writes.append(
                (
                    self.contacts,
                    contact_key(after.contact.account_id, after.contact.contact_id),
                    after.contact,
                )
            )
        if after.conversation is not None and after.conversation != before.conversation:
            conv = after.conversation
            writes.append((self.conversations, conversation_key(conv.account_id, conv.conversation_id), conv))
        if after.message is not None and after.message != before.message:
            writes.append(
                (
                    self.messages,
                    message_key(after.message.account_id, after.message.message_id),
                    after.message,
                )
            )
        for table, key, record in writes:
            value = record.model_dump(mode="json")
            if durable:
                await table.put_durable(key, value)
            else:
                table.put_buffered(key, value)

    # ------------------------------------------------------------------------------------------- one record

    async def handle(self, event: EventT[Any]) -> None:
        """Process one record to a final outcome. Never raises."""
        started = time.monotonic()
        message = event.message
        raw = message.value
        try:
            parsed = parse_envelope(raw)
        except InvalidEnvelopeError as exc:
            await self.dead_letter(event, "parse", "InvalidEnvelopeError", exc.reason, None, None)
            self._finish(event, None, "dead_lettered", exc.reason, started)
            return
        except Exception as exc:  # parse_envelope raises only the above; belt and braces for #527
            await self.dead_letter(event, "parse", type(exc).__name__, str(exc)[:300], None, None)
            self._finish(event, None, "dead_lettered", "unexpected parse failure", started)
            return
        try:
            if isinstance(parsed, HookConfigured | HookRemoved):
                await self._apply_control(event, parsed, started)
                return
            await self._sync(event, parsed, started)
        except Exception as exc:  # a bug of ours: keep the record, keep the agent alive
            log.exception("internal error while syncing", extra={"hook_id": parsed.hook_id})
            await self.dead_letter(event, "internal", type(exc).__name__, str(exc)[:300], None, None)
            self._finish(event, parsed, "dead_lettered", "internal error", started)

    async def _apply_control(self, event: EventT[Any], parsed: HookConfigured | HookRemoved, started: float) -> None:
        key = str(parsed.hook_id)
        raw = self.hooks.get(key)
        current = HookRecord.model_validate(raw) if raw else None
        updated, problems = apply_hook_event(current, parsed, self.ctx)
        if problems:
            reason = "; ".join(problems)
            await self.dead_letter(event, "configure", "InvalidHookSettings", reason, None, None)
            self._finish(event, parsed, "dead_lettered", reason, started)
            return
        if updated is None:
            self.hooks.pop(key, None)
            client = self._clients.pop(parsed.hook_id, None)
            if client is not None:
                await client.client.close()
        else:
            self.hooks[key] = updated.model_dump(mode="json")
        self._finish(event, parsed, "synced", f"{parsed.event} applied", started)

    async def _sync(self, event: EventT[Any], parsed: KnownEvent | UnknownEvent, started: float) -> None:
        view = self.load_view(parsed)
        state = {"view": view}

        async def persist(after: SyncView, durable: bool) -> None:
            await self.persist(state["view"], after, durable)
            state["view"] = after

        def executor() -> GlpiExecutor:
            assert view.hook is not None  # decide() only emits commands for a known hook
            return GlpiExecutor(
                self.client_for(view.hook),
                self.policy,
                on_retry=lambda code: self.metrics.retries.labels(code).inc(),
            )

        try:
            result = await sync_event(view, parsed, self.ctx, executor, persist)
        except (GlpiError, HookConfigError) as exc:
            error_class = _error_class(exc)
            code = exc.code if isinstance(exc, GlpiError) else "HOOK_CONFIG"
            message = exc.message if isinstance(exc, GlpiError) else str(exc)
            await self.dead_letter(event, "execute", error_class, message, code, getattr(exc, "status", None))
            self._finish(event, parsed, "dead_lettered", f"{error_class} {code}: {message}"[:300], started)
            return
        self._finish(event, parsed, result.outcome, _reason(result), started, result)

    # ------------------------------------------------------------------------------------------- outcomes

    async def dead_letter(
        self,
        event: EventT[Any],
        stage: str,
        error_class: str,
        message: str,
        glpi_code: str | None,
        http_status: int | None,
    ) -> None:
        """Send the original record to the DLQ with Kafka-Connect-style headers, and wait for the broker's ack."""
        msg = event.message
        headers = [
            ("__connect.errors.topic", msg.topic),
            ("__connect.errors.partition", str(msg.partition)),
            ("__connect.errors.offset", str(msg.offset)),
            ("__connect.errors.connector.name", self.settings.app_id),
            ("__connect.errors.task.id", self._host),
            ("__connect.errors.stage", stage),
            ("__connect.errors.class.name", "app.worker.Pipeline"),
            ("__connect.errors.exception.class.name", error_class),
            ("__connect.errors.exception.message", logs.redact(message)[:1000]),
            ("cwglpi.glpi.code", glpi_code or ""),
            ("cwglpi.glpi.status", str(http_status or "")),
            ("cwglpi.attempts", "1"),
            ("cwglpi.failed_at", datetime.now(tz=UTC).isoformat()),
        ]
        fut = await self.dlq.send(
            key=msg.key,
            value=msg.value if msg.value is not None else b"",
            headers=[(k, v.encode()) for k, v in headers],
        )
        await fut
        self.metrics.dead_letters.labels(error_class).inc()

    def _finish(
        self,
        event: EventT[Any],
        parsed: KnownEvent | UnknownEvent | None,
        outcome: str,
        reason: str,
        started: float,
        result: EventResult | None = None,
    ) -> None:
        msg = event.message
        event_type = event_type_label(parsed.event if parsed else None)
        self.metrics.events.labels(event_type, outcome).inc()
        if outcome == "skipped":
            self.metrics.skips.labels(skip_reason_class(reason)).inc()
        if outcome == "synced" and parsed is not None:
            occurred = parsed.occurred_at.timestamp() if parsed.occurred_at else msg.timestamp
            self.metrics.sync_lag.labels(event_type).observe(max(0.0, time.time() - occurred))
            self.metrics.last_success.set(time.time())
        level = logging.WARNING if outcome == "dead_lettered" else logging.INFO
        log.log(
            level,
            "%s %s: %s",
            parsed.event if parsed else "record",
            outcome,
            reason,
            extra={
                "hook_id": parsed.hook_id if parsed else None,
                "event": parsed.event if parsed else None,
                "outcome": outcome,
                "partition": msg.partition,
                "offset": msg.offset,
                "glpi_ids": result.finished.glpi_ids if result else {},
                "duration_ms": round((time.monotonic() - started) * 1000, 1),
            },
        )


def _error_class(exc: Exception) -> str:
    for cls in (GlpiAuthError, GlpiRejectedError, GlpiRetryableError, GlpiError):
        if isinstance(exc, cls):
            return cls.__name__
    return type(exc).__name__


def _reason(result: EventResult) -> str:
    if result.commands:
        return "ran " + ", ".join(result.commands)
    return result.finished.reason


# ----------------------------------------------------------------------------------------------------- the app


class SyncApp(faust.App):
    """The Faust app; closes GLPI sessions after the consumer has stopped."""

    pipeline: Pipeline

    async def on_stop(self) -> None:
        await super().on_stop()
        pipeline = getattr(self, "pipeline", None)
        if pipeline is not None:
            await pipeline.aclose()


def build_app(settings: WorkerSettings, registry: CollectorRegistry | None = None) -> SyncApp:
    """Wire the app: topics, tables, agent, HTTP pages. No I/O happens until the worker starts."""
    registry = registry or CollectorRegistry()
    metrics = Metrics(registry)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = SyncApp(
        settings.app_id,
        broker=settings.broker_url,
        store=settings.store,
        datadir=str(settings.data_dir),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        table_standby_replicas=0,
        web_enabled=True,
        web_port=settings.http_port,
        web_bind=settings.http_host,
        web_tables_enabled=False,
        web_in_thread=False,
        broker_commit_interval=1.0,
        broker_commit_every=100,
        stream_buffer_maxsize=256,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        # Tansu: end_offsets() is wrong after multi-record batches, so table recovery would lose records.
        producer_max_batch_size=1 if settings.embedded_broker else 16384,
        # Tansu makes a group join wait half the session timeout.
        broker_session_timeout=6.0 if settings.embedded_broker else 60.0,
        broker_heartbeat_interval=1.0 if settings.embedded_broker else 3.0,
        table_cleanup_interval=3600,
        Table=DurableTable,
    )
    pipeline = Pipeline(app, settings, metrics)
    app.pipeline = pipeline
    source = app.topic(
        settings.topic,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.partitions,
        internal=False,
    )

    @app.agent(source, name="sync")
    async def sync_agent(stream: StreamT[Any]) -> None:
        async for event in stream.events():
            await pipeline.handle(event)

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        return web.bytes(generate_latest(registry), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/health/live")
    async def live_page(web: Any, request: Any) -> Any:
        return web.json({"status": "ok"})

    @app.page("/health/ready")
    async def ready_page(web: Any, request: Any) -> Any:
        recovery = cast(Any, app.tables).recovery
        ready = bool(recovery.completed.is_set()) and not app.rebalancing
        return web.json({"ready": ready}, status=200 if ready else 503)

    return app


def iter_partitions(app: faust.App) -> Iterable[int]:
    return sorted(tp.partition for tp in app.consumer.assignment())


def run_worker(settings: WorkerSettings) -> None:
    """Start the worker in the foreground until SIGTERM/SIGINT."""
    logs.configure(settings.log_level, settings.log_format)
    app = build_app(settings)

    class _Worker(faust.Worker):
        def _setup_logging(self) -> None:
            logs.configure(settings.log_level, settings.log_format)

    worker = _Worker(app, loglevel=settings.log_level.lower(), quiet=True)
    worker.execute_from_commandline()
