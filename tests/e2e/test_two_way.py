"""Two-way sync end to end, GLPI 10 polling: a technician's followups and solution in the GLPI emulator reach the
Chatwoot emulator's conversation exactly once, and the Chatwoot webhooks of those messages create nothing in GLPI.

Chatwoot emulator → signed webhooks → ingress → Kafka → worker → GLPI emulator, and back: worker polls GLPI →
``glpi_*`` events on the control topic → worker → Chatwoot API.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.conftest import GLPI_VERSIONS, SyncEnv, hook_envelope
from tests.e2e.test_stock_chatwoot import chatwoot_sends_to, ingress_for
from tests.harness import (
    WORKER_BIN,
    ChatwootEmulatorProcess,
    EmulatorProcess,
    IngressProcess,
    WorkerProcess,
    wait_until,
)

pytestmark = pytest.mark.broker


class Technician:
    """A GLPI user working tickets through the REST API (what a technician does in GLPI's UI)."""

    def __init__(self, emulator: EmulatorProcess) -> None:
        self.api = emulator.api_url
        self.headers = {"App-Token": "emulator-app-token", "Authorization": "user_token emulator-user-token"}
        technician = {"name": "ana.tech", "firstname": "Ana", "realname": "Tech & Co"}
        self.user_id = self._call("POST", "User", {"input": technician})["id"]

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        async def go() -> Any:
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{self.api}/initSession", headers=self.headers) as resp:
                    token = (await resp.json())["session_token"]
                headers = {"App-Token": self.headers["App-Token"], "Session-Token": token}
                async with http.request(method, f"{self.api}/{path}", json=body, headers=headers) as resp:
                    return await resp.json()

        return asyncio.run(go())

    def followup(self, ticket: int, text: str, private: bool = False) -> int:
        body = {"input": {"itemtype": "Ticket", "items_id": ticket, "content": f"<p>{text}</p>"}}
        body["input"].update(users_id=self.user_id, is_private=int(private))
        return int(self._call("POST", "ITILFollowup", body)["id"])

    def attach(self, followup: int, filename: str) -> int:
        document = self._call("POST", "Document", {"input": {"name": filename, "filename": filename}})["id"]
        link = {"documents_id": document, "itemtype": "ITILFollowup", "items_id": followup}
        self._call("POST", "Document_Item", {"input": link})
        return int(document)

    def assign(self, ticket: int) -> None:
        """Take the ticket (a ``Ticket_User`` row of type 2: assigned)."""
        self._call("POST", "Ticket_User", {"input": {"tickets_id": ticket, "users_id": self.user_id, "type": 2}})

    def set_status(self, ticket: int, status: int) -> None:
        self._call("PUT", f"Ticket/{ticket}", {"input": {"status": status}})

    def solve(self, ticket: int, text: str) -> int:
        body = {"input": {"itemtype": "Ticket", "items_id": ticket, "content": f"<p>{text}</p>"}}
        body["input"]["users_id"] = self.user_id
        return int(self._call("POST", "ITILSolution", body)["id"])


def posted(chatwoot: ChatwootEmulatorProcess, conversation: int) -> list[dict[str, Any]]:
    """The messages the two-way sync posted in the conversation (they carry our marker)."""
    shown = chatwoot.call("GET", f"conversation/{conversation}")
    return [m for m in shown["messages"] if "cwglpi" in (m.get("content_attributes") or {})]


def outcome_with(sync_env: SyncEnv, text: str) -> int:
    return sum(text in str(o.get("msg")) for w in sync_env.workers for o in w.outcomes())


@pytest.mark.parametrize("emulator", GLPI_VERSIONS, indirect=True)
def test_technicians_answers_reach_the_customer_once_and_never_echo_back(
    sync_env: SyncEnv, emulator: EmulatorProcess, chatwoot: ChatwootEmulatorProcess, tmp_path: Path
) -> None:
    worker = sync_env.worker()
    worker.env.update(
        GLPI_SYNC_TWO_WAY_POLL_SECONDS="1",
        GLPI_SYNC_CHATWOOT_TIMEOUT="3",
        GLPI_SYNC_HOOK_SECRET_CHATWOOT_7=chatwoot.token,
    )
    worker.start()
    two_way = {
        "two_way": "true",
        "chatwoot_url": chatwoot.base,
        "chatwoot_token": {"env": "GLPI_SYNC_HOOK_SECRET_CHATWOOT_7"},
        "two_way_private_followups": "skip",
    }
    sync_env.publish([hook_envelope(emulator.api_url, **two_way), hook_envelope(emulator.api_url, hook_id=8)])
    ingress = ingress_for(sync_env, tmp_path)
    ingress.start()
    try:
        chatwoot_sends_to(chatwoot, ingress)
        opened = chatwoot.call(
            "POST", "conversation", {"contact": {"name": "Marta", "email": "marta@example.org"}, "content": "VPN"}
        )
        conversation = opened["conversation_id"]
        wait_until(lambda: len(emulator.state()["Ticket"]) == 1, 60, what="the ticket")
        ticket = emulator.state()["Ticket"][0]["id"]
        wait_until(lambda: outcome_with(sync_env, "first poll, cursors set") >= 1, 60, what="the first poll")
        technician = Technician(emulator)

        # A public followup: one outgoing message, signed with the technician's name.
        # The technician's rich text: "R&D" and a literal "&lt;Enter&gt;" they typed (HTML-escaped once more).
        public = technician.followup(ticket, "Please reinstall the VPN client (R&amp;D: press &amp;lt;Enter&amp;gt;)")
        wait_until(lambda: len(posted(chatwoot, conversation)) == 1, 60, what="the answer in Chatwoot")
        (message,) = posted(chatwoot, conversation)
        assert message["message_type"] == "outgoing" and not message["private"]
        assert (
            message["content"] == "Please reinstall the VPN client (R&D: press &lt;Enter&gt;)\n\n— Ana Tech & Co (GLPI)"
        )
        assert message["content_attributes"]["cwglpi"] == f"ITILFollowup:{public}"
        # Its message_created webhook comes back through the ingress and creates nothing in GLPI.
        wait_until(lambda: outcome_with(sync_env, "posted by the two-way sync") >= 1, 60, what="the echo")
        assert len(emulator.state()["ITILFollowup"]) == 2  # the customer's first message and the technician's

        # A private followup: skipped by this hook's setting.
        technician.followup(ticket, "internal: check the gateway", private=True)
        wait_until(lambda: outcome_with(sync_env, "private followup") >= 1, 60, what="the private one skipped")

        # Chatwoot's failures are Chatwoot's side: GLPI 10's run covers them, GLPI 11's keeps to what GLPI answers.
        faults = not emulator.glpi11
        if faults:
            # Chatwoot times out after the message landed: the retry finds it, nothing is posted twice.
            chatwoot.call("POST", "post_faults", {"hold_after": 5})  # past GLPI_SYNC_CHATWOOT_TIMEOUT
            technician.followup(ticket, "Did that help?")
            wait_until(lambda: len(posted(chatwoot, conversation)) >= 2, 60, what="the second answer")
            wait_until(
                lambda: outcome_with(sync_env, "Did that help") + outcome_with(sync_env, "posted message") >= 2, 90
            )
            time.sleep(3)
            assert [m["content"].split("\n")[0] for m in posted(chatwoot, conversation)] == [
                "Please reinstall the VPN client (R&D: press &lt;Enter&gt;)",
                "Did that help?",
            ]

            # kill -9 between the intent and the post (the post lands after the worker died): still once.
            posts_before = chatwoot.call("GET", "requests").get("post_message", 0)
            chatwoot.call("POST", "post_faults", {"hold_before": 6})
            technician.followup(ticket, "Rebooted the gateway")
            wait_until(
                lambda: chatwoot.call("GET", "requests").get("post_message", 0) > posts_before, 60, what="the held post"
            )
            worker.kill()
            time.sleep(7)  # the held request completes: the message is in Chatwoot, the worker never saw the answer
            worker.start()
            wait_until(lambda: len(posted(chatwoot, conversation)) == 3, 60, what="the third answer")
            wait_until(lambda: outcome_with(sync_env, "ITILFollowup:") >= 3, 90, what="the replayed event adopted it")
            assert len(posted(chatwoot, conversation)) == 3

        # A solution: posted, and the conversation resolved; Chatwoot's status webhook changes nothing in GLPI.
        technician.solve(ticket, "Fixed: a new VPN profile was pushed")
        wait_until(
            lambda: chatwoot.call("GET", f"conversation/{conversation}")["status"] == "resolved",
            60,
            what="the conversation resolved",
        )
        answers = 4 if faults else 2
        wait_until(lambda: len(posted(chatwoot, conversation)) == answers, 30, what="the solution's message")
        assert posted(chatwoot, conversation)[-1]["content"].startswith("Fixed: a new VPN profile was pushed")
        wait_until(lambda: outcome_with(sync_env, "ticket status already matches resolved") >= 1, 60)
        puts = [r for r in emulator.requests() if r["method"] == "PUT" and r["path"].startswith("Ticket/")]
        assert puts == []  # GLPI solved it; nothing was written back
        # The customer's first message and the technician's followups (four, or two without the fault cases).
        assert len(emulator.state()["ITILFollowup"]) == (5 if faults else 3)

        # Both directions in one trace.
        trace = subprocess.run(
            [WORKER_BIN, "trace", "conversation", str(conversation), "--hook-id", "7", "--json"],
            env={**os.environ, **sync_env.env, "GLPI_SYNC_WORKER_URL": f"http://127.0.0.1:{worker.http_port}"},
            capture_output=True,
            text=True,
            check=False,
        )
        assert trace.returncode == 0, trace.stderr
        assert "glpi_followup_added" in trace.stdout and "message_created" in trace.stdout

        # Hook 8 (two-way off) was never polled.
        assert outcome_with(sync_env, "hook_poll") >= 1
        polls = [o for o in worker.outcomes() if o.get("event") == "hook_poll"]
        assert {o["hook_id"] for o in polls} == {7}
    finally:
        ingress.stop()


def test_hook_set_checks_the_chatwoot_token_before_turning_two_way_on(
    sync_env: SyncEnv, emulator: EmulatorProcess, chatwoot: ChatwootEmulatorProcess
) -> None:
    def hook_set(token: str, account: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                *(WORKER_BIN, "hook", "set", "--hook-id", "7", "--account-id", account, "--api-url", emulator.api_url),
                *("--allow-http", "--app-token", "emulator-app-token", "--user-token", "emulator-user-token"),
                *("--two-way", "--chatwoot-url", chatwoot.base, "--chatwoot-token-env", "GLPI_SYNC_HOOK_SECRET_CW"),
                "--no-wait",
            ],
            env={**os.environ, **sync_env.env, "GLPI_SYNC_HOOK_SECRET_CW": token},
            capture_output=True,
            text=True,
            check=False,
        )

    refused = hook_set("not-the-token", "7")
    assert refused.returncode == 4
    assert "refused the access token" in refused.stderr and "not-the-token" not in refused.stderr
    outsider = hook_set(chatwoot.token, "9")
    assert outsider.returncode == 4 and "not a member of account 9" in outsider.stderr


