"""Which events are synced, parked, set aside or skipped: nothing is acknowledged without a trace."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from app.events import HookSettings, KnownEvent, UnknownEvent, parse_envelope
from app.sync.admission import admit
from app.sync.state import HookRecord, Pause, UnconfiguredHook, load_hook
from tests.conftest import envelope, load_example


def hook(**fields: Any) -> HookRecord:
    fields.setdefault("account_features", ("crm_integration",))
    fields.setdefault("settings", HookSettings(api_url="https://glpi.example/apirest.php", user_token="u"))
    return HookRecord(hook_id=7, account_id=7, **fields)


def event(name: str = "contact_updated", account_id: int = 7) -> KnownEvent | UnknownEvent:
    payload = load_example(name) if name != "conversation_typing_on" else {"id": 1}
    return parse_envelope(orjson.dumps(envelope(name, payload, account_id=account_id)))


def decision(slot: Any, ev: Any = None, **options: Any) -> tuple[str, str]:
    options.setdefault("park_limit", 3)
    result = admit(slot, ev or event(), required_feature="crm_integration", **options)
    return result.action, result.reason


@pytest.mark.parametrize(
    ("slot", "action", "reason"),
    [
        (None, "park", "hook 7 is not configured yet: waiting for its hook_configured"),
        (UnconfiguredHook(hook_id=7, parked_next=2), "park", "hook 7 is not configured yet"),
        (UnconfiguredHook(hook_id=7, parked_next=3), "set_aside", "hook 7 is not configured; 3 events already wait"),
        (UnconfiguredHook(hook_id=7, status="removed"), "set_aside", "hook 7 was removed"),
        (hook(status="disabled"), "set_aside", "hook 7 is disabled"),
        (hook(account_features=()), "set_aside", "account 7 lacks the feature crm_integration"),
        (hook(pause=Pause(kind="operator", reason="upgrade", since="t")), "park", "hook paused (operator): upgrade"),
        (hook(parked_next=1), "park", "behind parked events"),
        (hook(), "sync", ""),
    ],
)
def test_every_hook_state_has_an_outcome_with_a_reason(slot: Any, action: str, reason: str) -> None:
    got_action, got_reason = decision(slot)
    assert got_action == action
    assert got_reason.startswith(reason)


def test_events_of_another_account_are_set_aside() -> None:
    assert decision(hook(), event(account_id=9)) == ("set_aside", "event account 9 is not the hook's account 7")


def test_unknown_event_names_are_skipped_not_parked() -> None:
    assert decision(None, event("conversation_typing_on"))[0] == "skip"


def test_a_producer_writing_random_hook_ids_cannot_open_unbounded_queues() -> None:
    assert decision(None, may_open_slot=False)[0] == "set_aside"
    # A hook that already waits keeps its place.
    assert decision(UnconfiguredHook(hook_id=7, parked_next=1), may_open_slot=False)[0] == "park"


def test_a_drained_event_is_synced_even_though_its_hook_has_parked_events() -> None:
    assert decision(hook(parked_next=5), draining=True)[0] == "sync"
    # ...but a hook disabled mid-drain keeps the rest parked, for hook enable.
    assert decision(hook(parked_next=5, status="disabled"), draining=True)[0] == "park"


@pytest.mark.parametrize(
    "slot",
    [
        hook(),
        hook(settings=HookSettings(api_url="https://g.example/apirest.php", user_token="u", phone_region="PT")),
        hook(pause=Pause(kind="operator", reason="upgrade", since="t"), head_failures=2),
        UnconfiguredHook(hook_id=7, parked_next=2),
    ],
)
def test_every_stored_hook_record_reads_back_as_it_was_written(slot: Any) -> None:
    """The hooks table holds JSON: each record must load again exactly (a default that fails validation would
    make every stored hook unreadable after a restart)."""
    stored = orjson.loads(orjson.dumps(slot.model_dump(mode="json")))
    assert load_hook(stored) == slot
