"""Operating it: inspection routed between two workers, admin commands, resync, reset, doctor, health, logs.

Real Kafka, real worker processes, GLPI emulators; every command is driven through the `glpi-sync` CLI.
"""

from __future__ import annotations

import asyncio
import html
import os
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest

from app.kafka_io import ensure_topics
from app.ops import hook_partition
from app.topology import TABLES
from tests.conftest import SyncEnv, envelope, hook_envelope, load_example, story
from tests.glpi_emulator import FIRST_USER_ID
from tests.harness import WORKER_BIN, EmulatorProcess, WorkerProcess, wait_until

pytestmark = pytest.mark.broker


def cli(env: SyncEnv, worker: WorkerProcess, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, **env.env, "GLPI_SYNC_WORKER_URL": f"http://127.0.0.1:{worker.http_port}"}
    result = subprocess.run([WORKER_BIN, *args], env=environment, capture_output=True, text=True, check=False)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def cli_json(env: SyncEnv, worker: WorkerProcess, *args: str) -> Any:
    return orjson.loads(cli(env, worker, *args).stdout)


def outcomes(env: SyncEnv) -> list[dict[str, Any]]:
    return [line for worker in env.workers for line in worker.outcomes()]


def wait_outcome(env: SyncEnv, predicate: Any, what: str, timeout: float = 60) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def check() -> bool:
        found[:] = [o for o in outcomes(env) if predicate(o)]
        return bool(found)

    wait_until(check, timeout, what=what)
    return found[-1]


def doctor_json(env: SyncEnv, **overrides: str) -> tuple[int, list[dict[str, Any]]]:
    """Run `glpi-sync doctor --json` with the deployment's environment plus ``overrides``."""
    result = subprocess.run(
        [WORKER_BIN, "doctor", "--json"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **env.env, **overrides},
    )
    return result.returncode, orjson.loads(result.stdout)["checks"]


def markers(state: dict[str, Any]) -> list[str]:
    return [html.unescape(f["content"]).split("[cw-msg:")[1].split("]")[0] for f in state["ITILFollowup"]]


def test_state_is_inspected_through_any_worker(sync_env: SyncEnv, emulator: EmulatorProcess) -> None:
    w1, w2 = sync_env.worker("w1"), sync_env.worker("w2")
    w1.start()
    w2.start()
    hooks = list(range(1, 9))
    sync_env.publish([hook_envelope(emulator.api_url, hook_id=h, account_id=h) for h in hooks])
    # Distinct hooks: one applied by the first worker before the second joined may be applied again by its new
    # owner (its offset was not committed yet): idempotent, and a second outcome line.
    wait_until(
        lambda: {o["hook_id"] for o in outcomes(sync_env) if o["event"] == "hook_configured"} == set(hooks),
        90,
        what="8 hooks configured",
    )

    def both_own_partitions() -> bool:
        status, body = w1.http_get("/state/workers")
        return status == 200 and sum(1 for parts in orjson.loads(body)["partitions"].values() if parts) == 2

    wait_until(both_own_partitions, 60, what="both workers in the group")
    owners = {}
    for hook in hooks:
        body = cli_json(sync_env, w1, "inspect", "hook", "--hook-id", str(hook))
        assert body["hook_id"] == hook and body["settings"]["user_token"] == "***"
        assert body["partition"] == hook_partition(hook, sync_env.partitions)
        owners[hook] = body["served_by"]
    # Both workers own some hooks, and w1 answered for w2's by forwarding.
    assert {f"http://127.0.0.1:{w1.http_port}", f"http://127.0.0.1:{w2.http_port}"} == set(owners.values())
    status, body = w2.http_get("/state/hooks?all=1")
    assert status == 200 and [h["hook_id"] for h in orjson.loads(body)["hooks"]] == hooks
    assert w1.http_get("/health/ready")[0] == 200
    assert orjson.loads(w1.http_get("/health/live")[1])["live"] is True


