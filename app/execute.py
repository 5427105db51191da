"""The shell around the core: run the core's commands on GLPI, with the retry policy, until the event is done.

``sync_event`` is the whole life of one event:

    loop: step = decide(view, event)          (pure)
          Finished?  -> return
          create?    -> view = with_intent(view, cmd); await persist(view, durable=True)   (intent before the call)
          outcome = await executor.run(cmd)    (GLPI, retried within the budget)
          view = record(view, cmd, outcome); await persist(view, durable=False)

Errors leave as the :mod:`app.glpi.errors` classes; the worker decides (dead-letter, pause). Retries of transient
errors stay within ``RetryPolicy.budget`` seconds so a rebalance is never held hostage.
"""

from __future__ import annotations

import asyncio
import html
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from app.events import KnownEvent, UnknownEvent
from app.glpi import Criterion, GlpiClient, GlpiNotFoundError, GlpiRejectedError, GlpiRetryableError
from app.sync.commands import (
    Applied,
    Command,
    CreateFollowup,
    CreateTicket,
    EnsureContact,
    EnsureUser,
    EnsureUserEmail,
    Finished,
    Lookup,
    Outcome,
    Resolved,
    SearchCriterion,
    UpdateItem,
    cautious,
)
from app.sync.decide import decide, ticket_gone
from app.sync.record import intent_for, record, with_intent
from app.sync.state import SyncContext, SyncView

