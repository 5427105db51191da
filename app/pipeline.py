"""One Kafka record to one final outcome: synced, skipped, parked or dead-lettered. Never raises.

Per record: parse → control event? (hook table) → parked hook? (park) → load the sync view →
:func:`app.execute.sync_event` → outcome. Failures are handled by class (``app/glpi/errors.py``):

| failure                                   | outcome                                                      |
|-------------------------------------------|--------------------------------------------------------------|
| not JSON / invalid envelope               | dead-lettered (stage ``parse``)                              |
| GLPI rejects the request                  | dead-lettered (stage ``execute``) with GLPI code and message  |
| GLPI unreachable past the retry budget    | hook paused ``transient``; the event parked; auto-retried     |
| credentials, API switch or rights broken  | hook paused ``auth``; the event parked until reconfigured      |
| a bug of ours (unexpected exception)      | retried 3 times, then dead-lettered (stage ``internal``)       |

A paused hook's events — and every later one, to keep its order — go to the ``parked`` table (durably, before the
record is acknowledged). They are drained in order, in the context of a record of the same partition, when the hook
is reconfigured (``hook_configured``), resumed (``hook_resume``), or retried by the worker's timer (``hook_retry``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import html
import logging
import os
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import faust
from faust.types import EventT

from app import logs
from app.events import (
    Contact,
    ControlCommand,
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
from app.glpi import GlpiAuthError, GlpiClient, GlpiError, GlpiNotFoundError, GlpiRejectedError, GlpiRetryableError
from app.metrics import Metrics, event_type_label, skip_reason_class
from app.settings import WorkerSettings
from app.sync import mapping
from app.sync.commands import CreateFollowup, CreateTicket, cautious
from app.sync.decide import apply_hook_event, ensure_contact_command, record_ids, ticket_gone
from app.sync.record import record as record_outcome
from app.sync.state import (
    ContactRecord,
    ConversationRecord,
    HookRecord,
    MessageRecord,
    Pause,
    SyncContext,
    SyncView,
    contact_key,
    conversation_key,
    message_key,
    parked_key,
)

log = logging.getLogger("cwglpi.worker")
INTERNAL_ATTEMPTS = 3


class HookConfigError(Exception):
    """A hook's token reference cannot be resolved (missing env variable or unreadable file)."""


class PauseHook(Exception):  # noqa: N818 - control flow, not an error
    """Stop syncing this hook and park its events (``kind`` is a :class:`Pause` kind)."""

    def __init__(self, kind: str, reason: str, code: str | None = None) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.code = code


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


@dataclass(frozen=True)
class SourceRecord:
    """A record as read from Kafka (or from the parked queue), independent of faust's Event."""

    topic: str
    partition: int
    offset: int
    timestamp: float
    key: bytes | None
    value: bytes | None
    parked_seq: int | None = None

    @classmethod
    def from_event(cls, event: EventT[Any]) -> SourceRecord:
        msg = event.message
        key = msg.key if isinstance(msg.key, bytes) else None
        value = msg.value if isinstance(msg.value, bytes) else None
        return cls(msg.topic, msg.partition, msg.offset, float(msg.timestamp or time.time()), key, value)

    def to_json(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "timestamp": self.timestamp,
            "key": base64.b64encode(self.key).decode() if self.key is not None else None,
            "value": base64.b64encode(self.value).decode() if self.value is not None else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], seq: int) -> SourceRecord:
        def b64(value: Any) -> bytes | None:
            return base64.b64decode(value) if isinstance(value, str) else None

        return cls(
            str(data["topic"]),
            int(data["partition"]),
            int(data["offset"]),
            float(data["timestamp"]),
            b64(data.get("key")),
            b64(data.get("value")),
            parked_seq=seq,
        )


@dataclass
class _HookClient:
    fingerprint: str
    client: GlpiClient


