"""How many requests one GLPI gets at once: a limit that follows what the GLPI can take (TCP Vegas's rule).

A GLPI serves a fixed number of requests at a time (its php-fpm pool, its database, its cores). Below that number a
request takes the GLPI's own time, its *floor*; above it, requests queue and take longer without any more getting
done. :class:`AdaptiveLimit` estimates how many of ours are queued from the latency of each round of requests:

    queued = limit × (1 − floor / mean latency of the round)

and adds one slot while fewer than ``grow_below`` are queued (the GLPI has room), takes one away when more than
``shrink_above`` are (we are only making requests wait), and halves the limit when GLPI says it is overloaded
(a timeout, 429, 502, 503, 504). The limit never leaves ``[minimum, maximum]``; ``maximum`` is the operator's bound
(``GLPI_SYNC_HOOK_CONCURRENCY``). It only grows after rounds in which every slot was busy: a quiet hook does not
earn a large limit it would spend on the next burst.

The floor is the fastest request of the last two epochs (``epoch`` samples each): a GLPI that became slower for
good is not taken as one that queues forever.

:class:`RequestLimiter` holds the slots (an asyncio semaphore whose size is the current limit). Both are plain
objects of one event loop; nothing here does I/O.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field

#: Answers that mean "too much at once" (timeouts are reported as overload by the caller).
OVERLOAD_STATUSES = frozenset({429, 502, 503, 504})


@dataclass
class AdaptiveLimit:
    maximum: int = 32
    minimum: int = 1
    initial: int = 4
    grow_below: float = 2.0
    shrink_above: float = 4.0
    epoch: int = 2000
    current: int = field(init=False)
    _floor: float | None = field(default=None, init=False)
    _epoch_floor: float | None = field(default=None, init=False)
    _epoch_samples: int = field(default=0, init=False)
    _round_samples: int = field(default=0, init=False)
    _round_total: float = field(default=0.0, init=False)
    _round_saturated: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.minimum = max(1, min(self.minimum, self.maximum))
        self.current = max(self.minimum, min(self.initial, self.maximum))

    @property
    def floor(self) -> float | None:
        """The fastest recent request (seconds): what a request costs when nothing queues."""
        return self._floor

    def on_sample(self, seconds: float, inflight: int) -> None:
        """A request answered after ``seconds``; ``inflight`` requests (this one included) were running then."""
        seconds = max(seconds, 1e-6)
        self._epoch_floor = seconds if self._epoch_floor is None else min(self._epoch_floor, seconds)
        self._floor = seconds if self._floor is None else min(self._floor, seconds)
        self._epoch_samples += 1
        if self._epoch_samples >= self.epoch:  # this epoch's floor replaces the one before it
            self._floor = self._epoch_floor
            self._epoch_floor = None
            self._epoch_samples = 0
        self._round_samples += 1
        self._round_total += seconds
        self._round_saturated = self._round_saturated or inflight >= self.current
        if self._round_samples < self.current:
            return
        mean = self._round_total / self._round_samples
        queued = self.current * (1.0 - (self._floor or mean) / mean)
        if queued > self.shrink_above:
            self.current = max(self.minimum, self.current - 1)
        elif queued < self.grow_below and self._round_saturated:
            self.current = min(self.maximum, self.current + 1)
        self._round_samples = 0
        self._round_total = 0.0
        self._round_saturated = False

    def on_overload(self) -> None:
        """GLPI said it cannot take more (or did not answer in time): halve the limit."""
        self.current = max(self.minimum, self.current // 2)
        self._round_samples = 0
        self._round_total = 0.0
        self._round_saturated = False


class RequestLimiter:
    """Slots for one GLPI's requests; the number of slots is :attr:`limit`'s current value."""

    def __init__(self, limit: AdaptiveLimit) -> None:
        self.limit = limit
        self.inflight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> float:
        """Wait for a slot; returns the monotonic time it was taken (hand it back to :meth:`release`)."""
        while self.inflight >= self.limit.current:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                elif waiter.done() and not waiter.cancelled():
                    self._wake()  # it was woken, but will not use the slot: pass it on
                raise
        self.inflight += 1
        return time.monotonic()

    def release(self, taken_at: float, *, overloaded: bool = False, answered: bool = True) -> None:
        """Give the slot back: ``overloaded`` halves the limit; ``answered`` feeds the latency to it."""
        inflight = self.inflight
        self.inflight -= 1
        if overloaded:
            self.limit.on_overload()
        elif answered:
            self.limit.on_sample(time.monotonic() - taken_at, inflight)
        self._wake()

    def _wake(self) -> None:
        free = self.limit.current - self.inflight
        while free > 0 and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                free -= 1
