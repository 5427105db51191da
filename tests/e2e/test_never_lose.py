"""Never lose, never duplicate, outside the happy path: the failure classes a real deployment meets.

Real Kafka, real ``glpi-sync worker`` processes with RocksDB, the GLPI emulator with its fault knobs. Each test
drives the product through its documented contract (topics, envelopes, the CLI) and counts what GLPI holds.
"""

from __future__ import annotations

import asyncio
import html
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from app.kafka_io import ensure_topics
from app.ops import hook_partition
from app.topology import COMPACTED, changelog_topic
from tests.conftest import SyncEnv, envelope, hook_envelope, load_example, story
from tests.e2e.test_resilience import conversation_events, followup_markers, outcomes
from tests.glpi_emulator import FIRST_USER_ID
from tests.harness import WORKER_BIN, EmulatorProcess, KafkaBroker, wait_until

pytestmark = pytest.mark.broker


def cli(env: SyncEnv, *args: str) -> subprocess.CompletedProcess[str]:
    url = f"http://127.0.0.1:{env.workers[0].http_port}" if env.workers else "http://127.0.0.1:9"
    return subprocess.run(
        [WORKER_BIN, *args],
        env={**os.environ, **env.env, "GLPI_SYNC_WORKER_URL": url},
        capture_output=True,
        text=True,
        check=False,
    )


def inspect_hook(env: SyncEnv, hook_id: int = 7) -> dict[str, Any]:
    result = cli(env, "inspect", "hook", "--hook-id", str(hook_id))
    return dict(orjson.loads(result.stdout)) if result.returncode == 0 else {}


def partitions_of(kafka: KafkaBroker, *topics: str) -> dict[str, int]:
    from app.kafka_io import topic_partitions

    return asyncio.run(topic_partitions(kafka.bootstrap, list(topics)))


def metric(worker: Any, line_start: str) -> float:
    for line in worker.http_get("/metrics")[1].decode().splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# ------------------------------------------------------------------------------------------- topics and keys


@pytest.mark.parametrize("existing", [3, 2])
def test_an_existing_input_topic_decides_the_partition_count(
    kafka: KafkaBroker, tmp_path: Path, emulator: EmulatorProcess, existing: int
) -> None:
    """Producers made the topic with 3 (or 2) partitions; the worker runs with the default GLPI_SYNC_PARTITIONS."""
    env = SyncEnv(kafka, tmp_path, partitions=existing)
    try:
        assert "GLPI_SYNC_PARTITIONS" not in env.env  # the default (8) applies
        worker = env.worker()
        worker.start()
        env.publish([hook_envelope(emulator.api_url), *story()])
        wait_until(lambda: len(emulator.state()["ITILFollowup"]) == 3, 60, what="the story in GLPI")
        made = partitions_of(kafka, env.control, changelog_topic(env.app_id, "hooks"))
        assert set(made.values()) == {existing}
        # Operator commands computed by the tools land on the hook's own partition.
        assert cli(env, "hook", "pause", "--hook-id", "7", "--reason", "test").returncode == 0
        wait_until(lambda: (inspect_hook(env).get("pause") or {}).get("kind") == "operator", 30, what="paused")
        assert inspect_hook(env)["partition"] == hook_partition(7, existing)
        assert not [o for o in outcomes(env) if o["outcome"] == "dead_lettered"]
    finally:
        env.stop()


def test_topics_made_for_another_count_stop_the_worker_with_the_fix(kafka: KafkaBroker, tmp_path: Path) -> None:
    env = SyncEnv(kafka, tmp_path, partitions=4)
    stale = changelog_topic(env.app_id, "conversations")
    asyncio.run(ensure_topics(kafka.bootstrap, {stale: 8, env.control: 2}, configs={stale: COMPACTED}))
    worker = env.worker()
    result = subprocess.run(
        [WORKER_BIN, "worker"], env=worker.env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("glpi-sync worker: ")]
    assert f"glpi-sync worker: topic {env.control} has 2 partition(s), but the input topic {env.topic} has 4" in lines
    assert f"glpi-sync worker: topic {stale} has 8 partition(s), but the input topic {env.topic} has 4" in lines
    assert any("fix:" in line and "kafka-topics.sh --delete" in line for line in lines)
    assert "Traceback" not in result.stderr


