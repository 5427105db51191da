"""Each conversation's latest events and how they ended (``glpi-sync trace``, the dashboard), in their own table.

A conversation's trace is a ring of :data:`TRACE_KEPT` small records, ``<account>:<conversation>:<slot>``, each
entry carrying its ``seq``: appending writes one ~300-byte record, where a list inside the conversation record
made every event of the conversation decode, validate, dump and re-send ~10 kB (issue 22's profile). The next
``seq`` of a conversation is kept in memory (bounded) and found again by reading its ring after a restart or a
rebalance. Buffered writes: losing the last entry to a crash only shortens a trace. Conversation records written
by earlier versions still carry a ``history`` list; it is read as the ring's older part.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from app.sync.state import TRACE_KEPT

#: Conversations whose next trace position is remembered (the others are found again by reading their ring).
POSITIONS_KEPT = 20_000


class TraceLog:
    """Append to and read conversations' traces (the ``traces`` table)."""

    def __init__(self, table: Any) -> None:
        self.table = table
        self._next: OrderedDict[str, int] = OrderedDict()

    @staticmethod
    def _key(account_id: int, conversation_id: int) -> str:
        return f"{account_id}:{conversation_id}"

    def _ring(self, key: str) -> list[dict[str, Any]]:
        entries = (self.table.get(f"{key}:{slot:02d}") for slot in range(TRACE_KEPT))
        return sorted((e for e in entries if isinstance(e, dict)), key=lambda e: int(e.get("seq", 0)))

    def append(self, account_id: int, conversation_id: int, entry: dict[str, Any]) -> None:
        """Add one entry, overwriting the conversation's oldest once its ring is full."""
        key = self._key(account_id, conversation_id)
        seq = self._next.pop(key, None)
        if seq is None:
            ring = self._ring(key)
            seq = int(ring[-1].get("seq", 0)) + 1 if ring else 0
        self._next[key] = seq + 1
        if len(self._next) > POSITIONS_KEPT:
            self._next.popitem(last=False)
        self.table.put_buffered(f"{key}:{seq % TRACE_KEPT:02d}", {**entry, "seq": seq})

    def read(self, account_id: int, conversation_id: int, legacy: Any = None) -> list[dict[str, Any]]:
        """The conversation's entries, oldest first: ``legacy`` (an old record's ``history``), then the ring."""
        older = [e for e in legacy if isinstance(e, dict)] if isinstance(legacy, list | tuple) else []
        entries = [*older, *self._ring(self._key(account_id, conversation_id))]
        return [{k: v for k, v in e.items() if k != "seq"} for e in entries][-TRACE_KEPT:]

    def forget_positions(self) -> None:
        """After a rebalance another worker may have appended: find every position again."""
        self._next.clear()
