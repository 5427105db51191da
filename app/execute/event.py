"""One event's life on GLPI (:func:`sync_event`), the hook probe, and how each step is described."""

from __future__ import annotations

import html
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from app.events import HookSettings, KnownEvent, UnknownEvent
from app.execute.executor import (
    MAX_REPLACEMENTS,
    MAX_STEPS,
    EventRejected,
    GlpiExecutor,
    HookUnavailable,
)
from app.glpi import (
    GlpiAuthError,
    GlpiClient,
    GlpiError,
    GlpiNotFoundError,
    GlpiRejectedError,
    GlpiRetryableError,
    GlpiUnexpectedResponseError,
    missing_rights,
)
from app.glpi.rights import needed_rights
from app.sync.commands import (
    AddRequester,
    Applied,
    CheckTicket,
    Command,
    Create,
    CreateFollowup,
    EnsureUserEmail,
    FileKept,
    Finished,
    LinkFiles,
    Outcome,
    Resolved,
    StoreFile,
    TicketState,
    UpdateItem,
)
from app.sync.decide import decide
from app.sync.record import record, ticket_replaced, with_intent, without_intent
from app.sync.state import SyncContext, SyncView


async def probe_hook(client: GlpiClient, settings: HookSettings) -> HookUnavailable | None:
    """Whether the hook as a whole can work: None when it can, else why not (a pause to apply).

    Checks what every event needs: a session, a GLPI answer, the profile's rights, the hook's entity.
    """
    try:
        profile = await client.get_active_profile()
        entities = await client.get_my_entities()
    except GlpiRetryableError as exc:
        return HookUnavailable("transient", f"GLPI unreachable: {exc.code} {exc.message}".strip()[:300], exc.code)
    except GlpiUnexpectedResponseError as exc:
        return HookUnavailable("endpoint", exc.message[:300], exc.code)
    except GlpiError as exc:
        return HookUnavailable("auth", f"{exc.code}: {exc.message}"[:300], exc.code)
    name = html.unescape(str(profile.get("name", "?")))
    missing = missing_rights(profile, needed_rights(settings.sync_type))
    if missing:
        lacks = ", ".join(right.name for right in missing)
        return HookUnavailable("auth", f"GLPI profile {name!r} may not {lacks}", "PROFILE_RIGHTS")
    if settings.entity_id not in {e.get("id") for e in entities}:
        return HookUnavailable(
            "auth", f"GLPI profile {name!r} cannot work in entity {settings.entity_id}", "ENTITY_NOT_VISIBLE"
        )
    return None


Persist = Callable[[SyncView, bool], Awaitable[None]]
Probe = Callable[[], Awaitable[HookUnavailable | None]]


_NOUNS = {
    "ensure_user": "user",
    "ensure_contact": "contact",
    "create_ticket": "ticket",
    "create_followup": "followup",
    "store_file": "document",
}


def describe_step(step: Command, outcome: Outcome) -> str:
    """What one step did, for the outcome line and the trace: ``created ticket 100``, ``adopted user 10``."""
    if isinstance(outcome, Resolved):
        noun = _NOUNS.get(step.op, step.op)
        if isinstance(step, CreateFollowup) and step.purpose == "deletion":
            noun = "deletion note"
        return f"{'created' if outcome.created else 'adopted existing'} {noun} {outcome.glpi_id}"
    match step:
        case UpdateItem():
            return f"updated {step.itemtype.lower()} {step.item_id} ({', '.join(sorted(step.input))})"
        case EnsureUserEmail():
            added = isinstance(outcome, Applied) and outcome.changed
            return f"{'added' if added else 'kept'} email of user {step.user_id}"
        case CheckTicket():
            state = f"status {outcome.status}" if isinstance(outcome, TicketState) else "read"
            return f"checked ticket {step.ticket_id} ({state})"
        case AddRequester():
            return f"requester of ticket {step.ticket_id}"
        case StoreFile():
            reason = outcome.reason if isinstance(outcome, FileKept) else "?"
            return f"kept {step.name} as a link ({reason})"
        case LinkFiles():
            return f"linked document(s) {', '.join(map(str, step.document_ids))} to followup {step.followup_id}"
        case _:
            return step.op


