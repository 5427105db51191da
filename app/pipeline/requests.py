"""The control commands a worker queues for its own hooks: drains (``hook_retry``) and two-way polls (``hook_poll``).

Each goes to the hook's control partition, so it runs in order with the hook's other commands, on whichever worker
owns the hook then. A request is remembered until it is applied: the timers queue no second one meanwhile (a retry
waits behind the hook's events; piling them up would starve those events), and queue it again when it was lost
with a worker.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from app.pipeline.store import SyncStore
from app.sync.state import SELF_HEALING_PAUSES, HookRecord

#: A queued request not applied after this long (lost with a worker, or never arriving) is queued again. Short
#: enough that a healed GLPI is retried soon; long enough that retries never pile up behind a hook's events.
RETRY_PENDING_SECONDS = 30.0
#: A poll asked for because a ticket was just created is queued at most this often per hook (a backlog of new
#: conversations costs one poll per few seconds, not one per ticket).
SOON_SECONDS = 5.0
#: The resume timer re-requests a drain of a hook with parked events and no pause at most this often.
DRAIN_NUDGE_SECONDS = 60.0


class ControlRequests:
    """Queue drains and polls of this worker's hooks, and say which hooks are due for one."""

    def __init__(self, control: Any, store: SyncStore) -> None:
        self.control = control
        self.store = store
        self._drain_requested: dict[int, float] = {}
        self._retry_pending: dict[int, float] = {}
        self._poll_pending: dict[int, float] = {}
        self._poll_soon: dict[int, float] = {}

    async def _send(self, hook: HookRecord, command: dict[str, Any]) -> None:
        sent = await self.control.send(
            key=str(hook.hook_id).encode(), value=orjson.dumps(command), partition=hook.partition
        )
        await sent

    async def request_drain(self, hook: HookRecord, why: str) -> None:
        """Queue a ``hook_retry`` for ``hook`` on its control partition (ordered with its events)."""
        await self._send(
            hook, {"event": "hook_retry", "hook_id": hook.hook_id, "payload": {"requested_by": "worker", "reason": why}}
        )
        self._drain_requested[hook.hook_id] = time.monotonic()
        self._retry_pending[hook.hook_id] = time.monotonic()

    async def request_poll(self, hook: HookRecord) -> None:
        """Queue a ``hook_poll`` on the hook's control partition (run by its owner, in the hook's poll lane)."""
        await self._send(hook, {"event": "hook_poll", "hook_id": hook.hook_id, "payload": {"requested_by": "worker"}})
        self._poll_pending[hook.hook_id] = time.monotonic()

    async def request_poll_soon(self, hook: HookRecord) -> None:
        """Queue a poll unless one is queued already or one was asked for within :data:`SOON_SECONDS`.

        For write-back: a ticket just created shows on its conversation at once instead of at the next timed poll
        (a ticket created while a poll runs waits for the next one).
        """
        now = time.monotonic()
        pending = self._poll_pending.get(hook.hook_id)
        if pending is not None and now - pending < RETRY_PENDING_SECONDS:
            return
        if now - self._poll_soon.get(hook.hook_id, -SOON_SECONDS) < SOON_SECONDS:
            return
        self._poll_soon[hook.hook_id] = now
        await self.request_poll(hook)

    def retry_applied(self, hook_id: int) -> None:
        """The hook's queued ``hook_retry`` ran: the timer may queue the next one."""
        self._retry_pending.pop(hook_id, None)

    def poll_applied(self, hook_id: int) -> None:
        self._poll_pending.pop(hook_id, None)

    def forget_pending(self) -> None:
        """After a revoke every unfinished record is delivered again: forget the retries counted as queued."""
        self._retry_pending.clear()

    def hooks_to_poll(self) -> list[HookRecord]:
        """Local hooks with two-way or write-back on, syncing, and no poll queued (a lost poll is queued again)."""
        now = time.monotonic()
        return [
            hook
            for hook in self.store.slots()
            if isinstance(hook, HookRecord)
            and (hook.settings.two_way or hook.settings.writes_back)
            and hook.status == "enabled"
            and hook.pause is None
            and hook.partition is not None
            and now - self._poll_pending.get(hook.hook_id, -RETRY_PENDING_SECONDS) >= RETRY_PENDING_SECONDS
        ]

    def hooks_to_retry(self) -> list[HookRecord]:
        """Local hooks the resume timer should nudge: self-healing pauses, and parked queues no drain is on."""
        now = time.monotonic()
        due = []
        for hook in self.store.slots():
            if not isinstance(hook, HookRecord) or hook.partition is None or hook.status != "enabled":
                continue
            queued = self._retry_pending.get(hook.hook_id)
            if queued is not None and now - queued < RETRY_PENDING_SECONDS:
                continue
            if (hook.pause is not None and hook.pause.kind in SELF_HEALING_PAUSES) or (
                hook.pause is None
                and hook.parked > 0
                and now - self._drain_requested.get(hook.hook_id, 0.0) > DRAIN_NUDGE_SECONDS
            ):
                due.append(hook)
        return due
