"""Write-back end to end: a hook with a Chatwoot connection (two-way off) shows agents the GLPI ticket on the
conversation and the GLPI requester on the contact, kept current as technicians work the ticket in GLPI, without
touching the agents' own attributes, and Chatwoot's webhooks about our writes change nothing in GLPI.

Chatwoot emulator → signed webhooks → ingress → Kafka → worker → GLPI emulator; the worker's poll of GLPI →
``glpi_ticket_changed`` on the control topic → worker → Chatwoot's custom attribute endpoints.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SyncEnv
from tests.e2e.test_stock_chatwoot import chatwoot_sends_to, ingress_for
from tests.e2e.test_two_way import Technician
from tests.harness import WORKER_BIN, ChatwootEmulatorProcess, EmulatorProcess, wait_until

pytestmark = pytest.mark.broker


def _shown(chatwoot: ChatwootEmulatorProcess, conversation: int) -> dict[str, Any]:
    return dict(chatwoot.call("GET", f"conversation/{conversation}"))


def _glpi_writes(emulator: EmulatorProcess) -> int:
    return sum(
        r["method"] != "GET" and not r["path"].endswith(("initSession", "killSession")) for r in emulator.requests()
    )


def _hook_set(
    sync_env: SyncEnv, emulator: EmulatorProcess, chatwoot: ChatwootEmulatorProcess, worker_url: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *(WORKER_BIN, "hook", "set", "--hook-id", "7", "--account-id", "7", "--api-url", emulator.api_url),
            *("--allow-http", "--app-token", "emulator-app-token", "--user-token", "emulator-user-token"),
            *("--chatwoot-url", chatwoot.base, "--chatwoot-token-env", "GLPI_SYNC_HOOK_SECRET_CHATWOOT_7"),
            *("--wait", "--timeout", "30"),
        ],
        env={
            **os.environ,
            **sync_env.env,
            "GLPI_SYNC_HOOK_SECRET_CHATWOOT_7": chatwoot.token,
            "GLPI_SYNC_WORKER_URL": worker_url,
        },
        capture_output=True,
        text=True,
        check=False,
    )


def _outcomes(sync_env: SyncEnv, event: str) -> list[dict[str, Any]]:
    return [o for w in sync_env.workers for o in w.outcomes() if o.get("event") == event]


def test_agents_see_the_ticket_and_requester_kept_current_and_nothing_loops(
    sync_env: SyncEnv, emulator: EmulatorProcess, chatwoot: ChatwootEmulatorProcess, tmp_path: Path
) -> None:
    worker = sync_env.worker()
    # No timed poll: a new ticket asks for its own, and GLPI's changes are announced as GLPI 11's webhooks do.
    worker.env.update(GLPI_SYNC_TWO_WAY_POLL_SECONDS="3600", GLPI_SYNC_HOOK_SECRET_CHATWOOT_7=chatwoot.token)
    worker.start()
    # As an operator turns it on: hook set checks the token and defines the attributes (once, however often run).
    configured = _hook_set(sync_env, emulator, chatwoot, f"http://127.0.0.1:{worker.http_port}")
    assert configured.returncode == 0, configured.stderr
    assert "Chatwoot attributes defined: glpi_ticket, glpi_ticket_url" in configured.stdout
    again = _hook_set(sync_env, emulator, chatwoot, f"http://127.0.0.1:{worker.http_port}")
    assert again.returncode == 0, again.stderr
    assert "Chatwoot attributes defined" not in again.stdout
    assert chatwoot.call("GET", "requests").get("define") == 6
    ingress = ingress_for(sync_env, tmp_path)
    ingress.start()
    try:
        chatwoot_sends_to(chatwoot, ingress)
        opened = chatwoot.call(
            "POST", "conversation", {"contact": {"name": "Marta", "email": "marta@example.org"}, "content": "VPN down"}
        )
        conversation = opened["conversation_id"]
        # An agent's own attribute, set in the side panel: never ours to touch.
        chatwoot.call(
            "POST",
            "conversation_attributes",
            {"conversation_id": conversation, "custom_attributes": {"order_id": "A-17"}},
        )
        wait_until(lambda: len(emulator.state()["Ticket"]) == 1, 60, what="the ticket")
        ticket = emulator.state()["Ticket"][0]["id"]
        root = emulator.api_url.removesuffix("/apirest.php")
        wait_until(
            lambda: _shown(chatwoot, conversation)["custom_attributes"].get("glpi_ticket") == ticket,
            60,
            what="the ticket on the conversation",
        )
        shown = _shown(chatwoot, conversation)
        assert shown["custom_attributes"] == {
            "order_id": "A-17",
            "glpi_ticket": ticket,
            "glpi_ticket_url": f"{root}/front/ticket.form.php?id={ticket}",
            "glpi_ticket_status": "New",
            "glpi_technician": "",
        }
        user = max(u["id"] for u in emulator.state()["User"])
        assert shown["contact_custom_attributes"] == {
            "glpi_requester": f"Marta (User {user})",
            "glpi_requester_url": f"{root}/front/user.form.php?id={user}",
        }

        # Chatwoot's webhooks about our two writes come back through the ingress and change nothing in GLPI.
        writes = _glpi_writes(emulator)
        wait_until(
            lambda: _outcomes(sync_env, "conversation_updated") and _outcomes(sync_env, "contact_updated"),
            60,
            what="the echoes",
        )
        time.sleep(2)
        assert _glpi_writes(emulator) == writes

        # A technician takes the ticket, then solves it: the conversation follows within a poll or two.
        technician = Technician(emulator)
        technician.assign(ticket)
        sync_env.command("hook_poll", 7)
        wait_until(
            lambda: _shown(chatwoot, conversation)["custom_attributes"].get("glpi_technician") == "Ana Tech & Co",
            60,
            what="the technician",
        )
        assert _shown(chatwoot, conversation)["custom_attributes"]["glpi_ticket_status"] == "Processing (assigned)"
        technician.set_status(ticket, 5)
        sync_env.command("hook_poll", 7)
        wait_until(
            lambda: _shown(chatwoot, conversation)["custom_attributes"].get("glpi_ticket_status") == "Solved",
            60,
            what="the status",
        )
        assert _shown(chatwoot, conversation)["custom_attributes"]["order_id"] == "A-17"

        # Settled: further polls write nothing (no loop between our writes and their webhooks).
        wait_until(lambda: len(_outcomes(sync_env, "glpi_ticket_changed")) >= 3, 60, what="three write-backs")
        requests = chatwoot.call("GET", "requests")
        polls = len(_outcomes(sync_env, "hook_poll"))
        for _ in range(3):
            sync_env.command("hook_poll", 7)
        wait_until(lambda: len(_outcomes(sync_env, "hook_poll")) >= polls + 3, 60, what="three more polls")
        after = chatwoot.call("GET", "requests")
        assert after.get("conversation_attributes") == requests.get("conversation_attributes")
        assert after.get("update_contact") == requests.get("update_contact") == 1
        assert _glpi_writes(emulator) == writes + 3  # the technician (a User), their assignment and status: no more
        assert not [o for o in _outcomes(sync_env, "glpi_ticket_changed") if o["outcome"] == "dead_lettered"]
        assert chatwoot.token not in worker.log_path.read_text(errors="replace")
    finally:
        ingress.stop()