def _ticket_of(step: Command) -> int | None:
    """The ticket a command writes to, when an unusable ticket means "continue in a new one"."""
    if isinstance(step, CreateFollowup | CheckTicket):
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
    probe: Probe,
    clock: Callable[[], float] = time.time,
) -> EventResult:
    """Drive ``event`` to completion and return how it finished.

    ``persist(view, durable)`` writes the changed records; with ``durable`` it must not return before the write is
    safe from a crash (the intent protocol relies on it). ``probe()`` tells whether the hook as a whole works.

    Raises:
        HookUnavailable: the hook cannot work now (pause it, park the event).
        EventRejected: this event cannot be synced (dead-letter it).
    """
    ran: list[str] = []
    replacements = 0
    current = view

    async def before_post(cmd: Create, at: float) -> None:
        nonlocal current
        current = with_intent(current, cmd, at)
        await persist(current, True)

    async def after_refusal(cmd: Create) -> None:
        nonlocal current
        current = without_intent(current, cmd)
        await persist(current, False)

    # The decisions see the time the event started: a ticket read during this event counts as seen (checked_at
    # is then later than this), so one event reads its ticket at most once whatever the recheck window.
    event_ctx = replace(ctx, now=clock())
    for _ in range(MAX_STEPS):
        step = decide(current, event, event_ctx)
        if isinstance(step, Finished):
            return EventResult(step, tuple(ran), current)
        try:
            outcome = await executor_for().run(step, before_post, after_refusal)
        except GlpiNotFoundError as exc:
            gone = _ticket_of(step)
            if gone is None or replacements >= MAX_REPLACEMENTS:
                raise EventRejected(f"{exc.code}: {exc.message}"[:300], exc) from None
            replacements += 1
            current = ticket_replaced(current, gone, "deleted")
            await persist(current, True)
            ran.append("ticket_gone")
            continue
        except GlpiRejectedError as exc:
            raise EventRejected(f"GLPI refused the data: {exc.code}: {exc.message}"[:300], exc) from None
        except (GlpiAuthError, GlpiUnexpectedResponseError) as exc:
            problem = await probe()
            if problem is not None:
                raise problem from None
            if isinstance(step, AddRequester):
                outcome = Applied(changed=False)  # that old ticket refuses a requester: it keeps none
            else:
                # GLPI's own refusal of a ticket (closed for this profile, another entity): continue in a new one.
                # Anything else answering for one request only (a WAF's page) says nothing about the ticket.
                refused = _ticket_of(step) if isinstance(exc, GlpiAuthError) else None
                if refused is None or replacements >= MAX_REPLACEMENTS:
                    reason = f"GLPI refused this request only ({exc.code}: {exc.message}); the hook works"
                    raise EventRejected(reason[:300], exc) from None
                replacements += 1
                current = ticket_replaced(current, refused, "refused")
                await persist(current, True)
                ran.append("ticket_refused")
                continue
        except GlpiRetryableError as exc:
            problem = await probe()
            if problem is not None:
                raise problem from None
            if not exc.still_running:
                reason = f"GLPI keeps failing this request ({exc.code}: {exc.message}) while it answers others"
                raise EventRejected(reason[:300], exc) from None
            raise HookUnavailable(
                "transient",
                f"GLPI unreachable: {exc.code} {exc.message}".strip()[:300],
                exc.code,
                request_specific=True,
            ) from None
        current = record(current, step, outcome, clock())
        await persist(current, False)
        ran.append(describe_step(step, outcome))
    raise RuntimeError(f"decision did not finish within {MAX_STEPS} steps (ran {ran})")
