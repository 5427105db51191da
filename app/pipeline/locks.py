"""Locks and interrupts shared by the concurrent lanes of one hook (``app/sync/ordering.py`` says which run together).

- :class:`KeyedLocks`: one ``asyncio.Lock`` per key, made on first use and dropped when nobody holds or waits for
  it (memory stays bounded by the events in flight). The pipeline holds a hook's lock while it changes the hook's
  slot (admission, parking, pausing), and a contact's lock for every event that reads or writes that contact's
  record, so a contact's find-or-create in GLPI happens once however many of its conversations run at once.
- :class:`Interrupts`: an operator command that should act *between two retries* (``hook skip``, ``pause``,
  ``disable``) raises its hook's flag when it is dispatched; a retry sleeping for that hook wakes up and gives
  up (the event is parked, nothing is lost); the flag drops when every such command was applied.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Hashable


class KeyedLocks:
    def __init__(self) -> None:
        self._locks: dict[Hashable, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


class Interrupts:
    def __init__(self) -> None:
        self._flags: dict[int, asyncio.Event] = {}
        self._pending: dict[int, int] = {}

    def raise_for(self, hook_id: int) -> None:
        """An interrupting command for ``hook_id`` was dispatched: its retries stop waiting."""
        self._pending[hook_id] = self._pending.get(hook_id, 0) + 1
        self._flags.setdefault(hook_id, asyncio.Event()).set()

    def applied(self, hook_id: int) -> None:
        """One interrupting command was applied; the flag drops with the last one."""
        left = self._pending.get(hook_id, 0) - 1
        if left > 0:
            self._pending[hook_id] = left
            return
        self._pending.pop(hook_id, None)
        flag = self._flags.get(hook_id)  # kept (one per hook): a retry may hold it
        if flag is not None:
            flag.clear()

    def flag(self, hook_id: int) -> asyncio.Event:
        """The event a retry of ``hook_id`` waits on (set while an interrupting command waits to be applied)."""
        return self._flags.setdefault(hook_id, asyncio.Event())

    def reset(self) -> None:
        """After a revoke every unfinished event is delivered again, its commands counted again."""
        for flag in self._flags.values():
            flag.clear()
        self._pending.clear()