def test_records_keyed_by_something_else_than_their_hook_are_dead_lettered(
    sync_env: SyncEnv, emulator: EmulatorProcess
) -> None:
    worker = sync_env.worker()
    worker.start()
    sync_env.publish([hook_envelope(emulator.api_url)])
    body = orjson.dumps(envelope("contact_updated", load_example("contact_updated")))
    sync_env.publish_raw([(None, body), (b"account-7", body)])
    dlq = sync_env.read_topic(sync_env.dlq, 2)
    stages = [dict(r.headers)["__connect.errors.stage"].decode() for r in dlq]
    reasons = [dict(r.headers)["__connect.errors.exception.message"].decode() for r in dlq]
    assert stages == ["key", "key"]
    assert "record has no key, but its hook id is 7" in reasons[0]
    assert "record has key b'account-7'" in reasons[1]
    assert all("producers must key every record by its hook id (b'7')" in r for r in reasons)
    wait_until(lambda: metric(worker, 'cwglpi_records_misrouted_total{reason="null_key"}') == 1, 20, what="metric")
    assert metric(worker, 'cwglpi_records_misrouted_total{reason="wrong_key"}') == 1
    assert [u["id"] for u in emulator.state()["User"] if u["id"] >= FIRST_USER_ID] == []


# ------------------------------------------------------------------------------------------- large events