def test_admin_commands_pause_resume_disable_enable_and_skip(sync_env: SyncEnv, emulator: EmulatorProcess) -> None:
    worker = sync_env.worker()
    worker.start()
    sync_env.publish([hook_envelope(emulator.api_url)])
    wait_outcome(sync_env, lambda o: o["event"] == "hook_configured", "hook")
    cli(sync_env, worker, "hook", "pause", "--hook-id", "7", "--reason", "GLPI upgrade")
    wait_until(
        lambda: cli_json(sync_env, worker, "inspect", "hook", "--hook-id", "7")["pause"] is not None, 30, what="pause"
    )
    first = load_example("conversation_created")
    sync_env.publish([envelope("conversation_created", first)])
    wait_outcome(sync_env, lambda o: o["outcome"] == "parked", "parked")
    assert emulator.state()["Ticket"] == []
    state = cli_json(sync_env, worker, "inspect", "hook", "--hook-id", "7")
    assert state["pause"]["kind"] == "operator" and state["pause"]["reason"] == "GLPI upgrade"
    assert state["parked_events"] == 1 and state["state"] == "paused (operator)"
    listed = cli(sync_env, worker, "hook", "list").stdout.splitlines()
    assert listed[0].split()[:3] == ["HOOK", "ACCOUNT", "STATE"]
    assert listed[1].split()[:5] == ["7", "7", "paused", "(operator)", "1"]
    # skip: the stuck event goes to the DLQ with a record of who skipped it.
    cli(sync_env, worker, "hook", "skip", "--hook-id", "7", "--reason", "poison")
    wait_outcome(sync_env, lambda o: o["event"] == "hook_skip", "skip")
    dlq = cli_json(sync_env, worker, "dlq", "list", "--json")
    assert dlq[-1]["stage"] == "operator-skip" and "poison" in dlq[-1]["reason"]
    second = load_example("conversation_created", id=58)
    sync_env.publish([envelope("conversation_created", second)])
    wait_until(
        lambda: cli_json(sync_env, worker, "inspect", "hook", "--hook-id", "7")["parked_events"] == 1,
        30,
        what="second parked",
    )
    cli(sync_env, worker, "hook", "resume", "--hook-id", "7")
    wait_until(lambda: len(emulator.state()["Ticket"]) == 1, 30, what="drained after resume")
    assert "[cw:7/58]" in html.unescape(emulator.state()["Ticket"][0]["content"])
    cli(sync_env, worker, "hook", "disable", "--hook-id", "7")
    wait_outcome(sync_env, lambda o: o["event"] == "hook_disable", "disable")
    sync_env.publish([envelope("conversation_created", load_example("conversation_created", id=59))])
    set_aside = wait_outcome(sync_env, lambda o: o["outcome"] == "set_aside", "set aside while disabled")
    assert "hook 7 is disabled" in set_aside["msg"]
    assert cli_json(sync_env, worker, "hook", "list", "--json")[0]["state"] == "disabled"
    cli(sync_env, worker, "hook", "enable", "--hook-id", "7")
    wait_outcome(sync_env, lambda o: o["event"] == "hook_enable", "enable")
    sync_env.publish([envelope("conversation_created", load_example("conversation_created", id=60))])
    wait_until(lambda: len(emulator.state()["Ticket"]) == 2, 30, what="synced after enable")


