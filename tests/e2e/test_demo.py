"""The first README command (`make run`) runs `glpi-sync demo`: it must show the sync, let the command line in, and
leave nothing behind when stopped (Ctrl-C or SIGTERM)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import orjson

from tests.harness import ROOT, WORKER_BIN


def _read_until(proc: subprocess.Popen[str], marker: str, timeout: float) -> str:
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        if marker in line:
            return "".join(seen)
    raise AssertionError(f"{marker!r} never printed; output so far:\n{''.join(seen)}")


def _cli_env(path: Path) -> dict[str, str]:
    assert path.stat().st_mode & 0o077 == 0  # it holds the admin token: the owner's only
    found = dict(re.findall(r"^export (\w+)=(\S+)$", path.read_text(), re.MULTILINE))
    return {**os.environ, **found}


def test_the_demo_syncs_lets_the_command_line_in_and_stops_clean_on_sigterm() -> None:
    proc = subprocess.Popen([WORKER_BIN, "demo"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out = _read_until(proc, "glpi-sync trace conversation 57", timeout=240)
        assert "embedded Kafka-protocol broker (Tansu)" in out
        assert "posted 7 signed Chatwoot webhooks to the ingress" in out
        assert "Ticket #100: Chat #57: Marta Silva (web chat)  (status 5)" in out
        assert "Followup #1: Marta Silva · 2025-11-03 14:01:42 Hello, the VPN client keeps disconnecting" in out
        assert "Followup #2: Marta Silva" in out
        assert "Followup #3 [private]: Leo Costa (agent)" in out
        assert "User #10: Marta Silva <marta.silva@example.org>" in out
        assert "✔ offsets committed: consumer lag 0" in out  # the work done is committed, not only done
        env_file = Path(re.search(r"source (\S+demo\.env)", out).group(1))  # type: ignore[union-attr]
        workdir = env_file.parent
        env = _cli_env(env_file)

        doctor = subprocess.run(
            [WORKER_BIN, "doctor", "--json"], env=env, capture_output=True, text=True, timeout=120, check=False
        )
        checks = {c["check"]: c for c in orjson.loads(doctor.stdout)["checks"]}
        assert checks["consumer lag"]["detail"] == "0 message(s) behind", checks["consumer lag"]
        assert [c["detail"] for name, c in checks.items() if name.startswith("worker ")] == ["alive, ready"]
        assert checks[f"ingress {env['GLPI_SYNC_INGRESS_URL']}"]["level"] == "ok"
        assert checks["hook 7 user token valid"]["level"] == "ok"
        assert doctor.returncode == 0, doctor.stdout
        traced = subprocess.run(
            [WORKER_BIN, "trace", "conversation", "57", "--hook-id", "7"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert traced.returncode == 0 and "conversation_created" in traced.stdout, traced.stdout + traced.stderr
        assert env["GLPI_SYNC_ADMIN_TOKEN"] not in (workdir / "worker.log").read_text()

        ports = [int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", out)]
        proc.send_signal(signal.SIGTERM)
        tail = proc.communicate(timeout=90)[0]
        assert proc.returncode == 0, tail
        assert "temporary files removed" in tail
        assert not workdir.exists()
        for port in ports:  # broker, GLPI emulator, worker and ingress are gone
            with socket.socket() as sock:
                assert sock.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open"
    finally:
        if proc.poll() is None:  # a failed assertion: the demo's own clean-up stops what it started
            proc.send_signal(signal.SIGTERM)
            try:
                proc.communicate(timeout=90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