def _now() -> str:
    return datetime.now(tz=UTC).isoformat(timespec="seconds")


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
        self.parked = self._table("parked", "hook:seq → parked record, in order")
        self.dlq = app.topic(settings.dlq_topic, key_serializer="raw", value_serializer="raw", internal=False)
        self.control = app.topic(settings.control_topic, key_serializer="raw", value_serializer="raw", internal=False)
        self._http: aiohttp.ClientSession | None = None
        self._clients: dict[int, _HookClient] = {}
        self._background: set[asyncio.Future[None]] = set()
        self._host = socket.gethostname()

    def _table(self, name: str, help_text: str) -> DurableTable:
        schema: faust.Schema[Any, Any] = faust.Schema(key_serializer="json", value_serializer="json")
        options: dict[str, Any] | None = None
        if self.settings.store.startswith("rocksdb"):
            options = {
                "driver": "rocksdict",
                "block_cache_size": self.settings.rocksdb_block_cache_mb * 1024 * 1024,
                "write_buffer_size": self.settings.rocksdb_write_buffer_mb * 1024 * 1024,
            }
        table = self.app.Table(
            name, partitions=self.settings.partitions, schema=schema, help=help_text, options=options
        )
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
        self._clients[hook.hook_id] = _HookClient(fingerprint, client)
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

    def hook(self, hook_id: int) -> HookRecord | None:
        raw = self.hooks.get(str(hook_id))
        return HookRecord.model_validate(raw) if raw else None

    async def save_hook(self, hook: HookRecord, *, durable: bool = True) -> None:
        if durable:
            await self.hooks.put_durable(str(hook.hook_id), hook.model_dump(mode="json"))
        else:
            self.hooks.put_buffered(str(hook.hook_id), hook.model_dump(mode="json"))

    def load_view(self, event: KnownEvent | UnknownEvent) -> SyncView:
        contact_id, conversation_id, message_id = record_ids(event)
        account = event.account_id
        contact_raw = self.contacts.get(contact_key(account, contact_id)) if contact_id is not None else None
        conv_raw = (
            self.conversations.get(conversation_key(account, conversation_id)) if conversation_id is not None else None
        )
        msg_raw = self.messages.get(message_key(account, message_id)) if message_id is not None else None
        return SyncView(
            hook=self.hook(event.hook_id),
            contact=ContactRecord.model_validate(contact_raw) if contact_raw else None,
            conversation=ConversationRecord.model_validate(conv_raw) if conv_raw else None,
            message=MessageRecord.model_validate(msg_raw) if msg_raw else None,
        )

    async def persist(self, before: SyncView, after: SyncView, durable: bool) -> None:
        """Write the records that changed; with ``durable`` wait for the changelog acknowledgements."""
        writes: list[tuple[DurableTable, str, Any]] = []
        if after.contact is not None and after.contact != before.contact:
            key = contact_key(after.contact.account_id, after.contact.contact_id)
            writes.append((self.contacts, key, after.contact))
        if after.conversation is not None and after.conversation != before.conversation:
            conv = after.conversation
            writes.append((self.conversations, conversation_key(conv.account_id, conv.conversation_id), conv))
        if after.message is not None and after.message != before.message:
            key = message_key(after.message.account_id, after.message.message_id)
            writes.append((self.messages, key, after.message))
        for table, key, record in writes:
            value = record.model_dump(mode="json")
            if durable:
                await table.put_durable(key, value)
            else:
                table.put_buffered(key, value)

    # ------------------------------------------------------------------------------------------- one record

    async def handle(self, event: EventT[Any]) -> None:
        """Process one Kafka record to a final outcome. Never raises."""
        await self.process(SourceRecord.from_event(event))

    async def process(self, record: SourceRecord) -> None:
        started = time.monotonic()
        try:
            parsed = parse_envelope(record.value)
        except InvalidEnvelopeError as exc:
            await self.dead_letter(record, "parse", "InvalidEnvelopeError", exc.reason)
            self._finish(record, None, "dead_lettered", exc.reason, started)
            return
        for attempt in range(1, INTERNAL_ATTEMPTS + 1):
            try:
                await self._route(record, parsed, started)
                return
            except (asyncio.CancelledError, PauseHook):
                raise
            except Exception as exc:  # a bug of ours: retry, then keep the record in the DLQ, keep the agent alive
                log.exception("internal error (attempt %d)", attempt, extra={"hook_id": parsed.hook_id})
                if attempt == INTERNAL_ATTEMPTS:
                    await self.dead_letter(record, "internal", type(exc).__name__, str(exc)[:300])
                    self._finish(record, parsed, "dead_lettered", "internal error", started)
                    return
                await asyncio.sleep(0.5 * attempt)

    async def _route(self, record: SourceRecord, parsed: KnownEvent | UnknownEvent, started: float) -> None:
        from_control_topic = record.topic == self.settings.control_topic
        if isinstance(parsed, ControlCommand):
            if not from_control_topic:
                reason = f"{parsed.event} is only accepted on the control topic {self.settings.control_topic}"
                await self.dead_letter(record, "parse", "ForbiddenControlCommand", reason)
                self._finish(record, parsed, "dead_lettered", reason, started)
                return
            await self._command(record, parsed, started)
            return
        if from_control_topic:
            reason = f"{parsed.event} is not a control command"
            await self.dead_letter(record, "parse", "UnexpectedOnControlTopic", reason)
            self._finish(record, parsed, "dead_lettered", reason, started)
            return
        if isinstance(parsed, HookConfigured | HookRemoved):
            await self._configure(record, parsed, started)
            return
        hook = self.hook(parsed.hook_id)
        if hook is not None and hook.partition != record.partition and record.parked_seq is None:
            hook = hook.model_copy(update={"partition": record.partition})
            await self.save_hook(hook, durable=False)
        if hook is not None and hook.parking and record.parked_seq is None:
            await self.park(hook, record)
            reason = f"hook paused ({hook.pause.kind}): {hook.pause.reason}" if hook.pause else "behind parked events"
            self._finish(record, parsed, "parked", reason, started)
            return
        try:
            await self._sync(record, parsed, started)
        except PauseHook as pause:
            assert hook is not None  # only a known hook reaches GLPI
            hook = await self.pause_hook(hook.hook_id, pause.kind, pause.reason)
            if record.parked_seq is not None:
                raise
            await self.park(hook, record)
            self._finish(record, parsed, "parked", f"hook paused ({pause.kind}): {pause.reason}", started)

    async def _sync(self, record: SourceRecord, parsed: KnownEvent | UnknownEvent, started: float) -> None:
        view = self.load_view(parsed)
        state = {"view": view}

        async def persist(after: SyncView, durable: bool) -> None:
            await self.persist(state["view"], after, durable)
            state["view"] = after

        def executor() -> GlpiExecutor:
            assert view.hook is not None  # decide() only emits commands for a known hook
            return GlpiExecutor(
                self.client_for(view.hook), self.policy, on_retry=lambda code: self.metrics.retries.labels(code).inc()
            )

        try:
            result = await sync_event(view, parsed, self.ctx, executor, persist)
        except GlpiRetryableError as exc:
            raise PauseHook(
                "transient", f"GLPI unreachable: {exc.code} {exc.message}".strip()[:300], exc.code
            ) from None
        except GlpiAuthError as exc:
            raise PauseHook("auth", f"{exc.code}: {exc.message}"[:300], exc.code) from None
        except HookConfigError as exc:
            raise PauseHook("auth", str(exc)) from None
        except GlpiRejectedError as exc:
            await self.dead_letter(record, "execute", type(exc).__name__, exc.message, exc.code, exc.status)
            self._finish(record, parsed, "dead_lettered", f"{type(exc).__name__} {exc.code}: {exc.message}", started)
            return
        self._finish(record, parsed, result.outcome, _reason(result), started, result)

    # ------------------------------------------------------------------------------------------- hooks

    async def _configure(self, record: SourceRecord, parsed: HookConfigured | HookRemoved, started: float) -> None:
        current = self.hook(parsed.hook_id)
        updated, problems = apply_hook_event(current, parsed, self.ctx)
        if problems:
            reason = "; ".join(problems)
            await self.dead_letter(record, "configure", "InvalidHookSettings", reason)
            self._finish(record, parsed, "dead_lettered", reason, started)
            return
        if updated is None:
            if current is not None and current.parked:
                await self._dead_letter_parked(current, "hook removed while events were parked")
            self.hooks.pop(str(parsed.hook_id), None)
            client = self._clients.pop(parsed.hook_id, None)
            if client is not None:
                await client.client.close()
            self._finish(record, parsed, "synced", "hook removed", started)
            return
        updated = updated.model_copy(update={"partition": record.partition})
        await self.save_hook(updated)
        self._finish(record, parsed, "synced", f"{parsed.event} applied", started)
        await self.drain(updated.hook_id)

    async def _command(self, record: SourceRecord, parsed: ControlCommand, started: float) -> None:
        """Operator and worker commands, in order with the hook's events (same partition, same lane)."""
        hook = self.hook(parsed.hook_id)
        if hook is None:
            self._finish(record, parsed, "skipped", "unknown hook", started)
            return
        if hook.partition is not None and hook.partition != record.partition:
            reason = (
                f"command arrived on partition {record.partition} but hook {hook.hook_id} lives on partition "
                f"{hook.partition}: the Chatwoot producer must use the murmur2 partitioner"
            )
            await self.dead_letter(record, "configure", "MisroutedCommand", reason)
            self._finish(record, parsed, "dead_lettered", reason, started)
            return
        who = f" (by {parsed.payload.requested_by})" if parsed.payload.requested_by else ""
        match parsed.event:
            case "hook_pause":
                reason = parsed.payload.reason or "paused by an operator"
                await self.pause_hook(hook.hook_id, "operator", reason)
                self._finish(record, parsed, "synced", f"hook paused{who}: {reason}", started)
            case "hook_enable" | "hook_disable":
                status = "enabled" if parsed.event == "hook_enable" else "disabled"
                await self.save_hook(hook.model_copy(update={"status": status}))
                self._finish(record, parsed, "synced", f"hook {status}{who}", started)
                await self.drain(hook.hook_id)
            case "hook_skip":
                await self._skip_head(record, parsed, hook, started)
            case "hook_reset":
                await self._reset(record, parsed, hook, started)
            case "hook_rebuilt":
                await self.save_hook(hook.model_copy(update={"rebuilding": False}))
                self._finish(record, parsed, "synced", "rebuild finished: creates no longer look first", started)
            case "set_contact_mapping" | "set_conversation_mapping":
                await self._set_mapping(record, parsed, hook, started)
            case "resync_contact" | "resync_conversation":
                await self._resync(record, parsed, hook, started)
            case "hook_retry" | "hook_resume":
                if parsed.event == "hook_retry" and (hook.pause is None or hook.pause.kind != "transient"):
                    self._finish(record, parsed, "skipped", "nothing to retry", started)
                    return
                if hook.pause is not None:
                    await self.save_hook(hook.model_copy(update={"pause": None}))
                    self.refresh_gauges()
                self._finish(
                    record, parsed, "synced", f"{parsed.event}{who}: draining {hook.parked} parked event(s)", started
                )
                await self.drain(hook.hook_id)

    async def _skip_head(self, record: SourceRecord, parsed: ControlCommand, hook: HookRecord, started: float) -> None:
        """The guide's "clear stuck jobs": the event the hook is stuck on goes to the DLQ, with who and why."""
        if hook.parked == 0:
            self._finish(record, parsed, "skipped", "no parked event to skip", started)
            return
        seq = hook.parked_first
        raw = self.parked.pop(parked_key(hook.hook_id, seq), None)
        if raw is not None:
            reason = f"skipped by operator {parsed.payload.requested_by or '?'}: {parsed.payload.reason or '-'}"
            await self.dead_letter(SourceRecord.from_json(raw, seq), "operator-skip", "SkippedByOperator", reason)
        await self.save_hook(hook.model_copy(update={"parked_first": seq + 1}))
        self._finish(record, parsed, "synced", f"parked event #{seq} moved to the dead-letter topic", started)

    async def _reset(self, record: SourceRecord, parsed: ControlCommand, hook: HookRecord, started: float) -> None:
        """Forget the hook's mappings (GLPI data stays); creates look first until ``hook_rebuilt``."""
        prefix = f"{hook.account_id}:"
        forgotten = 0
        for table in (self.contacts, self.conversations, self.messages):
            for key in [k for k in list(table.keys()) if isinstance(k, str) and k.startswith(prefix)]:
                table.pop(key, None)
                forgotten += 1
        await self.save_hook(hook.model_copy(update={"rebuilding": True}))
        self._finish(record, parsed, "synced", f"hook reset: {forgotten} mapping(s) forgotten, rebuilding", started)

    async def _set_mapping(
        self, record: SourceRecord, parsed: ControlCommand, hook: HookRecord, started: float
    ) -> None:
        """Point a contact or conversation at a GLPI id (after a manual merge), or clear the mapping."""
        payload = parsed.payload
        if parsed.event == "set_contact_mapping" and payload.contact_id is not None:
            key = contact_key(hook.account_id, payload.contact_id)
            raw = self.contacts.get(key)
            current = (
                ContactRecord.model_validate(raw)
                if raw
                else ContactRecord(account_id=hook.account_id, contact_id=payload.contact_id)
            )
            itemtype = (
                payload.glpi_itemtype
                or current.glpi_itemtype
                or ("User" if hook.settings.sync_type == "user" else "Contact")
            )
            updated = current.model_copy(
                update={"glpi_id": payload.glpi_id, "glpi_itemtype": itemtype, "pending": None}
            )
            await self.contacts.put_durable(key, updated.model_dump(mode="json"))
            what = f"contact {payload.contact_id} → {itemtype} {payload.glpi_id}"
        elif parsed.event == "set_conversation_mapping" and payload.conversation_id is not None:
            key = conversation_key(hook.account_id, payload.conversation_id)
            raw = self.conversations.get(key)
            conv = (
                ConversationRecord.model_validate(raw)
                if raw
                else ConversationRecord(account_id=hook.account_id, conversation_id=payload.conversation_id)
            )
            updated_conv = conv.model_copy(update={"ticket_id": payload.glpi_id, "pending": None})
            await self.conversations.put_durable(key, updated_conv.model_dump(mode="json"))
            what = f"conversation {payload.conversation_id} → Ticket {payload.glpi_id}"
        else:
            reason = f"{parsed.event} needs a contact_id or conversation_id"
            await self.dead_letter(record, "configure", "InvalidCommand", reason)
            self._finish(record, parsed, "dead_lettered", reason, started)
            return
        log.warning("mapping repaired: %s", what, extra={"hook_id": hook.hook_id})
        self._finish(record, parsed, "synced", f"mapping set: {what}", started)

    async def _resync(self, record: SourceRecord, parsed: ControlCommand, hook: HookRecord, started: float) -> None:
        try:
            report = await resync(self, hook, parsed)
        except (GlpiError, HookConfigError) as exc:
            reason = f"resync failed: {type(exc).__name__} {exc}"[:300]
            self._finish(record, parsed, "skipped", reason, started)
            return
        self._finish(record, parsed, "synced", report, started)

    async def pause_hook(self, hook_id: int, kind: str, reason: str) -> HookRecord:
        hook = self.hook(hook_id)
        assert hook is not None
        pause = Pause.model_validate({"kind": kind, "reason": logs.redact(reason), "since": _now()})
        paused = hook.model_copy(update={"pause": pause})
        await self.save_hook(paused)
        self.refresh_gauges()
        log.warning("hook %s paused (%s): %s", hook_id, kind, logs.redact(reason), extra={"hook_id": hook_id})
        return paused

    async def park(self, hook: HookRecord, record: SourceRecord) -> None:
        """Append ``record`` to the hook's parked queue, durably, before it is acknowledged."""
        seq = hook.parked_next
        await self.parked.put_durable(parked_key(hook.hook_id, seq), record.to_json())
        await self.save_hook(hook.model_copy(update={"parked_next": seq + 1}))
        self.metrics.parked.labels(hook.pause.kind if hook.pause else "behind_parked").inc()

    async def drain(self, hook_id: int) -> None:
        """Sync the hook's parked events in order until the queue is empty or the hook pauses again."""
        drained = 0
        while True:
            hook = self.hook(hook_id)
            if hook is None or hook.pause is not None or hook.parked == 0:
                break
            seq = hook.parked_first
            raw = self.parked.get(parked_key(hook_id, seq))
            if raw is not None:
                try:
                    await self.process(SourceRecord.from_json(raw, seq))
                except PauseHook:
                    break  # pause_hook() already recorded it; the record stays at the head of the queue
            self.parked.pop(parked_key(hook_id, seq), None)
            await self.save_hook(hook.model_copy(update={"parked_first": seq + 1}))
            drained += 1
        if drained:
            log.info("hook %s: drained %d parked event(s)", hook_id, drained, extra={"hook_id": hook_id})

    async def _dead_letter_parked(self, hook: HookRecord, reason: str) -> None:
        for seq in range(hook.parked_first, hook.parked_next):
            raw = self.parked.pop(parked_key(hook.hook_id, seq), None)
            if raw is not None:
                await self.dead_letter(SourceRecord.from_json(raw, seq), "park", "HookRemoved", reason)

    def local_hooks(self) -> list[HookRecord]:
        """Hooks whose partitions this worker holds."""
        return [HookRecord.model_validate(raw) for raw in list(self.hooks.values())]

    def retry_commands(self) -> list[tuple[int, int]]:
        """``(hook_id, partition)`` of the locally known hooks paused by a transient GLPI outage."""
        return [
            (hook.hook_id, hook.partition)
            for hook in self.local_hooks()
            if hook.pause is not None and hook.pause.kind == "transient" and hook.partition is not None
        ]

    def refresh_gauges(self) -> None:
        """Recount paused hooks and parked events from the table (cheap: one record per hook)."""
        paused = {"transient": 0, "auth": 0, "operator": 0}
        parked = 0
        for hook in self.local_hooks():
            if hook.pause is not None:
                paused[hook.pause.kind] += 1
            parked += hook.parked
        for kind, count in paused.items():
            self.metrics.hooks_paused.labels(kind).set(count)
        self.metrics.parked_pending.set(parked)

    # ------------------------------------------------------------------------------------------- outcomes

    async def dead_letter(
        self,
        record: SourceRecord,
        stage: str,
        error_class: str,
        message: str,
        glpi_code: str | None = None,
        http_status: int | None = None,
    ) -> None:
        """Send the original record to the DLQ with Kafka-Connect-style headers, and wait for the broker's ack."""
        headers = [
            ("__connect.errors.topic", record.topic),
            ("__connect.errors.partition", str(record.partition)),
            ("__connect.errors.offset", str(record.offset)),
            ("__connect.errors.connector.name", self.settings.app_id),
            ("__connect.errors.task.id", self._host),
            ("__connect.errors.stage", stage),
            ("__connect.errors.class.name", "app.pipeline.Pipeline"),
            ("__connect.errors.exception.class.name", error_class),
            ("__connect.errors.exception.message", logs.redact(message)[:1000]),
            ("cwglpi.glpi.code", glpi_code or ""),
            ("cwglpi.glpi.status", str(http_status or "")),
            ("cwglpi.failed_at", _now()),
        ]
        fut = await self.dlq.send(
            key=record.key,
            value=record.value if record.value is not None else b"",
            headers=[(k, v.encode()) for k, v in headers],
        )
        await fut
        self.metrics.dead_letters.labels(error_class).inc()

    def _finish(
        self,
        record: SourceRecord,
        parsed: KnownEvent | UnknownEvent | None,
        outcome: str,
        reason: str,
        started: float,
        result: EventResult | None = None,
    ) -> None:
        event_type = event_type_label(parsed.event if parsed else None)
        self.metrics.events.labels(event_type, outcome).inc()
        if outcome == "skipped":
            self.metrics.skips.labels(skip_reason_class(reason)).inc()
        lag = None
        if outcome == "synced" and parsed is not None:
            occurred = parsed.occurred_at.timestamp() if parsed.occurred_at else record.timestamp
            lag = max(0.0, time.time() - occurred)
            self.metrics.sync_lag.labels(event_type).observe(lag)
            self.metrics.last_success.set(time.time())
            self.metrics.mark_hook_synced(parsed.hook_id, time.time(), self.settings.per_hook_metrics_limit)
        level = logging.WARNING if outcome in ("dead_lettered", "parked") else logging.INFO
        log.log(
            level,
            "%s %s: %s",
            parsed.event if parsed else "record",
            outcome,
            logs.redact(reason),
            extra={
                "hook_id": parsed.hook_id if parsed else None,
                "event": parsed.event if parsed else None,
                "outcome": outcome,
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "parked_seq": record.parked_seq,
                "glpi_ids": result.finished.glpi_ids if result else {},
                "duration_ms": round((time.monotonic() - started) * 1000, 1),
                "lag_s": round(lag, 3) if lag is not None else None,
            },
        )