#: A decision needs at most: contact ensure, ticket, followup (+ update, email); more means a bug in the core.
MAX_STEPS = 12
USER_EXISTS = "Unable to add. The user already exists."


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, bounded by ``budget`` seconds per command."""

    base: float = 0.5
    cap: float = 30.0
    budget: float = 45.0
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    rand: Callable[[], float] = field(default=random.random)

    def delay(self, attempt: int, retry_after: float | None) -> float:
        backoff = float(min(self.cap, self.base * 2 ** (attempt - 1)) * self.rand())
        return max(backoff, retry_after or 0.0)


def _criteria(lookup: Lookup) -> list[Criterion]:
    return [Criterion(c.field, c.searchtype, c.value, c.link) for c in lookup.criteria]


class GlpiExecutor:
    """Runs one :data:`~app.sync.commands.Command` against a hook's :class:`GlpiClient`."""

    def __init__(
        self,
        client: GlpiClient,
        policy: RetryPolicy | None = None,
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        self.client = client
        self.policy = policy or RetryPolicy()
        self._on_retry = on_retry

    async def run(self, cmd: Command) -> Outcome:
        """Run ``cmd``, retrying transient errors within the policy's budget; other errors propagate."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.policy.budget
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._run_once(cmd)
            except GlpiRetryableError as exc:
                wait = self.policy.delay(attempt, exc.retry_after)
                if loop.time() + wait > deadline:
                    raise
                if self._on_retry is not None:
                    self._on_retry(exc.code)
                await self.policy.sleep(wait)
                # The failed attempt may have reached GLPI (a timeout or a dropped reply after the write):
                # every later attempt looks for the object before creating it.
                cmd = cautious(cmd)

    async def _find(self, itemtype: str, lookups: tuple[Lookup, ...]) -> int | None:
        for lookup in lookups:
            ids = await self.client.search_ids(itemtype, _criteria(lookup))
            if ids:
                return ids[0]  # several matches: adopt the oldest
        return None

    async def _run_once(self, cmd: Command) -> Outcome:
        match cmd:
            case EnsureUser():
                login_lookup = (Lookup((_login(cmd.login),), "login"),) if cmd.lookup_first else ()
                found = await self._find("User", cmd.lookups + login_lookup)
                if found is not None:
                    return Resolved(found, created=False)
                try:
                    return Resolved(await self.client.create("User", cmd.input))
                except GlpiRejectedError as exc:
                    if exc.message != USER_EXISTS:
                        raise
                    existing = await self._find("User", (Lookup((_login(cmd.login),), "login"),))
                    if existing is None:
                        raise
                    return Resolved(existing, created=False)
            case EnsureContact():
                fallback = (cmd.fallback,) if cmd.lookup_first and cmd.fallback is not None else ()
                found = await self._find("Contact", cmd.lookups + fallback)
                if found is not None:
                    return Resolved(found, created=False)
                return Resolved(await self.client.create("Contact", cmd.input))
            case UpdateItem():
                await self.client.update(cmd.itemtype, cmd.item_id, cmd.input)
                return Applied()
            case EnsureUserEmail():
                rows = await self.client.get_subitems("User", cmd.user_id, "UserEmail")
                if any(str(row.get("email", "")).lower() == cmd.email.lower() for row in rows):
                    return Applied(changed=False)
                await self.client.create("UserEmail", {"users_id": cmd.user_id, "email": cmd.email})
                return Applied()
            case CreateTicket():
                if cmd.lookup_first:
                    ids = await self.client.search_ids("Ticket", [Criterion(21, "contains", cmd.marker)])
                    if ids:
                        return Resolved(ids[0], created=False)
                return Resolved(await self.client.create("Ticket", cmd.input))
            case CreateFollowup():
                if cmd.lookup_first:
                    for row in await self.client.get_subitems("Ticket", cmd.ticket_id, "ITILFollowup"):
                        if cmd.marker in html.unescape(str(row.get("content", ""))) and isinstance(row.get("id"), int):
                            return Resolved(row["id"], created=False)
                try:
                    return Resolved(await self.client.create("ITILFollowup", cmd.input))
                except GlpiRejectedError:
                    # GLPI answers ["ERROR_GLPI_ADD", ""] when the parent ticket is gone: tell the two apart.
                    await self.client.get_item("Ticket", cmd.ticket_id)  # raises GlpiNotFoundError if gone
                    raise


def _login(login: str) -> SearchCriterion:
    return SearchCriterion(1, "contains", f"^{login}$")


Persist = Callable[[SyncView, bool], Awaitable[None]]


def _ticket_of(step: Command) -> int | None:
    """The ticket a command writes to, when a missing ticket means "recreate it"."""
    if isinstance(step, CreateFollowup):
        return step.ticket_id
    if isinstance(step, UpdateItem) and step.itemtype == "Ticket":
        return step.item_id
    return None


@dataclass(frozen=True)
class EventResult:
    finished: Finished
    commands: tuple[str, ...]
    view: SyncView

    @property
    def outcome(self) -> str:
        return "synced" if self.commands else self.finished.outcome


async def sync_event(
    view: SyncView,
    event: KnownEvent | UnknownEvent,
    ctx: SyncContext,
    executor_for: Callable[[], GlpiExecutor],
    persist: Persist,
) -> EventResult:
    """Drive ``event`` to completion and return how it finished.

    ``persist(view, durable)`` writes the changed records; with ``durable`` it must not return before the write is
    safe from a crash (the intent protocol relies on it). GLPI errors propagate after the retry budget.
    """
    ran: list[str] = []
    recreated = False
    for _ in range(MAX_STEPS):
        step = decide(view, event, ctx)
        if isinstance(step, Finished):
            return EventResult(step, tuple(ran), view)
        if intent_for(step) is not None:
            view = with_intent(view, step)
            await persist(view, True)
        try:
            outcome = await executor_for().run(step)
        except GlpiNotFoundError:
            gone = _ticket_of(step)
            if gone is None or recreated:
                raise
            # The ticket was deleted in GLPI: recreate it rather than lose this conversation's later messages.
            recreated = True
            view = ticket_gone(view, gone)
            await persist(view, True)
            ran.append("ticket_gone")
            continue
        view = record(view, step, outcome)
        await persist(view, False)
        ran.append(step.op)
    raise RuntimeError(f"decision did not finish within {MAX_STEPS} steps (ran {ran})")
