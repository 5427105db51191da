"""The worker's tables and how the sync reads and writes them.

- :class:`DurableTable` is a faust Table whose writes can be awaited until the changelog record is acknowledged
  (the intent protocol needs it), which refuses values too big for a Kafka record (a too-big changelog write would
  kill faust's producer task and crash the worker at every restart), and which rebuilds a partition whose local
  RocksDB is *ahead* of its changelog (the changelog was recreated, or records were lost on the broker): faust would
  otherwise raise ``ConsistencyError`` and crash-loop. The changelog is the truth; the rebuilt partition is marked
  *cautious* so that creates look in GLPI first and adopt what exists.
- :class:`SyncStore` holds the eight tables and knows the record types and keys: hook slots, the view one event
  reads, the records it writes back.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faust
import orjson
from faust.types import TP

from app.events import KnownEvent, UnknownEvent
from app.metrics import Metrics
from app.pipeline.traces import TraceLog
from app.settings import WorkerSettings
from app.sync.decide import record_ids
from app.sync.state import (
    AnyHook,
    ContactRecord,
    ConversationRecord,
    HookRecord,
    MessageRecord,
    SyncView,
    UnconfiguredHook,
    contact_key,
    conversation_key,
    load_hook,
    message_key,
)
from app.topology import TABLES

log = logging.getLogger("cwglpi.state")

#: Table values stay far below a Kafka record (1 MB); a bigger one is a bug we refuse before faust sees it.
MAX_TABLE_VALUE_BYTES = 512 * 1024
#: How long a rebuilt partition keeps looking in GLPI before every create.
CAUTIOUS_SECONDS = 3 * 24 * 3600


class TableValueTooLargeError(ValueError):
    """A record would not fit in its changelog topic; nothing was written."""


class DurableTable(faust.Table[Any, Any]):
    """A Table whose writes can be awaited until the changelog record is acknowledged by the broker."""

    #: faust's own lines about tables go out under faust's logger name.
    logger = logging.getLogger("faust.tables")

    #: Called with the partition whose local state was found ahead of its changelog and rebuilt from it.
    on_partition_rebuilt: Callable[[str, int], None] | None = None

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

    @staticmethod
    def _check_size(key: Any, value: Any) -> None:
        size = len(orjson.dumps(value))
        if size > MAX_TABLE_VALUE_BYTES:
            raise TableValueTooLargeError(f"record {key!r} is {size} bytes, over {MAX_TABLE_VALUE_BYTES}")

    async def put_durable(self, key: Any, value: Any) -> None:
        """Set ``key`` and wait until its changelog record is acknowledged (acks=all)."""
        self._check_size(key, value)
        self[key] = value
        fut = self._changelog_futures.pop(key, None)
        if fut is not None:
            await fut

    def put_buffered(self, key: Any, value: Any) -> None:
        self._check_size(key, value)
        self[key] = value
        self._changelog_futures.pop(key, None)

    async def on_rebalance(
        self, assigned: set[TP], revoked: set[TP], newly_assigned: set[TP], generation_id: int = 0
    ) -> None:
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)
        store: Any = self.data
        if not hasattr(store, "partition_path"):
            return  # memory:// has no local state to be ahead
        mine = [tp for tp in newly_assigned if tp.topic == self.changelog_topic.get_topic_name()]
        if not mine:
            return
        highwaters = await self.app.consumer.highwaters(*mine)
        for tp in mine:
            local = store.persisted_offset(tp)
            end = highwaters.get(tp)
            if local is None or end is None or local < end:
                continue
            # The changelog ends before what this disk already applied: it is not the history we hold.
            log.critical(
                "table %s partition %d: local state is at changelog offset %d but the changelog ends at %d "
                "(recreated, or records lost on the broker): rebuilding it from the changelog; creates look in "
                "GLPI first until %s",
                self.name,
                tp.partition,
                local,
                end,
                time.strftime("%Y-%m-%d %H:%M", time.gmtime(time.time() + CAUTIOUS_SECONDS)),
            )
            db = store._dbs.pop(tp.partition, None)
            if db is not None:
                db.close()
            shutil.rmtree(store.partition_path(tp.partition), ignore_errors=True)
            if self.on_partition_rebuilt is not None:
                self.on_partition_rebuilt(self.name, tp.partition)


class CautiousPartitions:
    """Partitions whose state was rebuilt: creates look first there, across restarts (a file in the data dir)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "rebuilt-partitions.json"
        self._until: dict[int, float] = {}
        if self.path.exists():
            try:
                self._until = {int(k): float(v) for k, v in orjson.loads(self.path.read_bytes()).items()}
            except (orjson.JSONDecodeError, ValueError, AttributeError):
                log.warning("ignoring unreadable %s", self.path)

    def mark(self, partition: int, now: float | None = None) -> None:
        self._until[partition] = (time.time() if now is None else now) + CAUTIOUS_SECONDS
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_bytes(orjson.dumps({str(k): v for k, v in self._until.items()}))

    def __contains__(self, partition: int) -> bool:
        return self._until.get(partition, 0.0) > time.time()


