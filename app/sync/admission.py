"""Which records may be synced now, and what happens to the others: nothing is acknowledged without a trace.

``admit(slot, event, ...)`` is asked for every Chatwoot event before anything touches GLPI:

| the hook                                   | the event                                                        |
|--------------------------------------------|------------------------------------------------------------------|
| not configured yet                         | **parked** until its ``hook_configured`` (up to ``park_limit``)  |
| removed                                    | **set aside**: dead-lettered with the reason (``dlq replay``)    |
| disabled, or its account lacks the feature | **set aside**                                                    |
| the event's account is not the hook's      | **set aside** (a producer mistake)                               |
| paused, or with parked events              | **parked** behind them, in order                                 |
| enabled and running                        | **synced**                                                       |

Events whose name we never sync (``conversation_typing_on``, ...) are **skipped** and counted: they carry nothing
GLPI needs. Every outcome is counted and logged with its reason by the shell.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from app.events import KnownEvent, UnknownEvent
from app.sync.state import AnyHook, HookRecord

Action = Literal["sync", "park", "set_aside", "skip"]


@dataclass(frozen=True)
class Admission:
    action: Action
    reason: str
    #: For ``park``: the bookkeeping kind shown in metrics (a pause kind, ``behind_parked`` or ``unconfigured``).
    kind: str = ""


def with_hook_account(slot: AnyHook | None, event: KnownEvent | UnknownEvent) -> KnownEvent | UnknownEvent:
    """``event`` with its hook's account id when the envelope has none.

    Chatwoot's conversation webhooks carry none (chatwoot-events.md §6.2). Unchanged when it has one, or when the
    hook is not configured: it is then parked, and filled in when drained.
    """
    if event.account_id is not None or not isinstance(slot, HookRecord):
        return event
    return event.model_copy(update={"account_id": slot.account_id})


def admit(
    slot: AnyHook | None,
    event: KnownEvent | UnknownEvent,
    *,
    required_feature: str,
    park_limit: int,
    may_open_slot: bool = True,
    draining: bool = False,
) -> Admission:
    """What to do with a Chatwoot event of ``slot``'s hook.

    Args:
        slot: the hook's record in the hooks table, if any.
        event: the parsed envelope (control events never come here).
        required_feature: the account feature a hook needs (``crm_integration``).
        park_limit: how many events an unconfigured hook may hold before further ones are set aside.
        may_open_slot: False when too many unconfigured hooks hold events already (a hostile or broken producer).
        draining: the event comes out of the hook's own parked queue (it must not be parked again).
    """
    hook_id = event.hook_id
    if isinstance(event, UnknownEvent):
        return Admission("skip", f"unknown event {event.event[:60]!r}")
    if not isinstance(slot, HookRecord):
        if slot is not None and slot.status == "removed":
            return Admission("set_aside", f"hook {hook_id} was removed")
        if slot is None and not may_open_slot:
            return Admission(
                "set_aside", f"hook {hook_id} is not configured and too many unconfigured hooks hold events"
            )
        if slot is not None and slot.parked >= park_limit:
            return Admission(
                "set_aside", f"hook {hook_id} is not configured; {park_limit} events already wait for its configuration"
            )
        return Admission(
            "park", f"hook {hook_id} is not configured yet: waiting for its hook_configured", "unconfigured"
        )
    if event.account_id != slot.account_id:
        return Admission("set_aside", f"event account {event.account_id} is not the hook's account {slot.account_id}")
    if slot.status != "enabled":
        if draining:  # parked before the hook was disabled: it waits for hook enable
            return Admission("park", f"hook {hook_id} is disabled", "disabled")
        return Admission("set_aside", f"hook {hook_id} is disabled")
    if required_feature not in slot.account_features:
        return Admission("set_aside", f"account {slot.account_id} lacks the feature {required_feature}")
    if draining:
        return Admission("sync", "from the parked queue")
    if slot.pause is not None:
        return Admission("park", f"hook paused ({slot.pause.kind}): {slot.pause.reason}", slot.pause.kind)
    if slot.parked > 0:
        return Admission("park", "behind parked events", "behind_parked")
    return Admission("sync", "")