def start_two_way(
    sync_env: SyncEnv,
    emulator: EmulatorProcess,
    chatwoot: ChatwootEmulatorProcess,
    tmp_path: Path,
    poll_seconds: str = "1",
    **ingress_env: str,
) -> tuple[WorkerProcess, IngressProcess]:
    """A worker and an ingress for hook 7 with two-way on (polled every ``poll_seconds``), Chatwoot's webhooks
    going to the ingress."""
    worker = sync_env.worker()
    worker.env.update(GLPI_SYNC_TWO_WAY_POLL_SECONDS=poll_seconds, GLPI_SYNC_HOOK_SECRET_CHATWOOT_7=chatwoot.token)
    worker.start()
    two_way = {
        "two_way": "true",
        "chatwoot_url": chatwoot.base,
        "chatwoot_token": {"env": "GLPI_SYNC_HOOK_SECRET_CHATWOOT_7"},
    }
    sync_env.publish([hook_envelope(emulator.api_url, **two_way)])
    ingress = ingress_for(sync_env, tmp_path, **ingress_env)
    ingress.start()
    chatwoot_sends_to(chatwoot, ingress)
    return worker, ingress


GLPI_SECRET = "glpi-webhook-secret-3b9e"


def glpi_signed(body: bytes, at: float | None = None, secret: str = GLPI_SECRET) -> dict[str, str]:
    """What GLPI 11 sends: hex HMAC-SHA256 of the body followed by the timestamp (src/Webhook.php)."""
    timestamp = str(int(time.time() if at is None else at))
    digest = hmac.new(secret.encode(), body + timestamp.encode(), hashlib.sha256).hexdigest()
    return {"Content-Type": "application/json", "X-GLPI-signature": digest, "X-GLPI-timestamp": timestamp}


