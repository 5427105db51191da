"""A hook's parked events: kept in order, durably, before their source record is acknowledged.

The queue lives in the ``parked`` table under ``<hook>:<seq>`` keys; the hook's slot holds ``parked_first`` and
``parked_next``. A record's value is stored as it came (base64), in pieces of at most :data:`CHUNK_BYTES` under
``<hook>:<seq>:<n>`` keys when it is large, so that every record the parser accepts (up to 1 MiB) can be parked:
one table record must fit in one Kafka record of the changelog. Pieces are written before the entry that names
them, and the entry before the slot's counter moves, so a crash in between leaves at most unreferenced pieces that
the next append of the same sequence number overwrites. An index entry ``<hook>:src:<topic>:<partition>:<offset>``
per parked record lets a record redelivered after a crash be recognised: it is not parked twice, and a crash
between its index entry and the counter is mended then (it is written again, the counter moved past it). An index
entry whose sequence number holds another record is stale and ignored. (A high-water offset would not do: lanes
admit a partition's records out of offset order.)
"""

from __future__ import annotations

import base64
import contextlib
from typing import Any

from app.pipeline.source import SourceRecord
from app.pipeline.store import SyncStore
from app.sync.state import AnyHook, parked_key

#: Raw bytes per stored piece (base64 makes it 400 kB, well below a 1 MB Kafka record).
CHUNK_BYTES = 300_000


def _source_key(hook_id: int, topic: str, partition: int, offset: int) -> str:
    """The index entry of a parked source record (``<hook>:src:<topic>:<partition>:<offset>``)."""
    return f"{hook_id}:src:{topic}:{partition}:{offset}"


def _b64(data: bytes | None) -> str | None:
    return base64.b64encode(data).decode() if data is not None else None


def _unb64(text: Any) -> bytes | None:
    return base64.b64decode(text) if isinstance(text, str) else None


class ParkingQueue:
    """Append, read and remove a hook's parked records, in order."""

    def __init__(self, store: SyncStore) -> None:
        self.store = store

    async def append(self, slot: AnyHook, record: SourceRecord) -> AnyHook:
        """Park ``record`` at the end of ``slot``'s queue, durably; returns the slot with its counter moved.

        A source record parked already (redelivered after a crash, its offset not committed yet) is found by its
        source index entry and not parked twice (the slot is saved again and returned); one whose counter never
        moved (the crash came between the index entry and the counter) is written again in full.
        """
        source = _source_key(slot.hook_id, record.topic, record.partition, record.offset)
        parked_at = self._parked_at(slot.hook_id, source, record)
        if parked_at is not None and parked_at < slot.parked_next:
            # Parked already. A kill -9 may have left the counter in the local store only (written, not yet
            # acknowledged): saved again, so that the changelog, which another worker would read, holds it too.
            await self.store.save_slot(slot)
            return slot
        # Not parked, or killed between the index entry and the counter (the entry sits at the counter): written
        # (again) in full. Returning the slot unmoved would let the next append overwrite the entry.
        seq = slot.parked_next
        key = parked_key(slot.hook_id, seq)
        value = record.value
        entry: dict[str, Any] = {
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "timestamp": record.timestamp,
            "key": _b64(record.key),
            "headers": [[k, _b64(v)] for k, v in record.headers],
        }
        if value is not None and len(value) > CHUNK_BYTES:
            pieces = [value[i : i + CHUNK_BYTES] for i in range(0, len(value), CHUNK_BYTES)]
            for index, piece in enumerate(pieces):
                await self.store.parked.put_durable(f"{key}:{index}", {"data": _b64(piece)})
            entry["chunks"] = len(pieces)
        else:
            entry["value"] = _b64(value)
        await self.store.parked.put_durable(key, entry)
        await self.store.parked.put_durable(source, {"seq": seq})
        moved = slot.model_copy(update={"parked_next": seq + 1})
        await self.store.save_slot(moved)
        return moved

    def _parked_at(self, hook_id: int, source: str, record: SourceRecord) -> int | None:
        """The sequence number ``record`` is parked under, or None (never parked, or its index entry is stale)."""
        index = self.store.parked.get(source)
        seq = index.get("seq") if isinstance(index, dict) else None
        if not isinstance(seq, int):
            return None
        entry = self.store.parked.get(parked_key(hook_id, seq))
        if not isinstance(entry, dict):
            return None
        same = (entry.get("topic"), entry.get("partition"), entry.get("offset"))
        return seq if same == (record.topic, record.partition, record.offset) else None

    def head(self, slot: AnyHook) -> SourceRecord | None:
        """The oldest parked record of ``slot``'s hook (None if its entry is missing: it is then skipped)."""
        return self.read(slot.hook_id, slot.parked_first)

    def read(self, hook_id: int, seq: int) -> SourceRecord | None:
        """Parked record ``seq`` of the hook (None if its entry is missing: done already, or lost)."""
        key = parked_key(hook_id, seq)
        entry = self.store.parked.get(key)
        if not isinstance(entry, dict):
            return None
        chunks = int(entry.get("chunks") or 0)
        if chunks:
            pieces = [self.store.parked.get(f"{key}:{index}") for index in range(chunks)]
            if not all(isinstance(piece, dict) for piece in pieces):
                return None
            value: bytes | None = b"".join(_unb64(piece["data"]) or b"" for piece in pieces if piece)
        else:
            value = _unb64(entry.get("value"))
        headers = tuple(
            (str(k), _unb64(v) or b"") for k, v in entry.get("headers", []) if isinstance(k, str) and isinstance(v, str)
        )
        return SourceRecord(
            str(entry["topic"]),
            int(entry["partition"]),
            int(entry["offset"]),
            float(entry["timestamp"]),
            _unb64(entry.get("key")),
            value,
            headers,
            parked_seq=seq,
        )

    def discard(self, hook_id: int, seq: int) -> None:
        """Remove parked record ``seq`` (finished out of order); the counters pass over it later (:meth:`advance`)."""
        self._remove(hook_id, seq)

    def _remove(self, hook_id: int, seq: int) -> None:
        key = parked_key(hook_id, seq)
        entry = self.store.parked.pop(key, None)
        if isinstance(entry, dict):
            for index in range(int(entry.get("chunks") or 0)):
                self.store.parked.pop(f"{key}:{index}", None)
            with contextlib.suppress(KeyError, TypeError, ValueError):
                source = _source_key(hook_id, str(entry["topic"]), int(entry["partition"]), int(entry["offset"]))
                self.store.parked.pop(source, None)

    async def advance(self, slot: AnyHook) -> AnyHook:
        """Move ``parked_first`` past the records already removed at the head of the queue."""
        first = slot.parked_first
        while first < slot.parked_next and parked_key(slot.hook_id, first) not in self.store.parked:
            first += 1
        if first == slot.parked_first:
            return slot
        moved = slot.model_copy(update={"parked_first": first})
        await self.store.save_slot(moved)
        return moved

    async def pop_head(self, slot: AnyHook) -> AnyHook:
        """Remove the oldest parked record; returns the slot with ``parked_first`` moved."""
        seq = slot.parked_first
        self._remove(slot.hook_id, seq)
        moved = slot.model_copy(update={"parked_first": seq + 1})
        await self.store.save_slot(moved)
        return moved