def big_message(conv_id: int, message_id: int, size: int) -> dict[str, Any]:
    """A message of ``size`` characters full of ``<>`` (each becomes 4 characters once escaped as HTML)."""
    msg = load_example("message_created", id=message_id, content=("<>" * (size // 2))[:size])
    msg["conversation"]["id"] = conv_id
    return envelope("message_created", msg)


def test_a_950_kb_message_is_synced_parked_and_drained_across_restarts(
    sync_env: SyncEnv, emulator: EmulatorProcess
) -> None:
    worker = sync_env.worker()
    worker.start()
    sync_env.publish([hook_envelope(emulator.api_url), *conversation_events(81, 0)])
    wait_until(lambda: len(emulator.state()["Ticket"]) == 1, 60, what="ticket")
    # Not paused: the followup is created once, and the state kept about it stays small.
    sync_env.publish([big_message(81, 81001, 950_000)])
    wait_until(lambda: len(emulator.state()["ITILFollowup"]) == 1, 90, what="the big followup")
    worker.stop()
    worker.start()  # every restart replays the state: a too-big record there would crash it each time
    # Paused: the record is parked in pieces, survives a restart, and is drained once.
    assert cli(sync_env, "hook", "pause", "--hook-id", "7").returncode == 0
    wait_until(lambda: inspect_hook(sync_env).get("pause") is not None, 30, what="paused")
    sync_env.publish([big_message(81, 81002, 950_000), *conversation_events(82, 1)])
    wait_until(lambda: inspect_hook(sync_env).get("parked_events") == 3, 60, what="3 parked")
    worker.kill()
    worker.start()
    assert inspect_hook(sync_env)["parked_events"] == 3
    assert cli(sync_env, "hook", "resume", "--hook-id", "7").returncode == 0
    wait_until(lambda: len(emulator.state()["ITILFollowup"]) == 3, 90, what="the parked events in GLPI")
    state = emulator.state()
    assert sorted(followup_markers(state)) == ["81001", "81002", "82001"]
    big = [f for f in state["ITILFollowup"] if "[cw-msg:81002]" in html.unescape(f["content"])]
    assert html.unescape(big[0]["content"]).count("&lt;&gt;") == 475_000  # the whole text reached GLPI
    assert len(state["Ticket"]) == 2
    assert not [o for o in outcomes(sync_env) if o["outcome"] == "dead_lettered"]


def test_a_record_larger_than_the_producer_may_send_is_dead_lettered_cut_with_its_origin(
    sync_env: SyncEnv, emulator: EmulatorProcess
) -> None:
    worker = sync_env.worker()
    worker.start()
    sync_env.publish([hook_envelope(emulator.api_url)])
    huge = orjson.dumps(big_message(83, 83001, 1_040_000))  # over 1 MiB once wrapped: the parser refuses it
    asyncio.run(_publish_big(sync_env, huge))
    (dead,) = sync_env.read_topic(sync_env.dlq, 1)
    headers = {k: v.decode() for k, v in dead.headers}
    assert headers["__connect.errors.stage"] == "parse"
    assert int(headers["cwglpi.value.truncated"]) == len(huge)
    assert len(dead.value) < len(huge)
    assert headers["__connect.errors.topic"] == sync_env.topic  # where `dlq replay` reads the whole record
    # The worker carried on: the next event of the hook is synced.
    sync_env.publish(conversation_events(84, 0))
    wait_until(lambda: len(emulator.state()["Ticket"]) == 1, 60, what="the next ticket")


async def _publish_big(env: SyncEnv, value: bytes) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=env.kafka.bootstrap, acks="all", max_request_size=2_000_000)
    await producer.start()
    try:
        await producer.send_and_wait(env.topic, value, key=b"7")
    finally:
        await producer.stop()


# ------------------------------------------------------------------------------------------- drains


def test_a_drain_killed_half_way_resumes_and_disable_keeps_parked_events(
    sync_env: SyncEnv, emulator: EmulatorProcess
) -> None:
    worker = sync_env.worker()
    worker.env["GLPI_SYNC_RESUME_INTERVAL"] = "1"
    worker.start()
    sync_env.publish([hook_envelope(emulator.api_url)])
    wait_until(lambda: inspect_hook(sync_env).get("status") == "enabled", 30, what="hook")
    assert cli(sync_env, "hook", "pause", "--hook-id", "7").returncode == 0
    wait_until(lambda: inspect_hook(sync_env).get("pause") is not None, 30, what="paused")
    events = [e for conv in range(101, 131) for e in conversation_events(conv, 4)]  # 150 parked events
    sync_env.publish(events)
    wait_until(lambda: inspect_hook(sync_env).get("parked_events") == len(events), 90, what="all parked")
    # Disabling a hook with parked events keeps them.
    assert cli(sync_env, "hook", "disable", "--hook-id", "7").returncode == 0
    wait_until(lambda: inspect_hook(sync_env).get("status") == "disabled", 30, what="disabled")
    assert cli(sync_env, "hook", "resume", "--hook-id", "7").returncode == 0
    wait_until(lambda: inspect_hook(sync_env).get("pause") is None, 30, what="resumed while disabled")
    assert inspect_hook(sync_env)["parked_events"] == len(events)
    emulator.faults({"path": ".*", "method": "POST", "kind": "delay", "seconds": 0.05, "count": -1})
    assert cli(sync_env, "hook", "enable", "--hook-id", "7").returncode == 0
    # kill -9 in the middle of the drain, twice.
    for _ in range(2):
        before = len(emulator.state()["ITILFollowup"])
        wait_until(lambda before=before: len(emulator.state()["ITILFollowup"]) > before + 10, 90, what="drain")
        worker.kill()
        worker.start()
    wait_until(lambda: len(emulator.state()["ITILFollowup"]) == 120, 180, what="every parked followup")
    state = emulator.state()
    assert len(state["Ticket"]) == 30
    assert sorted(followup_markers(state)) == sorted(set(followup_markers(state)))  # no duplicate
    wait_until(lambda: inspect_hook(sync_env).get("parked_events") == 0, 60, what="queue empty")


# ------------------------------------------------------------------------------------------- closed tickets


def close_ticket(emulator: EmulatorProcess, ticket_id: int) -> None:
    asyncio.run(_put_status(emulator, ticket_id, 6))


async def _put_status(emulator: EmulatorProcess, ticket_id: int, status: int) -> None:
    import aiohttp

    base = emulator.api_url
    async with aiohttp.ClientSession() as http:
        headers = {"App-Token": "emulator-app-token"}
        async with http.get(
            f"{base}/initSession", headers={**headers, "Authorization": "user_token emulator-user-token"}
        ) as resp:
            token = (await resp.json())["session_token"]
        async with http.put(
            f"{base}/Ticket/{ticket_id}",
            json={"input": {"status": status}},
            headers={**headers, "Session-Token": token},
        ) as resp:
            assert resp.status == 200


@pytest.mark.parametrize("profile", ["super-admin", "restricted"])
def test_a_conversation_that_goes_on_after_its_ticket_was_closed_gets_a_linked_ticket(
    sync_env: SyncEnv, emulator: EmulatorProcess, profile: str
) -> None:
    """Super-Admin: GLPI would store the followup on the closed ticket, unread. Restricted: GLPI refuses it.
    Either way the conversation continues in a new ticket linked to the old one, and the hook is not paused."""
    emulator.config(profile=profile)
    worker = sync_env.worker()
    worker.env["GLPI_SYNC_TICKET_RECHECK_SECONDS"] = "0" if profile == "super-admin" else "3600"
    worker.start()
    sync_env.publish([hook_envelope(emulator.api_url), *conversation_events(91, 1)])
    wait_until(lambda: len(emulator.state()["ITILFollowup"]) == 1, 60, what="first followup")
    (old,) = emulator.state()["Ticket"]
    close_ticket(emulator, old["id"])
    later = conversation_events(91, 3)[2:]  # messages 2 and 3 of the same conversation
    sync_env.publish(later)
    wait_until(lambda: len(emulator.state()["Ticket"]) == 2, 60, what="the linked ticket")
    wait_until(lambda: len(emulator.state()["ITILFollowup"]) >= 2, 60, what="message 3")
    state = emulator.state()
    new = next(t for t in state["Ticket"] if t["id"] != old["id"])
    assert [(link["tickets_id_1"], link["tickets_id_2"]) for link in state["Ticket_Ticket"]] == [(new["id"], old["id"])]
    assert f"#{old['id']}" in html.unescape(new["content"])
    on_old = [f for f in state["ITILFollowup"] if f["items_id"] == old["id"]]
    assert followup_markers({"ITILFollowup": on_old}) == ["91001"]  # nothing more lands on the closed one
    assert inspect_hook(sync_env)["pause"] is None
    assert not [o for o in outcomes(sync_env) if o["outcome"] in ("dead_lettered", "parked")]


def test_a_ticket_moved_to_an_entity_the_profile_cannot_see_is_continued_not_paused(
    sync_env: SyncEnv, emulator: EmulatorProcess
) -> None:
    worker = sync_env.worker()
    worker.start()
    sync_env.publish([hook_envelope(emulator.api_url), *conversation_events(92, 1), *conversation_events(93, 1)])
    wait_until(lambda: len(emulator.state()["ITILFollowup"]) == 2, 60, what="two conversations")
    moved = next(t for t in emulator.state()["Ticket"] if "[cw:7/92]" in html.unescape(t["content"]))
    emulator._call("POST", "entity", {"id": 5, "name": "Elsewhere", "visible": False})
    emulator._call("POST", "move_ticket", {"ticket": moved["id"], "entity": 5})
    sync_env.publish([conversation_events(92, 2)[2], conversation_events(93, 2)[2]])
    wait_until(lambda: len(emulator.state()["ITILFollowup"]) == 4, 60, what="both conversations' messages")
    state = emulator.state()
    assert len(state["Ticket"]) == 3  # conversation 92 continues in a new ticket; 93 keeps its own
    new = next(
        t for t in state["Ticket"] if t["id"] not in (moved["id"],) and "continues" in html.unescape(t["content"])
    )
    assert f"#{moved['id']}" in html.unescape(new["content"])
    assert [f["items_id"] for f in state["ITILFollowup"] if "[cw-msg:92002]" in html.unescape(f["content"])] == [
        new["id"]
    ]
    assert state["Ticket_Ticket"] == []  # GLPI does not link a ticket the profile cannot see (it says so in text)
    assert inspect_hook(sync_env)["pause"] is None  # one ticket's problem, not the hook's


def test_a_visitor_identified_after_the_ticket_becomes_its_requester(
    sync_env: SyncEnv, emulator: EmulatorProcess
) -> None:
    worker = sync_env.worker()
    worker.start()
    anonymous = load_example("conversation_created")
    anonymous["meta"]["sender"].update(name="quiet-river-512", email=None, phone_number=None)
    anonymous["messages"][0]["sender"].update(name="quiet-river-512", email=None, phone_number=None)
    sync_env.publish([hook_envelope(emulator.api_url), envelope("conversation_created", anonymous)])
    wait_until(lambda: len(emulator.state()["Ticket"]) == 1, 60, what="the ticket")
    assert emulator.state()["Ticket_User"] == []  # nobody to name yet
    identified = load_example("contact_updated")  # the pre-chat form: name, email, phone
    sync_env.publish([envelope("contact_updated", identified), envelope("contact_updated", identified)])
    wait_until(lambda: len(emulator.state()["Ticket_User"]) == 1, 60, what="the requester")
    wait_until(lambda: sum(o["event"] == "contact_updated" for o in outcomes(sync_env)) == 2, 30, what="both")
    state = emulator.state()
    (user,) = [u for u in state["User"] if u["id"] >= FIRST_USER_ID]
    assert user["name"] == "marta.silva@example.org"
    (actor,) = state["Ticket_User"]
    assert (actor["tickets_id"], actor["users_id"], actor["type"]) == (state["Ticket"][0]["id"], user["id"], 1)


# ------------------------------------------------------------------------------------------- not GLPI speaking


def test_a_redirect_at_the_api_url_pauses_the_hook_and_says_what_answered(
    sync_env: SyncEnv, emulator: EmulatorProcess
) -> None:
    emulator.faults({"path": ".*", "kind": "redirect", "location": "https://sso.example/login", "count": -1})
    worker = sync_env.worker()
    worker.env["GLPI_SYNC_RESUME_INTERVAL"] = "1"
    worker.start()
    sync_env.publish([hook_envelope(emulator.api_url), *conversation_events(95, 1)])
    wait_until(lambda: (inspect_hook(sync_env).get("pause") or {}).get("kind") == "endpoint", 60, what="paused")
    reason = inspect_hook(sync_env)["pause"]["reason"]
    assert f"HTTP 302 from GET {emulator.api_url}/initSession" in reason
    assert "redirecting to https://sso.example/login" in reason and "(not GLPI's API)" in reason
    doctor = cli(sync_env, "doctor", "--hook-id", "7")
    assert "✘ hook 7 not paused: endpoint: HTTP 302" in doctor.stdout
    assert not sync_env.read_topic(sync_env.dlq, 1, timeout=3)  # nothing was "refused by GLPI"
    emulator.faults(clear=True)  # the proxy is fixed: the worker resumes on its own
    wait_until(lambda: len(emulator.state()["ITILFollowup"]) == 1, 60, what="synced after the fix")


def test_a_page_that_refuses_one_request_only_dead_letters_that_event(
    sync_env: SyncEnv, emulator: EmulatorProcess
) -> None:
    """A WAF answers 403 with its own HTML to one followup; GLPI itself works: that event goes to the DLQ."""
    worker = sync_env.worker()
    worker.start()
    sync_env.publish([hook_envelope(emulator.api_url), *conversation_events(96, 0)])
    wait_until(lambda: len(emulator.state()["Ticket"]) == 1, 60, what="ticket")
    emulator.faults({"path": "^ITILFollowup$", "method": "POST", "kind": "html", "status": 403, "title": "Blocked"})
    sync_env.publish(conversation_events(96, 2)[1:])
    wait_until(lambda: len(emulator.state()["ITILFollowup"]) == 1, 60, what="the second message")
    (dead,) = sync_env.read_topic(sync_env.dlq, 1)
    reason = dict(dead.headers)["__connect.errors.exception.message"].decode()
    assert "GLPI refused this request only" in reason and "an HTML page titled 'Blocked'" in reason
    assert inspect_hook(sync_env)["pause"] is None


# ------------------------------------------------------------------------------------------- late commits


def test_a_ticket_glpi_commits_after_a_504_is_made_once(sync_env: SyncEnv, emulator: EmulatorProcess) -> None:
    emulator.faults({"path": "^Ticket$", "method": "POST", "kind": "late_commit", "answer": "504", "seconds": 2})
    worker = sync_env.worker()
    worker.env["GLPI_SYNC_LATE_COMMIT_WINDOW"] = "8"
    worker.start()
    sync_env.publish([hook_envelope(emulator.api_url), *conversation_events(97, 2)])
    wait_until(lambda: len(emulator.state()["ITILFollowup"]) == 2, 90, what="the conversation")
    time.sleep(3)  # longer than the late commit took
    tickets = [t for t in emulator.state()["Ticket"] if not t["is_deleted"]]
    assert len(tickets) == 1
    posts = [r for r in emulator.requests() if r["method"] == "POST" and r["path"] == "Ticket"]
    assert len(posts) == 1  # no second POST while the first could still land


# ------------------------------------------------------------------------------------------- local state ahead


def test_local_state_ahead_of_a_recreated_changelog_is_rebuilt_not_crash_looped(
    kafka: KafkaBroker, tmp_path: Path, emulator: EmulatorProcess
) -> None:
    env = SyncEnv(kafka, tmp_path, partitions=2)
    try:
        worker = env.worker()
        worker.start()
        env.publish([hook_envelope(emulator.api_url), *conversation_events(98, 1)])
        wait_until(lambda: len(emulator.state()["ITILFollowup"]) == 1, 60, what="synced")
        worker.stop()
        # The conversations changelog is lost on the broker and made again, empty; the worker's disk still
        # holds its state at offsets the new topic never had.
        recreate(kafka, changelog_topic(env.app_id, "conversations"), 2)
        worker.start()
        env.publish(conversation_events(98, 2)[2:])
        wait_until(lambda: len(emulator.state()["ITILFollowup"]) == 2, 60, what="the next message")
        assert len(emulator.state()["Ticket"]) == 1  # the rebuilt partition looked in GLPI and adopted it
        assert metric(worker, 'cwglpi_state_rebuilds_total{table="conversations"}') >= 1
        assert any("rebuilding it from the changelog" in line.get("msg", "") for line in worker.log_lines())
    finally:
        env.stop()


def recreate(kafka: KafkaBroker, topic: str, partitions: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    async def go() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
        await admin.start()
        try:
            await admin.delete_topics([topic])
            for _ in range(60):
                if topic not in await admin.list_topics():
                    break
                await asyncio.sleep(0.5)
        finally:
            await admin.close()
        for _ in range(60):
            try:
                await ensure_topics(kafka.bootstrap, {topic: partitions}, configs={topic: COMPACTED})
                return
            except Exception:
                await asyncio.sleep(0.5)

    asyncio.run(go())