def test_repair_resync_and_reset(sync_env: SyncEnv, emulator: EmulatorProcess) -> None:
    worker = sync_env.worker()
    worker.start()
    sync_env.publish([hook_envelope(emulator.api_url), *story()])
    wait_until(lambda: len(emulator.state()["ITILFollowup"]) == 3, 60, what="story synced")
    before = emulator.state()
    (ticket,) = before["Ticket"]
    conversation = cli_json(sync_env, worker, "inspect", "conversation", "57", "--hook-id", "7")
    assert conversation["conversation"]["ticket_id"] == ticket["id"]
    assert [m["message_id"] for m in conversation["messages"]] == [4410, 4412, 4415]
    # trace: each event of the conversation, how it ended, and the ticket's page in GLPI.
    trace = cli(sync_env, worker, "trace", "conversation", "57", "--hook-id", "7").stdout
    link = f"{emulator.api_url.removesuffix('/apirest.php')}/front/ticket.form.php?id={ticket['id']}"
    assert link in trace and f"created ticket {ticket['id']}" in trace
    traced = cli_json(sync_env, worker, "trace", "conversation", "57", "--hook-id", "7", "--json")
    assert traced["ticket_link"] == link
    history = traced["conversation"]["history"]
    assert [e["event"] for e in history][:1] == ["conversation_created"]
    assert {e["event"] for e in history} >= {"conversation_created", "message_created"}
    assert all(e["outcome"] in ("synced", "skipped") and "/" in e["source"] for e in history)
    assert any(e["glpi_ids"].get("followup_id") for e in history if e["event"] == "message_created")
    missing = cli(sync_env, worker, "trace", "conversation", "999", "--hook-id", "7", check=False)
    assert missing.returncode == 1 and "never synced" in missing.stderr and "Traceback" not in missing.stderr

    # A technician deletes a followup, then the whole ticket: resync re-creates exactly what is missing.
    emulator.delete(f"ITILFollowup/{before['ITILFollowup'][0]['id']}")
    cli(sync_env, worker, "resync", "conversation", "57", "--hook-id", "7")
    wait_outcome(sync_env, lambda o: o["event"] == "resync_conversation", "resync 1")
    assert sorted(markers(emulator.state())) == ["4410", "4412", "4415"]
    emulator.delete(f"Ticket/{ticket['id']}?force_purge=true")
    cli(sync_env, worker, "resync", "conversation", "57", "--hook-id", "7")
    done = wait_outcome(sync_env, lambda o: o["event"] == "resync_conversation" and "recreated" in o["msg"], "resync 2")
    history = cli_json(sync_env, worker, "trace", "conversation", "57", "--hook-id", "7", "--json")["conversation"]
    assert [e["event"] for e in history["history"]][-2:] == ["resync_conversation", "resync_conversation"]
    state = emulator.state()
    (new_ticket,) = state["Ticket"]
    assert new_ticket["id"] != ticket["id"] and "ticket recreated" in done["msg"]
    assert sorted(markers(state)) == ["4410", "4412", "4415"]

    # resync contact: the GLPI user was purged by an admin; it is re-created (found first, never doubled).
    users = [u for u in state["User"] if u["id"] >= FIRST_USER_ID]
    emulator.delete(f"User/{users[0]['id']}?force_purge=true")
    cli(sync_env, worker, "resync", "contact", "318", "--hook-id", "7")
    wait_outcome(sync_env, lambda o: o["event"] == "resync_contact", "resync contact")
    users = [u for u in emulator.state()["User"] if u["id"] >= FIRST_USER_ID]
    assert [u["name"] for u in users] == ["marta.silva@example.org"]
    contact = cli_json(sync_env, worker, "inspect", "contact", "318", "--hook-id", "7")["contact"]
    assert contact["glpi_id"] == users[0]["id"]
    cli(sync_env, worker, "resync", "contact", "318", "--hook-id", "7")  # nothing missing: nothing created
    wait_until(lambda: len([o for o in outcomes(sync_env) if o["event"] == "resync_contact"]) == 2, 30, what="2nd")
    assert "exists" in [o for o in outcomes(sync_env) if o["event"] == "resync_contact"][-1]["msg"]

    # Repair: after a manual merge in GLPI, point the contact at another user; clear a conversation mapping.
    cli(sync_env, worker, "repair", "conversation", "99", "--hook-id", "7", "--clear")
    wait_outcome(sync_env, lambda o: o["event"] == "set_conversation_mapping", "repair conversation")
    cli(sync_env, worker, "repair", "contact", "318", "--hook-id", "7", "--glpi-id", "2")
    wait_outcome(sync_env, lambda o: o["event"] == "set_contact_mapping", "repair")
    contact = cli_json(sync_env, worker, "inspect", "contact", "318", "--hook-id", "7")["contact"]
    assert contact["glpi_id"] == 2
    cli(sync_env, worker, "repair", "contact", "318", "--hook-id", "7", "--glpi-id", str(users[0]["id"]))

    # Reset: forget every mapping and rebuild from the topic; GLPI objects are adopted, never copied.
    result = cli(sync_env, worker, "reset", "hook", "--hook-id", "7", "--since", "2020-01-01T00:00:00Z")
    assert "rebuilt from" in result.stdout and "synced 7/7" in result.stdout
    after = emulator.state()
    assert len(after["Ticket"]) == 1 and len(after["ITILFollowup"]) == 3
    assert len([u for u in after["User"] if u["id"] >= FIRST_USER_ID]) == 1
    rebuilt = cli_json(sync_env, worker, "inspect", "conversation", "57", "--hook-id", "7")
    assert rebuilt["conversation"]["ticket_id"] == new_ticket["id"]
    assert cli_json(sync_env, worker, "inspect", "hook", "--hook-id", "7")["rebuilding"] is False