class SyncStore:
    """The eight tables and the records in them. Reads and writes follow the current event's partition."""

    def __init__(self, app: faust.App, settings: WorkerSettings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.cautious = CautiousPartitions(settings.data_dir)
        tables = {name: self._table(app, name) for name in TABLES}
        self.hooks = tables["hooks"]  # hook id → HookRecord | UnconfiguredHook
        self.contacts = tables["contacts"]  # account:contact → ContactRecord
        self.conversations = tables["conversations"]  # account:conversation → ConversationRecord
        self.messages = tables["messages"]  # account:message → MessageRecord
        self.parked = tables["parked"]  # hook:seq[:chunk] → parked record (app/pipeline/parking.py)
        self.deliveries = tables["deliveries"]  # hook:event_id → where it was first handled (redelivery window)
        self.replies = tables["replies"]  # account:itemtype:id → the Chatwoot message posted for it (two-way)
        self.traces = TraceLog(tables["traces"])  # account:conversation:slot → one trace entry
        #: The last slot read per hook and the stored JSON it came from (records are frozen: sharing one is safe).
        self._slots_read: dict[int, tuple[bytes, AnyHook]] = {}

    def _table(self, app: faust.App, name: str) -> DurableTable:
        schema: faust.Schema[Any, Any] = faust.Schema(key_serializer="json", value_serializer="json")
        options: dict[str, Any] | None = None
        if self.settings.store.startswith("rocksdb"):
            options = {
                "driver": "rocksdict",
                "block_cache_size": self.settings.rocksdb_block_cache_mb * 1024 * 1024,
                "write_buffer_size": self.settings.rocksdb_write_buffer_mb * 1024 * 1024,
            }
        table = app.Table(name, partitions=self.settings.partitions, schema=schema, options=options)
        assert isinstance(table, DurableTable)
        table.on_partition_rebuilt = self._rebuilt
        return table

    def _rebuilt(self, table: str, partition: int) -> None:
        self.cautious.mark(partition)
        self.metrics.state_rebuilds.labels(table).inc()

    # ------------------------------------------------------------------------------------------- hooks

    def slot(self, hook_id: int) -> AnyHook | None:
        """The hook's slot as stored now (validated once per stored value: every event reads it several times)."""
        raw = self.hooks.get(str(hook_id))
        if not raw:
            return None
        stored = orjson.dumps(raw)
        known = self._slots_read.get(hook_id)
        if known is not None and known[0] == stored:
            return known[1]
        slot = load_hook(raw)
        self._slots_read[hook_id] = (stored, slot)
        return slot

    def hook(self, hook_id: int) -> HookRecord | None:
        """The hook's configuration, when it has one."""
        slot = self.slot(hook_id)
        return slot if isinstance(slot, HookRecord) else None

    async def save_slot(self, slot: AnyHook, *, durable: bool = True) -> None:
        value = slot.model_dump(mode="json")
        if durable:
            await self.hooks.put_durable(str(slot.hook_id), value)
        else:
            self.hooks.put_buffered(str(slot.hook_id), value)

    def drop_slot(self, hook_id: int) -> None:
        self.hooks.pop(str(hook_id), None)

    def slots(self) -> list[AnyHook]:
        """Every readable hook slot of the partitions this worker holds (an unreadable one is logged, not raised)."""
        slots = []
        for key, raw in list(self.hooks.items()):
            try:
                slots.append(load_hook(raw))
            except (ValueError, TypeError) as exc:
                log.error(
                    "the stored record of hook %s cannot be read (%s): its events fail until it is set again", key, exc
                )
        return slots

    def unconfigured_with_events(self) -> int:
        return sum(1 for slot in self.slots() if isinstance(slot, UnconfiguredHook) and slot.parked)

    # ------------------------------------------------------------------------------------------- deliveries

    @staticmethod
    def _delivery_key(hook_id: int, event_id: str) -> str:
        return f"{hook_id}:{event_id[:200]}"

    def delivery(self, hook_id: int, event_id: str) -> dict[str, Any] | None:
        """Where delivery ``event_id`` of the hook was first handled (``at``, ``source``), if within the window."""
        raw = self.deliveries.get(self._delivery_key(hook_id, event_id))
        return raw if isinstance(raw, dict) else None

    def remember_delivery(self, hook_id: int, event_id: str, source: str) -> None:
        """Note that delivery ``event_id`` reached its outcome (not awaited: a lost note only costs a re-check)."""
        self.deliveries.put_buffered(self._delivery_key(hook_id, event_id), {"at": time.time(), "source": source})

    def forget_deliveries(self, older_than: float) -> int:
        """Drop delivery notes taken before ``older_than`` (epoch seconds); returns how many went."""
        old = [k for k, v in list(self.deliveries.items()) if not isinstance(v, dict) or v.get("at", 0) < older_than]
        for key in old:
            self.deliveries.pop(key, None)
        return len(old)

    # ------------------------------------------------------------------------------------------- sync records

    def load_view(self, event: KnownEvent | UnknownEvent, partition: int) -> SyncView:
        contact_id, conversation_id, message_id = record_ids(event)
        account = event.account_id
        if account is None:
            raise ValueError(f"{event.event} of hook {event.hook_id} has no account id (admission fills it in)")
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
            cautious=partition in self.cautious,
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

    def contact(self, account_id: int, contact_id: int) -> ContactRecord | None:
        raw = self.contacts.get(contact_key(account_id, contact_id))
        return ContactRecord.model_validate(raw) if raw else None

    def conversation(self, account_id: int, conversation_id: int) -> ConversationRecord | None:
        raw = self.conversations.get(conversation_key(account_id, conversation_id))
        return ConversationRecord.model_validate(raw) if raw else None

    def trace_conversation(
        self, account_id: int, conversation_id: int, entry: dict[str, Any], *, create: bool = True
    ) -> None:
        """Append one trace entry to the conversation's trace (:mod:`app.pipeline.traces`).

        With ``create`` false, only for a conversation the sync knows (commands and GLPI changes).
        """
        if not create and self.conversations.get(conversation_key(account_id, conversation_id)) is None:
            return
        self.traces.append(account_id, conversation_id, entry)

    def trace_of(self, account_id: int, conversation_id: int) -> list[dict[str, Any]]:
        """The conversation's trace, oldest first (records of earlier versions keep older entries in ``history``)."""
        raw = self.conversations.get(conversation_key(account_id, conversation_id))
        legacy = raw.get("history") if isinstance(raw, dict) else None
        return self.traces.read(account_id, conversation_id, legacy)

    def messages_of(self, account_id: int, conversation_id: int) -> list[MessageRecord]:
        """Every message record of one conversation (a scan: for operator commands, not the hot path)."""
        return sorted(
            (
                MessageRecord.model_validate(value)
                for value in list(self.messages.values())
                if value.get("account_id") == account_id and value.get("conversation_id") == conversation_id
            ),
            key=lambda m: m.message_id,
        )

    def forget_account(self, account_id: int) -> int:
        """Drop every contact, conversation and message record of an account (``hook reset``)."""
        prefix = f"{account_id}:"
        forgotten = 0
        for table in (self.contacts, self.conversations, self.messages):
            for key in [k for k in list(table.keys()) if isinstance(k, str) and k.startswith(prefix)]:
                table.pop(key, None)
                forgotten += 1
        return forgotten