@pytest.mark.parametrize("emulator", ["11"], indirect=True)
def test_glpi_11_webhooks_make_the_answer_go_back_at_once(
    sync_env: SyncEnv, emulator: EmulatorProcess, chatwoot: ChatwootEmulatorProcess, tmp_path: Path
) -> None:
    # No timed poll in this test: only the hook's configuration and GLPI's webhooks make the worker look.
    worker, ingress = start_two_way(
        sync_env,
        emulator,
        chatwoot,
        tmp_path,
        "3600",
        GLPI_SYNC_GLPI_WEBHOOK_SECRET_7=GLPI_SECRET,
        GLPI_SYNC_GLPI_WEBHOOK_MAX_AGE="600",
    )
    try:
        conversation = chatwoot.call("POST", "conversation", {"contact": {"email": "b@example.org"}, "content": "Hi"})[
            "conversation_id"
        ]
        wait_until(lambda: len(emulator.state()["Ticket"]) == 1, 60, what="the ticket")
        ticket = emulator.state()["Ticket"][0]["id"]
        wait_until(lambda: outcome_with(sync_env, "first poll, cursors set") >= 1, 60, what="the configured poll")

        technician = Technician(emulator)
        followup = technician.followup(ticket, "On it")
        document = technician.attach(followup, "vpn-profile.ovpn")
        body = orjson.dumps({"event": "new", "item": {"id": followup, "itemtype": "Ticket", "items_id": ticket}})
        assert ingress.post("/webhooks/glpi/7", body, glpi_signed(body))[0] == 200
        wait_until(lambda: len(posted(chatwoot, conversation)) == 1, 60, what="the answer, without a timed poll")
        (answer,) = posted(chatwoot, conversation)
        link = f"{emulator.api_url.removesuffix('/apirest.php')}/front/document.send.php?docid={document}"
        note = " (not attached: the GLPI document holds no file)"
        assert answer["content"] == f"On it\n\nAttachments:\n- vpn-profile.ovpn: {link}{note}\n\n— Ana Tech & Co (GLPI)"

        # A producer forging a GLPI change on the producers' topic cannot message the customer.
        forged = {
            "event": "glpi_followup_added",
            "hook_id": 7,
            "account_id": 7,
            "payload": {
                "itemtype": "ITILFollowup",
                "item_id": 9999,
                "ticket_id": ticket,
                "conversation_id": conversation,
                "content": "Please send your password",
            },
        }
        sync_env.publish([forged])
        wait_until(lambda: outcome_with(sync_env, "only accepted on the control topic") >= 1, 60, what="refusal")
        assert len(posted(chatwoot, conversation)) == 1

        # Refused: a wrong secret, a stamp older than the allowed age, an unknown hook.
        assert ingress.post("/webhooks/glpi/7", body, glpi_signed(body, secret="wrong"))[0] == 401
        assert ingress.post("/webhooks/glpi/7", body, glpi_signed(body, at=time.time() - 3600))[0] == 401
        assert ingress.post("/webhooks/glpi/9", body, glpi_signed(body))[0] == 404
        polls = [o for o in worker.outcomes() if o.get("event") == "hook_poll"]
        assert len(polls) == 2  # the one the configuration queued, and the accepted webhook's

        # The hook's checklist (doctor, hook test) covers the Chatwoot side of a two-way hook.
        status, body = worker.http_get("/state/hook/7/test")
        assert status == 200, body
        checks = {c["check"]: c for c in orjson.loads(body)["checks"]}
        for name in ("Chatwoot reachable, token valid", "Chatwoot account", "Chatwoot inboxes"):
            assert checks[name]["ok"], checks[name]
        assert chatwoot.token not in body.decode()
    finally:
        ingress.stop()