def test_doctor_green_and_every_red_line(sync_env: SyncEnv, emulator: EmulatorProcess, tmp_path: Path) -> None:
    restricted = EmulatorProcess(tmp_path)
    restricted.start()
    try:
        restricted.config(profile="self-service")  # a profile that cannot do an integration's work
        worker = sync_env.worker()
        worker.start()
        closed_port_url = "http://127.0.0.1:9/apirest.php"
        sync_env.publish(
            [
                hook_envelope(emulator.api_url, hook_id=7, account_id=7),
                hook_envelope(emulator.api_url, hook_id=21, account_id=21, status="disabled"),
                hook_envelope(emulator.api_url, hook_id=22, account_id=22, account_features=[]),
                hook_envelope(
                    emulator.api_url, hook_id=24, account_id=24, user_token={"env": "GLPI_SYNC_HOOK_SECRET_NOT_SET"}
                ),
                hook_envelope(emulator.api_url, hook_id=25, account_id=25, app_token="wrong-app-token"),
                hook_envelope(emulator.api_url, hook_id=26, account_id=26, user_token="wrong-user-token"),
                hook_envelope(closed_port_url, hook_id=27, account_id=27),
                hook_envelope(restricted.api_url, hook_id=28, account_id=28),
            ]
        )
        wait_until(
            lambda: len([o for o in outcomes(sync_env) if o["event"] == "hook_configured"]) == 8, 60, what="hooks"
        )
        cli(sync_env, worker, "hook", "pause", "--hook-id", "21")
        wait_outcome(sync_env, lambda o: o["event"] == "hook_pause", "pause")

        green = cli(sync_env, worker, "doctor", "--hook-id", "7")
        assert green.returncode == 0 and "all good" in green.stdout
        tested = cli(sync_env, worker, "hook", "test", "--hook-id", "28", check=False)
        assert tested.returncode == 1
        assert "✘ profile may create users: profile Self-Service: not granted" in tested.stdout
        assert "✔ profile may create tickets: profile Self-Service: granted" in tested.stdout
        assert "✔ user token valid: accepted" in tested.stdout

        report = cli(sync_env, worker, "doctor", "--json", check=False)
        assert report.returncode == 1
        failed = {c["check"] for c in orjson.loads(report.stdout)["checks"] if c["level"] == "fail"}
        assert failed == {
            "hook 21 enabled",
            "hook 21 not paused",
            "hook 22 crm_integration feature",
            "hook 24 tokens resolvable",
            "hook 25 app token valid",
            "hook 26 user token valid",
            "hook 27 GLPI reachable",
            "hook 28 profile may create users",
            "hook 28 profile may update tickets",
            "hook 28 profile may add followups to any ticket",
        }
        human = cli(sync_env, worker, "doctor", "--hook-id", "26", check=False).stdout
        assert "✘ hook 26 user token valid: ERROR_GLPI_LOGIN_USER_TOKEN" in human
        assert "fix: regenerate the user's API token" in human and "glpi-sync hook set --hook-id 26" in human
        assert "wrong-user-token" not in human

        here = f"http://127.0.0.1:{worker.http_port}"
        code, checks = doctor_json(sync_env, GLPI_SYNC_WORKER_URL="http://127.0.0.1:9")
        assert code == 1
        assert any(c["check"] == "workers reachable" and c["level"] == "fail" for c in checks)
        _, checks = doctor_json(sync_env, GLPI_SYNC_APP_ID="no-such-app", GLPI_SYNC_WORKER_URL=here)
        assert any(c["check"] == "topic no-such-app-hooks-changelog" and c["level"] == "fail" for c in checks)
        assert any(c["check"] == "consumer group" and c["level"] == "fail" for c in checks)
        # A deployment whose topics were made by hand, wrongly: too few partitions, changelogs not compacted.
        asyncio.run(ensure_topics(sync_env.kafka.bootstrap, {f"handmade-{t}-changelog": 2 for t in TABLES}))
        _, checks = doctor_json(sync_env, GLPI_SYNC_APP_ID="handmade", GLPI_SYNC_WORKER_URL=here)
        lines = {c["check"]: c for c in checks}
        assert lines["topic handmade-hooks-changelog"]["level"] == "fail"
        assert "2 partitions, but the input topic" in lines["topic handmade-hooks-changelog"]["detail"]
        assert lines["changelog handmade-hooks-changelog compaction"]["level"] == "fail"
        code, checks = doctor_json(sync_env, KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9")
        assert code == 1
        assert checks[0]["check"] == "broker reachable"
        assert "KAFKA_BOOTSTRAP_SERVERS" in checks[0]["fix"]
        assert {"workers reachable", "webhook ingress"} <= {c["check"] for c in checks}  # the rest is still checked
        assert "wrong-app-token" not in worker.log_path.read_text()
    finally:
        restricted.stop()


def test_metrics_expose_lag_pauses_and_per_hook_freshness(sync_env: SyncEnv, emulator: EmulatorProcess) -> None:
    worker = sync_env.worker()
    worker.start()
    sync_env.publish([hook_envelope(emulator.api_url), *story()])
    wait_until(lambda: len(emulator.state()["ITILFollowup"]) == 3, 60, what="story")
    wait_until(lambda: "cwglpi_consumer_lag_messages{" in worker.http_get("/metrics")[1].decode(), 30, what="lag gauge")
    metrics = worker.http_get("/metrics")[1].decode()
    for name in (
        "cwglpi_oldest_pending_event_age_seconds{",
        'cwglpi_hook_last_synced_timestamp_seconds{hook_id="7"}',
        "cwglpi_glpi_request_duration_seconds_bucket{",
        "cwglpi_glpi_sessions_opened_total 1.0",
        'cwglpi_events_skipped_total{reason="not_identifiable"} 1.0',
        "cwglpi_commit_stalled_seconds",
    ):
        assert name in metrics, name


def test_work_held_back_shows_as_stuck_then_clears(sync_env: SyncEnv, emulator: EmulatorProcess) -> None:
    """A followup GLPI holds for 14 s: the partition is stuck work (metric, doctor, log) until it is done."""
    worker = sync_env.worker()
    worker.env["GLPI_SYNC_STUCK_SECONDS"] = "3"
    worker.env["GLPI_SYNC_GLPI_TIMEOUT"] = "30"  # GLPI is slow, not gone: the handler waits for it
    worker.start()
    emulator.faults({"path": "ITILFollowup", "method": "POST", "kind": "delay", "seconds": 14, "count": 1})
    sync_env.publish([hook_envelope(emulator.api_url), *story()])
    partition = hook_partition(7, sync_env.partitions)

    def stuck_gauge() -> float:
        metrics = worker.http_get("/metrics")[1].decode()
        prefix = f'cwglpi_stuck_work_seconds{{partition="{partition}",topic="{sync_env.topic}"}} '
        found = [float(line.removeprefix(prefix)) for line in metrics.splitlines() if line.startswith(prefix)]
        return found[0] if found else 0.0

    wait_until(lambda: stuck_gauge() > 0, 30, what="the stuck-work gauge")
    _, checks = doctor_json(sync_env, GLPI_SYNC_WORKER_URL=f"http://127.0.0.1:{worker.http_port}")
    stuck = [c for c in checks if c["check"] == "stuck work"]
    assert len(stuck) == 1 and stuck[0]["level"] == "fail", stuck
    assert f"partition {partition} of {sync_env.topic}" in stuck[0]["detail"] and "hook 7" in stuck[0]["detail"]
    assert "its event still runs" in stuck[0]["fix"]
    assert "stuck work: partition" in worker.log_path.read_text()
    wait_until(lambda: len(emulator.state()["ITILFollowup"]) == 3, 60, what="the story, once GLPI answers")
    wait_until(lambda: stuck_gauge() == 0, 30, what="the gauge back to 0")
    assert len(emulator.state()["ITILFollowup"]) == 3  # shown, never read again while its handler ran


def test_resets_keep_operator_decisions_and_never_replay_replays(sync_env: SyncEnv, emulator: EmulatorProcess) -> None:
    worker = sync_env.worker()
    worker.start()
    sync_env.publish([hook_envelope(emulator.api_url), *story()])
    sync_env.publish_raw([(b"7", b"not json at all"), (b"7", b'{"event": "message_created"}')])
    wait_until(lambda: len(emulator.state()["ITILFollowup"]) == 3, 60, what="story synced")
    wait_until(lambda: len(cli_json(sync_env, worker, "dlq", "list", "--json")) == 2, 30, what="2 parse failures")
    for run in range(3):
        result = cli(sync_env, worker, "reset", "hook", "--hook-id", "7", "--since", "2020-01-01T00:00:00Z")
        assert "not replayed: 2 record(s) that cannot be parsed" in result.stdout
        assert "not replayed: 1 hook configuration record(s)" in result.stdout
        if run:
            assert f"not replayed: {7 * run} earlier replay(s) of a reset" in result.stdout
        assert len(cli_json(sync_env, worker, "dlq", "list", "--json")) == 2  # not 4, not 8
    state = emulator.state()
    assert len(state["Ticket"]) == 1 and len(state["ITILFollowup"]) == 3
    # An operator's decision survives a reset: the replay never re-enables a disabled hook.
    cli(sync_env, worker, "hook", "disable", "--hook-id", "7")
    wait_outcome(sync_env, lambda o: o["event"] == "hook_disable", "disable")
    cli(sync_env, worker, "reset", "hook", "--hook-id", "7", "--since", "2020-01-01T00:00:00Z")
    assert cli_json(sync_env, worker, "inspect", "hook", "--hook-id", "7")["status"] == "disabled"