async def resync(pipeline: Pipeline, hook: HookRecord, command: ControlCommand) -> str:
    """The guide's "force re-sync": check in GLPI what the state says exists; recreate what is missing.

    Nothing that exists is created again: tickets are checked by id, followups by their markers.
    """
    client = pipeline.client_for(hook)
    executor = GlpiExecutor(client, pipeline.policy)
    payload = command.payload
    if command.event == "resync_contact":
        if payload.contact_id is None:
            return "resync_contact needs a contact_id"
        key = contact_key(hook.account_id, payload.contact_id)
        raw = pipeline.contacts.get(key)
        if raw is None:
            return f"contact {payload.contact_id} was never synced: publish its contact_created again"
        contact = ContactRecord.model_validate(raw)
        if contact.glpi_id is not None and await _exists(client, contact.glpi_itemtype or "User", contact.glpi_id):
            return f"contact {payload.contact_id}: {contact.glpi_itemtype} {contact.glpi_id} exists"
        chatwoot = Contact(
            id=contact.contact_id, name=contact.name, email=(contact.emails or (None,))[0], phone_number=contact.phone
        )
        view = SyncView(hook=hook, contact=contact.model_copy(update={"glpi_id": None}))
        cmd = ensure_contact_command(view, hook.account_id, chatwoot, hook.settings)
        outcome = await executor.run(cautious(cmd))
        after = record_outcome(view, cmd, outcome)
        await pipeline.persist(view, after, True)
        return f"contact {payload.contact_id}: {contact.glpi_itemtype} {contact.glpi_id} was missing, now {outcome}"
    if payload.conversation_id is None:
        return "resync_conversation needs a conversation_id"
    key = conversation_key(hook.account_id, payload.conversation_id)
    raw = pipeline.conversations.get(key)
    if raw is None:
        return f"conversation {payload.conversation_id} was never synced: publish its events again"
    conv = ConversationRecord.model_validate(raw)
    view = SyncView(hook=hook, conversation=conv)
    notes = []
    if conv.ticket_id is None or not await _exists(client, "Ticket", conv.ticket_id):
        if conv.ticket_input is None:
            return f"conversation {payload.conversation_id}: no ticket and nothing stored to rebuild it from"
        gone = conv.ticket_id
        view = ticket_gone(view, gone) if gone is not None else view
        previous = f"GLPI ticket #{gone}" if gone is not None else "a lost ticket"
        content = str(conv.ticket_input.get("content", "")) + (
            f"<p>Recreated by a re-sync: {previous} was deleted in GLPI.</p>"
        )
        marker = mapping.ticket_marker(hook.account_id, conv.conversation_id)
        ticket_cmd = CreateTicket(
            {**conv.ticket_input, "content": content},
            marker,
            hook.account_id,
            conv.conversation_id,
            conv.body_message_id,
            conv.status,
            lookup_first=True,
        )
        before = view
        view = record_outcome(view, ticket_cmd, await executor.run(ticket_cmd))
        await pipeline.persist(before, view, True)
        notes.append(f"ticket recreated (was {gone})")
    assert view.conversation is not None
    assert view.conversation.ticket_id is not None
    ticket_id = view.conversation.ticket_id
    present = " ".join(
        html.unescape(str(row.get("content", "")))
        for row in await client.get_subitems("Ticket", ticket_id, "ITILFollowup")
    )
    added = 0
    for value in list(pipeline.messages.values()):
        msg = MessageRecord.model_validate(value)
        if msg.account_id != hook.account_id or msg.conversation_id != conv.conversation_id:
            continue
        marker = mapping.followup_marker(msg.message_id)
        if msg.followup_input is None or marker in present:
            continue
        cmd_f = CreateFollowup(
            ticket_id,
            {**msg.followup_input, "items_id": ticket_id},
            marker,
            hook.account_id,
            conv.conversation_id,
            msg.message_id,
        )
        msg_view = SyncView(hook=hook, conversation=view.conversation, message=msg)
        after = record_outcome(msg_view, cmd_f, await executor.run(cmd_f))
        await pipeline.persist(msg_view, after, True)
        added += 1
    notes.append(f"{added} missing followup(s) added")
    return f"conversation {payload.conversation_id} → ticket {ticket_id}: " + ", ".join(notes)


async def _exists(client: GlpiClient, itemtype: str, item_id: int) -> bool:
    try:
        item = await client.get_item(itemtype, item_id)
    except GlpiNotFoundError:
        return False
    return not item.get("is_deleted")


def _reason(result: EventResult) -> str:
    if result.commands:
        return "ran " + ", ".join(result.commands)
    return result.finished.reason


def error_class_name(exc: Exception) -> str:
    for cls in (GlpiAuthError, GlpiRejectedError, GlpiRetryableError, GlpiError):
        if isinstance(exc, cls):
            return cls.__name__
    return type(exc).__name__
