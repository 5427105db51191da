"""The adaptive GLPI request limit: pure rules, and the slots it hands out on a real event loop."""

from __future__ import annotations

import asyncio

import pytest

from app.glpi.limiter import AdaptiveLimit, RequestLimiter


def simulate(limit: AdaptiveLimit, pool: int, service: float, rounds: int = 400) -> list[int]:
    """A GLPI with ``pool`` workers of ``service`` seconds each, always given ``limit.current`` requests at once.

    Past the pool, requests queue: a round of ``n`` requests takes ``service × ceil(n / pool)`` on average per
    request (the M/D/c queue in its steady state, simplified). Returns the limit after every round.
    """
    seen = []
    for _ in range(rounds):
        n = limit.current
        waves = -(-n // pool)
        mean = service * (waves + 1) / 2 if waves > 1 else service
        for i in range(n):
            # Requests of the first wave answer at the floor; later waves also wait for the earlier ones.
            wave = i // pool
            limit.on_sample(service * (wave + 1) if waves > 1 else mean, n)
        seen.append(limit.current)
    return seen


def test_the_limit_grows_to_the_pool_of_an_idle_glpi_and_stops_a_little_past_it() -> None:
    limit = AdaptiveLimit(maximum=64, initial=4)
    seen = simulate(limit, pool=16, service=0.05)
    settled = seen[-100:]
    assert min(settled) >= 16  # every php-fpm worker is busy
    assert max(settled) <= 24  # and not many more of ours wait in its queue


def test_a_small_glpi_keeps_a_small_limit() -> None:
    limit = AdaptiveLimit(maximum=64, initial=8)
    settled = simulate(limit, pool=3, service=0.02)[-100:]
    assert max(settled) <= 8
    assert min(settled) >= 3


def test_the_operator_maximum_is_never_passed() -> None:
    limit = AdaptiveLimit(maximum=6, initial=4)
    assert max(simulate(limit, pool=100, service=0.05)) == 6


def test_an_overload_answer_halves_the_limit_and_the_minimum_holds() -> None:
    limit = AdaptiveLimit(maximum=32, initial=20)
    limit.on_overload()
    assert limit.current == 10
    for _ in range(10):
        limit.on_overload()
    assert limit.current == 1


def test_a_quiet_hook_does_not_earn_a_large_limit() -> None:
    limit = AdaptiveLimit(maximum=64, initial=4)
    for _ in range(1000):
        limit.on_sample(0.05, inflight=1)  # one request at a time: the limit was never the bound
    assert limit.current == 4


def test_a_glpi_that_became_slower_for_good_gets_its_limit_back() -> None:
    limit = AdaptiveLimit(maximum=64, initial=16, epoch=200)
    simulate(limit, pool=32, service=0.02, rounds=50)
    before = limit.current
    simulate(limit, pool=32, service=0.08, rounds=300)  # every request 4× slower, none queued
    assert limit.floor == pytest.approx(0.08)
    assert limit.current >= before


async def test_slots_follow_the_limit_and_cancelled_waiters_pass_theirs_on() -> None:
    limiter = RequestLimiter(AdaptiveLimit(maximum=2, initial=2))
    first = await limiter.acquire()
    second = await limiter.acquire()
    third = asyncio.ensure_future(limiter.acquire())
    fourth = asyncio.ensure_future(limiter.acquire())
    await asyncio.sleep(0)
    assert not third.done() and limiter.inflight == 2
    third.cancel()
    limiter.release(first)
    taken = await asyncio.wait_for(fourth, 1)
    assert limiter.inflight == 2
    limiter.release(second)
    limiter.release(taken, overloaded=True)
    assert limiter.inflight == 0
    assert limiter.limit.current == 1
