"""What the product changes in faust's consumer, from outside: nothing here is faust's or aiokafka's public API.

- :func:`read_every_record`: faust's filter of re-fetched records is off for the lanes' topics (it lost records);
- :func:`shorten_fetch_waits` and :func:`wake_fetcher`: a partition resumed by the lanes gets its records at once.

If faust or aiokafka change, each helper logs once and does nothing; the lanes' own checks still hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from faust.types import TP

log = logging.getLogger("cwglpi.lanes")


class _UnfilteredReadOffsets(dict[TP, int | None]):
    """faust's read offsets, except that the topics the lanes read always answer None (every record passes)."""

    def __init__(self, topics: frozenset[str]) -> None:
        super().__init__()
        self._topics = topics

    def __getitem__(self, tp: TP) -> int | None:
        return None if tp.topic in self._topics else dict.get(self, tp)

    def __missing__(self, tp: TP) -> None:
        return None

    def get(self, tp: TP, default: Any = None) -> Any:
        return default if tp.topic in self._topics else dict.get(self, tp, default)


def read_every_record(consumer: Any, topics: frozenset[str]) -> bool:
    """Make faust's consumer hand every fetched record of ``topics`` over; call it before the consumer starts.

    faust drops a fetched record whose offset is below the partition's "read offset"; a seek sets that offset, but
    a batch still being handed over after the seek sets it again, higher, so the records the seek asked for again
    were dropped unseen, and faust, which commits past records never acknowledged, lost them. The lanes keep each
    partition's records in sequence themselves (:meth:`app.lanes.LaneDispatcher.dispatch`), so for their topics faust's
    filter is switched off (its gap bookkeeping, fed by the same offsets, with it). False when faust changed and
    the filter could not be found: the lanes' sequence check still sees every gap, but re-reads may stall.
    """
    current = getattr(consumer, "_read_offset", None)
    if not isinstance(current, dict):
        log.warning("faust's consumer keeps no read offsets where this module looks (faust changed)")
        return False
    replacement = _UnfilteredReadOffsets(topics)
    replacement.update(current)
    consumer._read_offset = replacement
    return True


#: Longest wait (ms) of a fetch request at the broker (faust asks aiokafka for 1500).
FETCH_WAIT_MS = 100
#: Logged once when faust's consumer has no aiokafka fetcher where this module looks for it.
FETCHER_MISSING = "aiokafka's fetcher was not found under faust's consumer (faust or aiokafka changed)"
_fetcher_missing_logged = False


def _fetcher(consumer: Any) -> tuple[asyncio.AbstractEventLoop, Any] | None:
    """The fetcher of aiokafka under faust's consumer, with the loop of the thread it runs on; None if not found.

    Nothing here is public API: if faust or aiokafka change, the two helpers below do nothing, and a resumed
    partition only waits for the next fetch round (about 1.5 s) as it would without them.
    """
    thread = getattr(consumer, "_thread", None)
    loop = getattr(thread, "thread_loop", None)
    fetcher = getattr(getattr(thread, "_consumer", None), "_fetcher", None)
    if not isinstance(loop, asyncio.AbstractEventLoop) or not isinstance(getattr(fetcher, "_fetch_waiters", None), set):
        global _fetcher_missing_logged
        if not _fetcher_missing_logged:
            _fetcher_missing_logged = True
            log.warning("%s: a resumed partition waits up to 1.5 s for its next records", FETCHER_MISSING)
        return None
    return loop, fetcher


def shorten_fetch_waits(consumer: Any) -> bool:
    """Fetch requests wait at most :data:`FETCH_WAIT_MS` at the broker from now on; False if not done.

    aiokafka sends one fetch request per broker at a time, for the partitions that may fetch then. A partition
    resumed (by us, or by faust when its stream buffer drained) while the broker holds a request for the others
    (up to faust's 1.5 s when they are quiet) gets its next records only after that request returns: each refill
    of a paused partition idled about 1.3 s, and a steady stream's sync lag grew by that much.
    """
    found = _fetcher(consumer)
    if found is None:
        return False
    if getattr(found[1], "_fetch_max_wait_ms", 0) > FETCH_WAIT_MS:
        found[1]._fetch_max_wait_ms = FETCH_WAIT_MS  # an int read per request: safe across threads
    return True


def wake_fetcher(consumer: Any) -> None:
    """Make a wait for records already under way look again, now that a partition was resumed.

    aiokafka keeps the records it fetched for a partition while faust had it paused; after the seek they are stale,
    and they are only dropped, and fresh ones asked for, when a wait for records looks at the partition again
    (faust waits up to a second at a time). The waiters are woken on the loop of faust's consumer thread.
    """
    found = _fetcher(consumer)
    if found is None:
        return
    loop, fetcher = found

    def wake() -> None:
        for waiter in list(fetcher._fetch_waiters):
            if not waiter.done():
                waiter.set_result(None)

    with contextlib.suppress(RuntimeError):  # the thread's loop already closed (shutdown)
        loop.call_soon_threadsafe(wake)


async def confirm_membership(consumer: Any, seconds: float) -> bool:
    """Whether the group coordinator still counts this worker's generation as the current one.

    A worker cut off from the broker can be handed an assignment the group has already moved past (it learns so
    at its next heartbeat): processing it meanwhile, beside the partitions' real owner, writes to GLPI twice. So a
    heartbeat is sent now, with the worker's generation: the coordinator refuses a stale one (and aiokafka then
    rejoins, which revokes the assignment). False also when no answer came within ``seconds`` (ask again later).
    True without faust's aiokafka consumer thread (nothing to ask).
    """
    thread = getattr(consumer, "_thread", None)
    ensure = getattr(thread, "_ensure_consumer", None)
    if thread is None or ensure is None or not hasattr(thread, "call_thread"):
        return True

    async def heartbeat() -> bool:
        coordinator = getattr(ensure(), "_coordinator", None)
        beat = getattr(coordinator, "_do_heartbeat", None)
        if beat is None:
            return True  # aiokafka changed: nothing to ask with
        return bool(await asyncio.wait_for(beat(), seconds))

    try:
        confirmed = bool(await thread.call_thread(heartbeat))
    except Exception as exc:  # whatever the thread raised (a timeout, a lost connection): asked again later
        log.info("the group coordinator did not confirm this worker's generation: %s", type(exc).__name__)
        return False
    if not confirmed:
        log.warning("the group coordinator did not confirm this worker's generation: its records wait")
    return confirmed
