"""A stock Chatwoot end to end: the Chatwoot emulator signs its webhooks → ``glpi-sync ingress`` → real Kafka →
worker → GLPI emulator; and history through ``glpi-sync backfill`` and Chatwoot's API."""

from __future__ import annotations

import html
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from app.chatwoot.webhooks import sign
from tests.conftest import SyncEnv, hook_envelope
from tests.glpi_emulator import FIRST_USER_ID
from tests.harness import (
    WORKER_BIN,
    ChatwootEmulatorProcess,
    EmulatorProcess,
    IngressProcess,
    KafkaBroker,
    wait_until,
)

pytestmark = pytest.mark.broker

SECRET = "whsec-Xk3pL9qRt7vZ2mN8"
URL_TOKEN = "u" * 8 + uuid.uuid4().hex  # 40 random-ish characters


def ingress_for(env: SyncEnv, tmp_path: Path, **extra: str) -> IngressProcess:
    return IngressProcess(
        tmp_path,
        {
            **env.env,
            "GLPI_SYNC_WEBHOOK_SECRET_7": SECRET,
            "GLPI_SYNC_WEBHOOK_URL_TOKEN_8": URL_TOKEN,
            "GLPI_SYNC_WEBHOOK_SECRETS_DIR": str(tmp_path / "webhook-secrets"),
            **extra,
        },
    )


def chatwoot_sends_to(chatwoot: ChatwootEmulatorProcess, ingress: IngressProcess, hook_id: int = 7) -> None:
    """Point the Chatwoot emulator's account webhook at the ingress, once the ingress is ready."""
    wait_until(lambda: ingress.get("/health/ready")[0] == 200, 60, what="ingress ready")
    chatwoot.call("POST", "webhook", {"url": f"{ingress.base}/webhooks/chatwoot/{hook_id}", "secret": SECRET})


def signed(body: bytes, delivery: str | None = None, at: float | None = None) -> dict[str, str]:
    timestamp = str(int(time.time() if at is None else at))
    return {
        "Content-Type": "application/json",
        "X-Chatwoot-Signature": sign(SECRET, timestamp, body),
        "X-Chatwoot-Timestamp": timestamp,
        "X-Chatwoot-Delivery": delivery or str(uuid.uuid4()),
    }


