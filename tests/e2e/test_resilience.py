"""Never duplicate, never lose: pauses and parking, isolation of hooks, recreated tickets, DLQ tools.

Real Kafka, real worker processes, GLPI emulators with fault knobs.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import SyncEnv, envelope, hook_envelope, load_example
from tests.glpi_emulator import FIRST_USER_ID
from tests.harness import WORKER_BIN, EmulatorProcess, KafkaBroker, wait_until

pytestmark = pytest.mark.broker


def conversation_events(conv_id: int, messages: int, hook_id: int = 7, account_id: int = 7) -> list[dict[str, Any]]:
    conv = load_example("conversation_created", id=conv_id)
    conv["messages"] = []  # as Chatwoot often sends it: these tests follow the messages' own events
    events = [envelope("conversation_created", conv, hook_id, account_id)]
    for n in range(1, messages + 1):
        msg = load_example("message_created", id=conv_id * 1000 + n, content=f"message {n} of {conv_id}")
        msg["conversation"]["id"] = conv_id
        events.append(envelope("message_created", msg, hook_id, account_id))
    return events


def outcomes(env: SyncEnv) -> list[dict[str, Any]]:
    return [line for worker in env.workers for line in worker.outcomes()]


def followup_markers(state: dict[str, Any]) -> list[str]:
    import html

    return [html.unescape(f["content"]).split("[cw-msg:")[1].split("]")[0] for f in state["ITILFollowup"]]


@pytest.fixture
def one_partition(kafka: KafkaBroker, tmp_path: Path) -> Iterator[SyncEnv]:
    env = SyncEnv(kafka, tmp_path, partitions=1)
    try:
        yield env
    finally:
        env.stop()


def test_broken_credentials_pause_the_hook_and_park_until_reconfigured(
    sync_env: SyncEnv, emulator: EmulatorProcess
) -> None:
    worker = sync_env.worker()
    worker.start()
    sync_env.publish([hook_envelope(emulator.api_url, user_token="revoked-token"), *conversation_events(57, 3)])
    wait_until(lambda: sum(o["outcome"] == "parked" for o in outcomes(sync_env)) == 4, 60, what="4 parked events")
    assert [u["id"] for u in emulator.state()["User"] if u["id"] >= FIRST_USER_ID] == []
    wait_until(
        lambda: 'cwglpi_hooks_paused{kind="auth"} 1.0' in worker.http_get("/metrics")[1].decode(),
        20,
        what="paused gauge",
    )
    paused_line = next(o for o in outcomes(sync_env) if o["outcome"] == "parked")
    assert "ERROR_GLPI_LOGIN_USER_TOKEN" in paused_line["msg"]
    assert "revoked-token" not in worker.log_path.read_text()
    # The operator fixes the token: the parked events are synced, in order, exactly once.
    sync_env.publish([hook_envelope(emulator.api_url)])
    wait_until(lambda: len(emulator.state()["ITILFollowup"]) == 3, 60, what="3 followups after reconfigure")
    state = emulator.state()
    assert len(state["Ticket"]) == 1
    assert followup_markers(state) == ["57001", "57002", "57003"]  # in order
    drained = [o for o in outcomes(sync_env) if o.get("parked_seq") is not None]
    assert [o["parked_seq"] for o in drained] == [0, 1, 2, 3]


def test_glpi_outage_past_the_retry_budget_parks_then_resumes_by_itself(
    sync_env: SyncEnv, emulator: EmulatorProcess
) -> None:
    emulator.faults({"path": ".*", "kind": "status", "status": 503, "count": -1})
    worker = sync_env.worker()
    worker.env["GLPI_SYNC_RETRY_BUDGET"] = "1"
    worker.start()
    sync_env.publish([hook_envelope(emulator.api_url), *conversation_events(60, 4)])
    wait_until(lambda: sum(o["outcome"] == "parked" for o in outcomes(sync_env)) == 5, 60, what="parked events")
    assert emulator.state()["Ticket"] == []
    emulator.faults(clear=True)  # GLPI is back: the timer's hook_retry drains the queue
    wait_until(lambda: len(emulator.state()["ITILFollowup"]) == 4, 60, what="all followups after the outage")
    state = emulator.state()
    assert len(state["Ticket"]) == 1
    assert followup_markers(state) == ["60001", "60002", "60003", "60004"]


def test_a_dead_hook_does_not_delay_other_hooks_of_its_partition(one_partition: SyncEnv, tmp_path: Path) -> None:
    slow = EmulatorProcess(tmp_path)
    fast = EmulatorProcess(tmp_path)
    slow.start()
    fast.start()
    try:
        slow.faults({"path": "ITILFollowup", "method": "POST", "kind": "delay", "seconds": 2, "count": -1})
        worker = one_partition.worker()
        worker.start()
        events = [
            hook_envelope(slow.api_url, hook_id=1, account_id=1),
            hook_envelope(fast.api_url, hook_id=2, account_id=2),
            *conversation_events(10, 3, hook_id=1, account_id=1),
            *conversation_events(20, 15, hook_id=2, account_id=2),
        ]
        one_partition.publish(events)
        wait_until(lambda: len(slow.state()["ITILFollowup"]) == 3, 90, what="the slow hook's followups")
        lines = [o for o in worker.outcomes() if o["event"] == "message_created"]
        fast_done = [o["ts"] for o in lines if o["hook_id"] == 2]
        slow_done = [o["ts"] for o in lines if o["hook_id"] == 1]
        assert len(fast_done) == 15 and len(slow_done) == 3
        # Every message of the healthy hook finished before the slow hook's first message did.
        assert max(fast_done) < min(slow_done)
        assert followup_markers(slow.state()) == ["10001", "10002", "10003"]
        assert followup_markers(fast.state()) == [str(20001 + n) for n in range(15)]
    finally:
        slow.stop()
        fast.stop()


def test_a_ticket_deleted_in_glpi_is_recreated_for_later_messages(sync_env: SyncEnv, emulator: EmulatorProcess) -> None:
    worker = sync_env.worker()
    worker.start()
    first = conversation_events(70, 1)
    sync_env.publish([hook_envelope(emulator.api_url), *first])
    wait_until(lambda: len(emulator.state()["ITILFollowup"]) == 1, 60, what="first followup")
    old_ticket = emulator.state()["Ticket"][0]["id"]
    emulator.delete(f"Ticket/{old_ticket}?force_purge=true")
    later = conversation_events(70, 2)[2:]
    sync_env.publish(later)
    wait_until(
        lambda: (
            len(emulator.state()["ITILFollowup"]) == 1
            and len(emulator.state()["Ticket"]) == 1
            and emulator.state()["Ticket"][0]["id"] != old_ticket
        ),
        60,
        what="recreated ticket",
    )
    import html

    (ticket,) = emulator.state()["Ticket"]
    assert f"replaces GLPI ticket #{old_ticket}" in html.unescape(ticket["content"])
    assert followup_markers(emulator.state()) == ["70002"]


def test_dlq_list_and_replay(sync_env: SyncEnv, emulator: EmulatorProcess) -> None:
    worker = sync_env.worker()
    worker.start()
    emulator.faults({"path": "ITILFollowup", "method": "POST", "kind": "status", "status": 400, "count": 1})
    sync_env.publish([hook_envelope(emulator.api_url), *conversation_events(80, 2)])
    wait_until(lambda: len(outcomes(sync_env)) == 4, 60, what="4 outcomes")
    assert [o["outcome"] for o in outcomes(sync_env)] == ["synced", "synced", "dead_lettered", "synced"]
    env = {**os.environ, **sync_env.env}
    listed = subprocess.run([WORKER_BIN, "dlq", "list", "--json"], env=env, capture_output=True, text=True, check=True)
    (entry,) = orjson.loads(listed.stdout)
    assert (entry["hook_id"], entry["event"], entry["stage"]) == (7, "message_created", "execute")
    assert entry["error_class"] == "GlpiRejectedError" and entry["glpi_code"] == "ERROR_SQL"
    human = subprocess.run([WORKER_BIN, "dlq", "list"], env=env, capture_output=True, text=True, check=True)
    assert "hook 7  message_created" in human.stdout and "execute: GLPI refused the data: ERROR_SQL" in human.stdout
    for _ in range(2):  # replaying twice is safe
        subprocess.run([WORKER_BIN, "dlq", "replay", "--all"], env=env, capture_output=True, text=True, check=True)
    wait_until(lambda: len(outcomes(sync_env)) == 6, 60, what="replayed outcomes")
    assert [o["outcome"] for o in outcomes(sync_env)][4:] == ["synced", "skipped"]
    assert followup_markers(emulator.state()) == ["80002", "80001"]


def test_control_commands_are_refused_on_the_producers_topic(sync_env: SyncEnv, emulator: EmulatorProcess) -> None:
    worker = sync_env.worker()
    worker.start()
    sync_env.publish([hook_envelope(emulator.api_url), {"event": "hook_pause", "hook_id": 7, "payload": {}}])
    wait_until(lambda: len(outcomes(sync_env)) == 2, 60, what="2 outcomes")
    refused = outcomes(sync_env)[1]
    assert refused["outcome"] == "dead_lettered" and "only accepted on the control topic" in refused["msg"]


def test_a_stop_the_broker_never_answers_ends_at_the_stop_timeout(sync_env: SyncEnv, kafka: KafkaBroker) -> None:
    """SIGTERM while the broker is frozen: faust's clean stop would wait ~90 s for it; the worker gives up after
    GLPI_SYNC_STOP_TIMEOUT and says so (no timing asserted: the deadline's own line is the evidence)."""
    worker = sync_env.worker()
    worker.env["GLPI_SYNC_STOP_TIMEOUT"] = "3"
    worker.start()
    wait_until(lambda: worker.http_get("/health/ready")[0] == 200, 60, what="the worker ready")
    assert worker.proc is not None
    kafka.freeze()
    try:
        os.killpg(worker.proc.pid, signal.SIGTERM)
        try:
            worker.proc.wait(180)  # a bound for the test only; what counts is the line below
        except subprocess.TimeoutExpired:
            pytest.fail("the worker was still stopping 180 s after SIGTERM")
    finally:
        kafka.thaw()
    assert any("stopping took longer than 3 s" in str(line.get("msg")) for line in worker.log_lines())
