"""The first README command (`make run`) runs `glpi-sync demo`; its non-interactive form must keep working."""

from __future__ import annotations

import subprocess

from tests.harness import ROOT, WORKER_BIN


def test_demo_once_on_the_embedded_broker_creates_ticket_and_followups() -> None:
    proc = subprocess.run(
        [WORKER_BIN, "demo", "--once"], cwd=ROOT, capture_output=True, text=True, timeout=240, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "embedded Kafka-protocol broker (Tansu)" in out
    assert "posted 7 signed Chatwoot webhooks to the ingress" in out
    assert "Ticket #100: Chat #57: Marta Silva (web chat)  (status 5)" in out
    assert "Followup #1: Marta Silva · 2025-11-03 14:01:42 Hello, the VPN client keeps disconnecting" in out
    assert "Followup #2: Marta Silva" in out
    assert "Followup #3 [private]: Leo Costa (agent)" in out
    assert "User #10: Marta Silva <marta.silva@example.org>" in out