def ingress_metric(ingress: IngressProcess, start: str) -> float:
    for line in ingress.get("/metrics")[1].decode().splitlines():
        if line.startswith(start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def glpi_writes(emulator: EmulatorProcess) -> int:
    return sum(1 for r in emulator.requests() if r["method"] in ("POST", "PUT") and r["path"] != "initSession")


def test_signed_webhooks_reach_glpi_field_by_field_and_a_redelivery_writes_nothing(
    sync_env: SyncEnv, emulator: EmulatorProcess, chatwoot: ChatwootEmulatorProcess, tmp_path: Path
) -> None:
    worker = sync_env.worker()
    worker.start()
    sync_env.publish([hook_envelope(emulator.api_url)])
    ingress = ingress_for(sync_env, tmp_path)
    ingress.start()
    try:
        chatwoot_sends_to(chatwoot, ingress)
        opened = chatwoot.call(
            "POST",
            "conversation",
            {
                "contact": {"name": "Marta Silva", "email": "marta.silva@example.org", "phone_number": "+351912000111"},
                "content": "The VPN drops every few minutes",
            },
        )
        conversation = opened["conversation_id"]
        chatwoot.call("POST", "noise", {"conversation_id": conversation})
        chatwoot.call("POST", "message", {"conversation_id": conversation, "content": "Since this morning"})
        chatwoot.call(
            "POST", "message", {"conversation_id": conversation, "content": "Restart it", "message_type": "outgoing"}
        )
        chatwoot.call("POST", "status", {"conversation_id": conversation, "status": "resolved"})
        # Every message is a followup, once (the first also rides in conversation_created).
        wait_until(lambda: len(emulator.state()["ITILFollowup"]) == 3, 90, what="three followups")
        wait_until(lambda: emulator.state()["Ticket"][0]["status"] == 5, 60, what="ticket solved")

        deliveries = chatwoot.deliveries()
        assert [d["event"] for d in deliveries] == [
            "contact_created",
            "conversation_created",
            "message_created",
            "conversation_typing_on",
            "message_created",
            "message_created",
            "conversation_status_changed",
            "conversation_updated",
        ]
        assert all(d["attempts"] == [200] for d in deliveries), deliveries
        assert ingress_metric(ingress, 'cwglpi_ingress_ignored_events_total{event="conversation_typing_on"}') == 1

        state = emulator.state()
        (user,) = [u for u in state["User"] if u["id"] >= FIRST_USER_ID]
        assert (user["name"], user["firstname"], user["realname"], user["phone"]) == (
            "marta.silva@example.org",
            "Marta",
            "Silva",
            "+351912000111",
        )
        (ticket,) = state["Ticket"]
        assert html.unescape(ticket["name"]) == f"Chat #{conversation}: Marta Silva (web chat)"
        assert f"[cw:7/{conversation}]" in html.unescape(ticket["content"])
        assert "From: Marta Silva · marta.silva@example.org · +351912000111" in html.unescape(ticket["content"])
        followups = [html.unescape(f["content"]) for f in sorted(state["ITILFollowup"], key=lambda f: f["date"])]
        assert "The VPN drops every few minutes" in followups[0]
        assert "Since this morning" in followups[1]
        assert "Restart it" in followups[2] and "Ana Agent" in followups[2]

        # Chatwoot retries a delivery it thinks failed, with the same delivery id: nothing new reaches GLPI.
        writes = glpi_writes(emulator)
        body = orjson.dumps(
            {
                "event": "message_created",
                "id": 999_001,
                "content": "a retried delivery",
                "message_type": "incoming",
                "created_at": "2026-12-02T10:00:00Z",
                "account": {"id": 7},
                "sender": {"id": opened["contact_id"], "name": "Marta Silva", "type": "contact"},
                "conversation": {"id": conversation},
            }
        )
        delivery = str(uuid.uuid4())
        assert ingress.post("/webhooks/chatwoot/7", body, signed(body, delivery))[0] == 200
        wait_until(lambda: len(emulator.state()["ITILFollowup"]) == 4, 60, what="the new message")
        writes = glpi_writes(emulator)
        for _ in range(2):
            assert ingress.post("/webhooks/chatwoot/7", body, signed(body, delivery))[0] == 200
        wait_until(
            lambda: sum("redelivery of " in str(o.get("msg")) for o in worker.outcomes()) == 2,
            60,
            what="two redeliveries recognised",
        )
        assert glpi_writes(emulator) == writes
        assert len(emulator.state()["ITILFollowup"]) == 4
    finally:
        ingress.stop()


def test_bad_deliveries_are_refused_with_their_status_and_nothing_is_produced(
    sync_env: SyncEnv, tmp_path: Path
) -> None:
    ingress = ingress_for(sync_env, tmp_path, GLPI_SYNC_INGRESS_MAX_BODY_BYTES="4096")
    ingress.start()
    try:
        wait_until(lambda: ingress.get("/health/ready")[0] == 200, 60, what="ingress ready")
        body = orjson.dumps({"event": "contact_created", "id": 5, "account": {"id": 7}, "name": "A"})
        good = signed(body)
        cases: list[tuple[str, bytes, dict[str, str], int]] = [
            ("/webhooks/chatwoot/7", body, {}, 401),  # unsigned
            ("/webhooks/chatwoot/7", body, {**good, "X-Chatwoot-Signature": "sha256=" + "0" * 64}, 401),
            ("/webhooks/chatwoot/7", body + b" ", good, 401),  # one byte changed after signing
            ("/webhooks/chatwoot/7", body, signed(body, at=time.time() - 600), 401),  # a replayed capture
            ("/webhooks/chatwoot/9", body, good, 404),  # no secret for hook 9
            ("/webhooks/chatwoot/abc", body, good, 404),
            ("/webhooks/chatwoot/8/" + "x" * 40, body, {}, 404),  # wrong URL token
            ("/webhooks/chatwoot/8", body, {}, 404),  # URL-token hook without its token
            ("/webhooks/chatwoot/7", b"x" * 5000, signed(b"x" * 5000), 413),
            ("/webhooks/chatwoot/7", b"not json", signed(b"not json"), 400),
            ("/webhooks/chatwoot/7", b"[1, 2]", signed(b"[1, 2]"), 400),
            ("/webhooks/chatwoot/7", b'{"id": 1}', signed(b'{"id": 1}'), 400),
        ]
        for path, data, headers, expected in cases:
            status, _, answer = ingress.post(path, data, headers)
            assert status == expected, (path, data[:40], headers, answer)
        accepted = [
            ingress.post("/webhooks/chatwoot/7", body, good),
            ingress.post(f"/webhooks/chatwoot/8/{URL_TOKEN}", body, {"Content-Type": "application/json"}),
        ]
        assert [status for status, _, _ in accepted] == [200, 200]
        records = sync_env.read_topic(sync_env.topic, 2, timeout=20)
        assert len(records) == 2  # only the two accepted ones
        assert ingress_metric(ingress, 'cwglpi_ingress_signature_failures_total{reason="bad_signature"}') == 2
        assert ingress_metric(ingress, 'cwglpi_ingress_signature_failures_total{reason="stale_timestamp"}') == 1
        assert ingress_metric(ingress, 'cwglpi_ingress_requests_total{status="401"}') == 4
        signed_record, unsigned_record = sorted(records, key=lambda r: r.key)
        assert signed_record.key == b"7"
        envelope = orjson.loads(signed_record.value)
        assert envelope["event_id"] == good["X-Chatwoot-Delivery"]
        assert (envelope["event"], envelope["hook_id"], envelope["account_id"]) == ("contact_created", 7, 7)
        assert envelope["payload"] == orjson.loads(body)
        assert dict(signed_record.headers)["chatwoot-delivery"] == good["X-Chatwoot-Delivery"].encode()
        assert orjson.loads(unsigned_record.value)["hook_id"] == 8
        assert SECRET not in ingress.log_text() and URL_TOKEN not in ingress.log_text()
        doctor = subprocess.run(
            [WORKER_BIN, "doctor", "--ingress", ingress.base, "--json"],
            env={**os.environ, **sync_env.env},
            capture_output=True,
            text=True,
            check=False,
        )
        assert doctor.stdout, doctor.stderr
        checks = {c["check"]: c for c in orjson.loads(doctor.stdout)["checks"]}
        assert checks[f"ingress {ingress.base}"]["level"] == "ok"
        refused = checks[f"ingress {ingress.base} deliveries"]
        assert refused["level"] == "warn" and "bad_signature ×2" in refused["detail"]
    finally:
        assert ingress.stop() == 0  # SIGTERM: a clean exit


def test_broker_down_answers_503_and_chatwoots_retry_delivers(
    kafka: KafkaBroker, sync_env: SyncEnv, chatwoot: ChatwootEmulatorProcess, tmp_path: Path
) -> None:
    ingress = ingress_for(sync_env, tmp_path, GLPI_SYNC_INGRESS_PRODUCE_TIMEOUT="2")
    ingress.start()
    try:
        chatwoot_sends_to(chatwoot, ingress)
        kafka.stop()
        try:
            chatwoot.call("POST", "conversation", {"contact": {"email": "x@example.org"}, "content": "while down"})
            wait_until(lambda: 503 in chatwoot.deliveries()[0]["attempts"], 30, what="a 503")
            wait_until(lambda: ingress.get("/health/ready")[0] == 503, 30, what="not ready")
            status, _, _ = ingress.post("/webhooks/chatwoot/7", b"{}", signed(b"{}"))
            assert status == 400  # a bad body is refused before Kafka matters
        finally:
            kafka.relaunch()
        wait_until(lambda: all(d["delivered"] for d in chatwoot.deliveries()), 90, what="deliveries after retries")
        deliveries = chatwoot.deliveries()
        assert deliveries[0]["attempts"][0] == 503 and deliveries[0]["attempts"][-1] == 200
        records = sync_env.read_topic(sync_env.topic, 3, timeout=30)
        events = [orjson.loads(r.value) for r in records]
        ids = [e["event_id"] for e in events]
        assert sorted(set(ids)) == sorted(d["delivery_id"] for d in deliveries)  # each delivery, under its id
        assert ingress_metric(ingress, 'cwglpi_ingress_requests_total{status="503"}') >= 1
    finally:
        ingress.stop()


def run_backfill(env: SyncEnv, chatwoot: ChatwootEmulatorProcess, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            *(WORKER_BIN, "backfill", "--hook-id", "7", "--account-id", "7", "--chatwoot-url", chatwoot.base),
            *("--api-token-env", "CHATWOOT_TOKEN", "--status", "all", "--rate", "0", "--json", *extra),
        ],
        env={**os.environ, **env.env, "CHATWOOT_TOKEN": chatwoot.token},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished(process: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    return dict(orjson.loads(out))


def test_backfill_of_500_conversations_run_twice_and_interrupted_gives_each_once_in_order(
    sync_env: SyncEnv, emulator: EmulatorProcess, chatwoot: ChatwootEmulatorProcess, tmp_path: Path
) -> None:
    worker = sync_env.worker()
    worker.start()
    sync_env.publish([hook_envelope(emulator.api_url)])
    seeded = chatwoot.call("POST", "seed", {"conversations": 500, "messages": 3, "statuses": ["open", "resolved"]})
    assert len(seeded["conversations"]) == 500
    checkpoint = tmp_path / "checkpoint.json"

    # Interrupted: killed once part of the conversations are checkpointed.
    first = run_backfill(sync_env, chatwoot, "--checkpoint", str(checkpoint))
    wait_until(
        lambda: checkpoint.exists() and len(orjson.loads(checkpoint.read_bytes())["done"]) >= 50,
        120,
        what="a partial checkpoint",
    )
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    done_before = len(orjson.loads(checkpoint.read_bytes())["done"])
    assert done_before < 500

    resumed = finished(run_backfill(sync_env, chatwoot, "--checkpoint", str(checkpoint)))
    assert resumed["skipped"] >= done_before and resumed["errors"] == 0
    assert resumed["skipped"] + resumed["conversations"] == 500

    # Run again from scratch: everything is published once more, and the worker writes nothing new.
    again = finished(run_backfill(sync_env, chatwoot, "--checkpoint", str(checkpoint), "--fresh"))
    assert (again["conversations"], again["messages"], again["errors"]) == (500, 1500, 0)

    wait_until(lambda: len(emulator.state()["ITILFollowup"]) >= 1500, 300, what="1500 followups")
    wait_until(
        lambda: sum(1 for o in worker.outcomes() if o.get("event") == "message_created") >= 1500 * 2,
        300,
        what="every message of the second run handled",
    )
    state = emulator.state()
    tickets = state["Ticket"]
    assert len(tickets) == 500
    assert len({t["name"] for t in tickets}) == 500
    by_ticket: dict[int, list[str]] = {}
    for followup in sorted(state["ITILFollowup"], key=lambda f: f["id"]):
        by_ticket.setdefault(followup["items_id"], []).append(html.unescape(followup["content"]))
    assert len(state["ITILFollowup"]) == 1500
    for ticket in tickets:
        number = int(html.unescape(ticket["name"]).split("#")[1].split(":")[0])
        texts = by_ticket[ticket["id"]]
        assert [f"conversation {number} message {i}" in text for i, text in enumerate(texts)] == [True] * 3
    solved = [t for t in tickets if t["status"] == 5]
    assert len(solved) == 250  # every other one was resolved in Chatwoot
    assert len([u for u in state["User"] if u["id"] >= FIRST_USER_ID]) == 500
