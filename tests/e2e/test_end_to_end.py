"""End to end: real Apache Kafka, real ``glpi-sync worker`` processes (RocksDB tables), the GLPI emulator."""

from __future__ import annotations

import copy
import html
import os
import subprocess
from typing import Any

import orjson
import pytest

from tests.conftest import GLPI_VERSIONS, SyncEnv, envelope, hook_envelope, load_example, story
from tests.glpi_emulator import FIRST_USER_ID
from tests.harness import PYTHON, ROOT, WORKER_BIN, EmulatorProcess, wait_until

pytestmark = pytest.mark.broker


def _outcomes(env: SyncEnv) -> list[dict[str, Any]]:
    return [line for worker in env.workers for line in worker.outcomes()]


def _wait_outcomes(env: SyncEnv, count: int, timeout: float = 90) -> list[dict[str, Any]]:
    wait_until(lambda: len(_outcomes(env)) >= count, timeout, what=f"{count} event outcomes")
    return _outcomes(env)


def _decoded(value: str) -> str:
    return html.unescape(value)


@pytest.mark.parametrize("emulator", GLPI_VERSIONS, indirect=True)
def test_example_story_lands_in_glpi_field_by_field(sync_env: SyncEnv, emulator: EmulatorProcess) -> None:
    worker = sync_env.worker()
    worker.start()
    # The operator configures the hook through the CLI, which tests the tokens with initSession first.
    result = subprocess.run(
        [
            WORKER_BIN,
            "hook",
            "set",
            "--hook-id",
            "7",
            "--account-id",
            "7",
            "--api-url",
            emulator.api_url + "/",
            "--app-token",
            "emulator-app-token",
            "--user-token",
            "emulator-user-token",
            "--wait",  # the configuration is on the control topic: applied before the story is published
        ],
        env={**os.environ, **sync_env.env, "GLPI_SYNC_WORKER_URL": f"http://127.0.0.1:{worker.http_port}"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "GLPI connection successful" in result.stdout
    sync_env.publish(story())
    outcomes = _wait_outcomes(sync_env, 8)
    by_event = [(o["event"], o["outcome"]) for o in outcomes]
    # The contact's update and its conversation run in two lanes, one after the other under the contact's lock:
    # whichever comes first writes the GLPI user, and the other finds it there.
    first_of_the_contact = sorted(by_event[2:4])
    assert first_of_the_contact in (
        [("contact_updated", "synced"), ("conversation_created", "synced")],
        [("contact_updated", "skipped"), ("conversation_created", "synced")],
    ), by_event
    assert by_event[:2] + by_event[4:] == [
        ("hook_configured", "synced"),
        ("contact_created", "skipped"),  # anonymous visitor: not identifiable yet
        ("message_created", "synced"),
        ("message_created", "synced"),
        ("conversation_updated", "synced"),
        ("conversation_status_changed", "skipped"),  # the same resolution: one GLPI update, not two
    ]

    state = emulator.state()
    users = [u for u in state["User"] if u["id"] >= FIRST_USER_ID]
    assert len(users) == 1
    user = users[0]
    assert (user["name"], user["firstname"], user["realname"], user["phone"]) == (
        "marta.silva@example.org",
        "Marta",
        "Silva",
        "+351912000111",
    )
    assert [(e["users_id"], e["email"], e["is_default"]) for e in state["UserEmail"]] == [
        (user["id"], "marta.silva@example.org", 1)
    ]

    assert len(state["Ticket"]) == 1
    ticket = state["Ticket"][0]
    assert _decoded(ticket["name"]) == "Chat #57: Marta Silva (web chat)"
    content = _decoded(ticket["content"])
    assert content.startswith("<p>Chatwoot conversation #57 with Marta Silva via web chat, started 2025-11-03")
    assert "From: Marta Silva · marta.silva@example.org · +351912000111" in content
    assert "[cw:7/57]" in content
    assert (ticket["type"], ticket["entities_id"], ticket["status"], ticket["urgency"]) == (1, 0, 5, 3)
    assert ticket["date"] == "2025-11-03 14:01:42"
    assert [(a["tickets_id"], a["users_id"], a["type"], a["use_notification"]) for a in state["Ticket_User"]] == [
        (ticket["id"], user["id"], 1, 0)  # no notification: GLPI would mail Marta a copy of her own chat
    ]

    followups = sorted(state["ITILFollowup"], key=lambda f: f["id"])
    assert len(followups) == 3
    first, incoming, note = followups
    # The message conversation_created carried (the story has no message_created of its own for it).
    assert first["date"] == "2025-11-03 14:01:42" and "[cw-msg:4410]" in _decoded(first["content"])
    assert "Hello, the VPN client keeps disconnecting every few minutes" in _decoded(first["content"])
    assert incoming["items_id"] == ticket["id"]
    assert incoming["is_private"] == 0
    assert incoming["date"] == "2025-11-03 14:03:12"
    text = _decoded(incoming["content"])
    assert "<strong>Marta Silva</strong>" in text
    assert "<p>Screenshot of the error attached</p>" in text
    assert "vpn-error.png" in text
    assert "[cw-msg:4412]" in text
    assert note["is_private"] == 1
    assert note["date"] == "2025-11-03 14:05:30"
    assert "Leo Costa (agent)" in _decoded(note["content"])
    assert "Gateway logs show token expiry after 300 s." in _decoded(note["content"])

    puts = [r for r in emulator.requests() if r["method"] == "PUT" and r["path"].startswith("Ticket/")]
    assert [r["body"]["input"] for r in puts] == [{"status": 5}]
    # One session for the whole story (plus the CLI's own test session, which it killed).
    inits = [r for r in emulator.requests() if r["path"] == "initSession"]
    assert len(inits) == 2

    status, body = worker.http_get("/metrics")
    assert status == 200
    metrics = body.decode()
    assert 'cwglpi_events_processed_total{event_type="message_created",outcome="synced"} 2.0' in metrics
    assert "cwglpi_sync_lag_seconds_bucket" in metrics
    assert 'cwglpi_glpi_requests_total{method="POST",operation="ITILFollowup",status="201"} 3.0' in metrics


@pytest.mark.parametrize("emulator", GLPI_VERSIONS, indirect=True)
def test_reopen_and_contact_mode_requester(sync_env: SyncEnv, emulator: EmulatorProcess) -> None:
    worker = sync_env.worker()
    worker.start()
    hook = hook_envelope(emulator.api_url, hook_id=8, account_id=8, sync_type="contact")
    conv = load_example("conversation_created")
    resolved = copy.deepcopy(load_example("conversation_status_changed"))
    reopened = copy.deepcopy(resolved)
    reopened["status"] = "open"
    sync_env.publish(
        [
            hook,
            envelope("conversation_created", conv, 8, 8),
            envelope("conversation_status_changed", resolved, 8, 8),
            envelope("conversation_status_changed", reopened, 8, 8),
        ]
    )
    _wait_outcomes(sync_env, 4)
    state = emulator.state()
    assert [c["name"] for c in state["Contact"]] == ["Silva"]
    assert state["Contact"][0]["firstname"] == "Marta"
    assert state["Contact"][0]["email"] == "marta.silva@example.org"
    assert [u["id"] for u in state["User"] if u["id"] >= FIRST_USER_ID] == []  # contact mode never creates users
    (ticket,) = state["Ticket"]
    assert ticket["status"] == 2  # resolved (5) then reopened (2)
    assert [(a["users_id"], a["alternative_email"]) for a in state["Ticket_User"]] == [(0, "marta.silva@example.org")]


def test_worker_restart_mid_stream_loses_and_duplicates_nothing(sync_env: SyncEnv, emulator: EmulatorProcess) -> None:
    conversations = 12
    events: list[dict[str, Any]] = [hook_envelope(emulator.api_url)]
    for conv_id in range(100, 100 + conversations):
        conv = load_example("conversation_created", id=conv_id)
        conv["messages"][0]["id"] = conv_id * 100
        events.append(envelope("conversation_created", conv))
        for n in range(1, 4):
            msg = load_example("message_created", id=conv_id * 100 + n, content=f"message {n} of {conv_id}")
            msg["conversation"]["id"] = conv_id
            events.append(envelope("message_created", msg))
    emulator.faults({"path": "ITILFollowup", "method": "POST", "kind": "delay", "seconds": 0.05, "count": -1})
    first = sync_env.worker("w1")
    first.start()
    sync_env.publish(events)
    wait_until(lambda: len(emulator.state()["ITILFollowup"]) >= 10, 90, what="some followups")
    first.kill()  # kill -9 mid-stream: no graceful commit
    second = sync_env.worker("w2")
    second.start()
    wait_until(
        lambda: len(emulator.state()["ITILFollowup"]) >= conversations * 4 and len(second.outcomes()) > 0,
        120,
        what="all followups",
    )
    wait_until(lambda: sum(o["event"] == "message_created" for o in second.outcomes()) > 0, 30, what="replays")
    state = emulator.state()
    assert len(state["Ticket"]) == conversations
    markers = [_decoded(f["content"]).split("[cw-msg:")[1].split("]")[0] for f in state["ITILFollowup"]]
    assert len(markers) == len(set(markers)) == conversations * 4  # each carried message and its three others
    assert len([u for u in state["User"] if u["id"] >= FIRST_USER_ID]) == 1


def test_bad_records_are_dead_lettered_and_the_agent_carries_on(sync_env: SyncEnv, emulator: EmulatorProcess) -> None:
    worker = sync_env.worker()
    worker.start()
    sync_env.publish([hook_envelope(emulator.api_url)])
    sync_env.publish_raw(
        [
            (b"7", b"this is not json"),
            (b"7", orjson.dumps({"event": "message_created", "payload": {}})),  # no hook id
            (b"7", b"\xff\xfe\x00binary"),
        ]
    )
    sync_env.publish([envelope("contact_updated", load_example("contact_updated"))])
    outcomes = _wait_outcomes(sync_env, 5)
    assert [o["outcome"] for o in outcomes] == [
        "synced",
        "dead_lettered",
        "dead_lettered",
        "dead_lettered",
        "synced",
    ]
    dlq = sync_env.read_topic(sync_env.dlq, 3)
    assert next(r.value for r in dlq) == b"this is not json"
    headers = {k: v.decode() for k, v in dlq[1].headers}
    assert headers["__connect.errors.topic"] == sync_env.topic
    assert headers["__connect.errors.stage"] == "parse"
    assert headers["__connect.errors.exception.class.name"] == "InvalidEnvelopeError"
    assert "hook_id" in headers["__connect.errors.exception.message"]
    assert len([u for u in emulator.state()["User"] if u["id"] >= FIRST_USER_ID]) == 1


def _cli(env: SyncEnv, *args: str) -> subprocess.CompletedProcess[str]:
    worker_url = f"http://127.0.0.1:{env.workers[0].http_port}"
    return subprocess.run(
        [WORKER_BIN, *args],
        env={**os.environ, **env.env, "GLPI_SYNC_WORKER_URL": worker_url},
        capture_output=True,
        text=True,
        check=False,
    )


def test_no_event_is_acknowledged_without_a_trace(sync_env: SyncEnv, emulator: EmulatorProcess) -> None:
    """Before its configuration, disabled, without the feature: each event is parked or set aside, never lost."""
    worker = sync_env.worker()
    worker.start()

    def contact_of(hook: int) -> dict[str, Any]:
        return load_example("contact_updated", id=hook * 100, email=f"person{hook}@example.org", phone_number=None)

    sync_env.publish(
        [
            envelope("contact_updated", contact_of(11), hook_id=11, account_id=11),  # before its hook_configured
            hook_envelope(emulator.api_url, hook_id=12, account_id=12, status="disabled"),
            envelope("contact_updated", contact_of(12), hook_id=12, account_id=12),
            hook_envelope(emulator.api_url, hook_id=13, account_id=13, account_features=[]),
            envelope("contact_updated", contact_of(13), hook_id=13, account_id=13),
            envelope("conversation_typing_on", {}, hook_id=13, account_id=13),
        ]
    )
    outcomes = _wait_outcomes(sync_env, 6)
    reasons = {(o["hook_id"], o["event"]): (o["outcome"], o["msg"]) for o in outcomes}
    assert reasons[(11, "contact_updated")][0] == "parked"
    assert "hook 11 is not configured yet" in reasons[(11, "contact_updated")][1]
    assert reasons[(12, "contact_updated")][0] == "set_aside"
    assert "hook 12 is disabled" in reasons[(12, "contact_updated")][1]
    assert reasons[(13, "contact_updated")][0] == "set_aside"
    assert "lacks the feature crm_integration" in reasons[(13, "contact_updated")][1]
    assert reasons[(13, "conversation_typing_on")][0] == "skipped"  # nothing GLPI needs
    dlq = sync_env.read_topic(sync_env.dlq, 2)
    assert sorted(dict(r.headers)["__connect.errors.stage"].decode() for r in dlq) == ["gate", "gate"]
    assert [u["id"] for u in emulator.state()["User"] if u["id"] >= FIRST_USER_ID] == []

    # Hook 11's configuration arrives late: its waiting event is synced then.
    sync_env.publish([hook_envelope(emulator.api_url, hook_id=11, account_id=11)])
    wait_until(lambda: _logins(emulator) == {"person11@example.org"}, 60, what="hook 11's parked contact")
    # Hook 12 is enabled, and what was set aside meanwhile is replayed from the DLQ.
    assert _cli(sync_env, "hook", "enable", "--hook-id", "12").returncode == 0
    wait_until(lambda: any(o["event"] == "hook_enable" for o in _outcomes(sync_env)), 60, what="hook 12 enabled")
    enabled = next(o for o in _outcomes(sync_env) if o["event"] == "hook_enable")
    assert "1 event(s) set aside while disabled: glpi-sync dlq replay --hook-id 12" in enabled["msg"]
    replay = _cli(sync_env, "dlq", "replay", "--hook", "12")  # the old name of --hook-id still works
    assert replay.returncode == 0, replay.stderr
    wait_until(lambda: "person12@example.org" in _logins(emulator), 60, what="hook 12's replayed contact")
    assert _logins(emulator) == {"person11@example.org", "person12@example.org"}


def _logins(emulator: EmulatorProcess) -> set[str]:
    return {u["name"] for u in emulator.state()["User"] if u["id"] >= FIRST_USER_ID}


def test_emulator_runs_on_its_own() -> None:
    proc = subprocess.run([PYTHON, "-m", "tests.glpi_emulator", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0
    assert "--port" in proc.stdout


def test_cli_publishes_raw_webhook_bodies_keyed_by_hook(
    sync_env: SyncEnv, emulator: EmulatorProcess, tmp_path: Any
) -> None:
    worker = sync_env.worker()
    worker.start()
    sync_env.publish([hook_envelope(emulator.api_url)])
    bodies = tmp_path / "webhooks.jsonl"
    names = ("contact_updated", "conversation_created", "message_created")
    bodies.write_text("\n".join(orjson.dumps(load_example(n)).decode() for n in names) + "\n")
    result = subprocess.run(
        [WORKER_BIN, "publish", str(bodies), "--hook-id", "7", "--account-id", "7"],
        env={**os.environ, **sync_env.env},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"published 3 event(s) to {sync_env.topic}" in result.stdout
    # The message conversation_created carries, and the message's own.
    wait_until(lambda: len(emulator.state()["ITILFollowup"]) == 2, 60, what="the followups")
    outcomes = _wait_outcomes(sync_env, 4)
    assert {o["partition"] for o in outcomes} == {outcomes[0]["partition"]}  # one hook, one partition
    assert len(emulator.state()["Ticket"]) == 1
