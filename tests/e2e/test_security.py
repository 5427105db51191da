"""Let no one in: hostile hook configurations, the admin token, Kafka over SASL_SSL, GLPI over TLS, tokens at rest.

Real Kafka (its SASL_SSL listener with SCRAM users made by the harness), real workers, GLPI emulators (one of them
playing a server of an attacker's choosing, which must never be called).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.fernet import Fernet

from tests.certs import make_certificates
from tests.conftest import ADMIN_TOKEN, SyncEnv, envelope, hook_envelope, load_example, story
from tests.e2e.test_resilience import conversation_events, outcomes
from tests.harness import WORKER_BIN, EmulatorProcess, KafkaBroker, wait_until

pytestmark = pytest.mark.broker

CLOUD_SECRET = "cloud-secret-value-3b9d"
OTHER_TENANT_TOKEN = "other-tenant-token-value-51aa"


def cli(env: SyncEnv, *args: str, **overrides: str) -> subprocess.CompletedProcess[str]:
    url = f"http://127.0.0.1:{env.workers[0].http_port}" if env.workers else "http://127.0.0.1:9"
    environment = {**os.environ, **env.env, "GLPI_SYNC_WORKER_URL": url, **overrides}
    return subprocess.run([WORKER_BIN, *args], env=environment, capture_output=True, text=True, check=False)


def dlq_reasons(env: SyncEnv, count: int) -> list[str]:
    records = env.read_topic(env.dlq, count)
    return [dict(r.headers)["__connect.errors.exception.message"].decode() for r in records]


def everything_visible(env: SyncEnv, worker: Any, hook_ids: list[int]) -> str:
    """What an operator (or an attacker with the admin token) can read: logs, DLQ, state pages, metrics."""
    seen = [worker.log_path.read_text(errors="replace")]
    seen += [r.value.decode(errors="replace") + str(r.headers) for r in env.read_topic(env.dlq, 100, timeout=5)]
    seen.append(worker.http_get("/metrics")[1].decode())
    for path in ["/state/hooks", "/state/hooks?all=1", *(f"/state/hook/{h}" for h in hook_ids)]:
        seen.append(worker.http_get(path)[1].decode())
    return "\n".join(seen)


# ------------------------------------------------------------------------------------------- hostile producers


def test_a_hostile_hook_configuration_obtains_nothing(
    sync_env: SyncEnv, emulator: EmulatorProcess, tmp_path: Path
) -> None:
    """A producer points hooks at its own server with references to the worker's secrets: nothing is sent."""
    hostile = EmulatorProcess(tmp_path)
    hostile.start()
    try:
        granted = Path(sync_env.env["GLPI_SYNC_HOOK_SECRETS_DIR"])
        granted.mkdir(parents=True, exist_ok=True)
        other_tenant = tmp_path / "tenant-b-user-token"
        other_tenant.write_text(OTHER_TENANT_TOKEN)
        (granted / "innocent-looking").symlink_to(other_tenant)
        worker = sync_env.worker()
        worker.env["CLOUD_SECRET_KEY"] = CLOUD_SECRET
        worker.env["GLPI_SYNC_ALLOWED_GLPI_HOSTS"] = f"127.0.0.1:{emulator.port}"
        worker.start()
        attacks = {
            31: {"user_token": {"env": "CLOUD_SECRET_KEY"}},
            32: {"user_token": {"file": str(other_tenant)}},
            33: {"user_token": {"file": f"{granted}/../tenant-b-user-token"}},
            34: {"user_token": {"encrypted": "gAAAAABlZ2hvc3Q="}},
            35: {"user_token": "emulator-user-token"},  # inline, but to a host that is not allowed
        }
        sync_env.publish(
            [hook_envelope(hostile.api_url, hook_id=h, account_id=h, **s) for h, s in attacks.items()]
            + [envelope("conversation_created", load_example("conversation_created"), h, h) for h in attacks]
        )
        reasons = dlq_reasons(sync_env, len(attacks))
        assert len(reasons) == len(attacks)
        assert any("'CLOUD_SECRET_KEY': only variables named GLPI_SYNC_HOOK_SECRET_* are granted" in r for r in reasons)
        assert sum("only files under" in r for r in reasons) == 2
        assert any("encrypted reference" in r for r in reasons)
        assert any("is not one of GLPI_SYNC_ALLOWED_GLPI_HOSTS" in r for r in reasons)
        # A link inside the granted directory, to a file outside it, passes the first check but is never read.
        sync_env.publish(
            [
                hook_envelope(
                    emulator.api_url, hook_id=36, account_id=36, user_token={"file": f"{granted}/innocent-looking"}
                ),
                envelope("conversation_created", load_example("conversation_created"), 36, 36),
            ]
        )
        wait_until(
            lambda: any(o.get("hook_id") == 36 and o["outcome"] == "parked" for o in outcomes(sync_env)), 60, what="36"
        )
        paused = orjson.loads(worker.http_get("/state/hook/36")[1])["pause"]
        assert paused["kind"] == "auth" and "leads outside" in paused["reason"]
        # The attacker's server was never called; no secret is visible anywhere.
        assert hostile.requests() == []
        assert [r for r in emulator.requests() if r["path"] != "initSession"] == []  # hook 36 never logged in
        visible = everything_visible(sync_env, worker, [*attacks, 36])
        for secret in (CLOUD_SECRET, OTHER_TENANT_TOKEN, "emulator-user-token"):
            assert secret not in visible
    finally:
        hostile.stop()


def test_hooks_configured_only_by_operators_when_the_producers_topic_is_not_trusted(
    sync_env: SyncEnv, emulator: EmulatorProcess
) -> None:
    worker = sync_env.worker()
    worker.env.update(GLPI_SYNC_HOOK_CONFIG_SOURCE="control", GLPI_SYNC_HOOK_SECRET_T_USER="emulator-user-token")
    worker.start()
    sync_env.publish([hook_envelope(emulator.api_url), *conversation_events(41, 0)])
    (reason,) = dlq_reasons(sync_env, 1)
    assert "GLPI_SYNC_HOOK_CONFIG_SOURCE=control accepts hook configuration only from the control topic" in reason
    wait_until(lambda: any(o["outcome"] == "parked" for o in outcomes(sync_env)), 30, what="the event waits")
    # The operator configures the hook: the event that waited for it is synced.
    result = cli(
        sync_env,
        "hook", "set", "--hook-id", "7", "--account-id", "7", "--api-url", emulator.api_url, "--allow-http",
        "--user-token-env", "GLPI_SYNC_HOOK_SECRET_T_USER", "--app-token", "emulator-app-token", "--wait",
        GLPI_SYNC_HOOK_SECRET_T_USER="emulator-user-token",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "GLPI connection successful" in result.stdout
    assert "synced: hook 7 configured (enabled); drained 1 parked event(s)" in result.stdout
    wait_until(lambda: len(emulator.state()["Ticket"]) == 1, 60, what="the waiting ticket")


# ------------------------------------------------------------------------------------------- HTTP


STATE_PATHS = [
    "/state/hooks",
    "/state/hooks?all=1",
    "/state/workers",
    "/state/hook/7",
    "/state/hook/7/test",
    "/state/hook/7/contact/318",
    "/state/hook/7/conversation/57",
    "/state/hook/7/command/0123",
]


def test_state_and_admin_endpoints_need_the_admin_token(sync_env: SyncEnv, emulator: EmulatorProcess) -> None:
    worker = sync_env.worker()
    worker.start()
    sync_env.publish([hook_envelope(emulator.api_url), *story()])
    wait_until(lambda: len(emulator.state()["ITILFollowup"]) == 3, 60, what="story")
    for path in ("/metrics", "/health/live", "/health/ready"):  # Prometheus and the kubelet need no token
        assert worker.http_get(path, token=None)[0] == 200, path
    for path in STATE_PATHS:
        assert worker.http_get(path, token=None)[0] == 401, path
        assert worker.http_get(path, token="not-the-token")[0] == 401, path
        assert worker.http_get(path)[0] in (200, 404), path
    # What the state shows: ids and mappings, not the customer's words or address.
    conversation = worker.http_get("/state/hook/7/conversation/57")[1].decode()
    contact = worker.http_get("/state/hook/7/contact/318")[1].decode()
    assert '"ticket_id"' in conversation and "VPN client keeps disconnecting" not in conversation
    assert "marta.silva@example.org" not in contact and "m***@example.org" in contact
    # The CLI sends the token; without it, it says what to set.
    assert cli(sync_env, "inspect", "hook", "--hook-id", "7").returncode == 0
    refused = cli(sync_env, "inspect", "hook", "--hook-id", "7", GLPI_SYNC_ADMIN_TOKEN="wrong")
    assert refused.returncode == 2 and "a valid admin token is required" in refused.stderr


def test_without_an_admin_token_the_state_endpoints_are_off(sync_env: SyncEnv, emulator: EmulatorProcess) -> None:
    worker = sync_env.worker()
    del worker.env["GLPI_SYNC_ADMIN_TOKEN"]
    worker.start()
    status, body = worker.http_get("/state/hooks", token=ADMIN_TOKEN)
    assert status == 403 and b"endpoints are off" in body
    assert worker.http_get("/metrics", token=None)[0] == 200


# ------------------------------------------------------------------------------------------- Kafka security


def test_worker_and_tools_over_sasl_ssl_with_scram(kafka: KafkaBroker, tmp_path: Path) -> None:
    env = SyncEnv(kafka, tmp_path)
    emulator = EmulatorProcess(tmp_path)
    emulator.start()
    try:
        env_overrides = kafka.secure_env("SCRAM-SHA-512")
        worker = env.worker()
        worker.env.update(env_overrides)
        worker.start()
        publish = cli(env, "publish", "-", **env_overrides)  # stdin is empty: connects, publishes nothing
        assert publish.returncode == 0, publish.stderr
        configured = cli(
            env,
            "hook", "set", "--hook-id", "7", "--account-id", "7", "--api-url", emulator.api_url, "--allow-http",
            "--app-token", "emulator-app-token", "--user-token", "emulator-user-token", "--wait",
            **env_overrides,
        )  # fmt: skip
        assert configured.returncode == 0, configured.stdout + configured.stderr
        story_file = tmp_path / "story.jsonl"
        story_file.write_text("\n".join(orjson.dumps(e).decode() for e in story()))
        assert cli(env, "publish", str(story_file), **env_overrides).returncode == 0
        wait_until(lambda: len(emulator.state()["ITILFollowup"]) == 3, 60, what="the story over SASL_SSL")
        dlq = cli(env, "dlq", "list", "--json", **env_overrides)
        assert dlq.returncode == 0 and orjson.loads(dlq.stdout) == []
        # The worker's changelogs were created and written through the secure listener too.
        worker.stop()
        worker.start()
        wait_until(lambda: worker.http_get("/state/hook/7")[0] == 200, 60, what="recovered")
        assert orjson.loads(worker.http_get("/state/hook/7")[1])["status"] == "enabled"  # recovered from them
        # A plain client at the secure listener, and a wrong password, each get one clear line.
        plain = cli(env, "dlq", "list", KAFKA_BOOTSTRAP_SERVERS=kafka.secure_bootstrap)
        assert plain.returncode == 3
        assert f"cannot reach Kafka at {kafka.secure_bootstrap}" in plain.stderr
        assert "set KAFKA_SECURITY_PROTOCOL" in plain.stderr and "Traceback" not in plain.stderr
        wrong = cli(env, "dlq", "list", **{**env_overrides, "KAFKA_SASL_PASSWORD": "not-it"})
        assert wrong.returncode == 3 and "KAFKA_SECURITY_PROTOCOL=SASL_SSL" in wrong.stderr
    finally:
        env.stop()
        emulator.stop()


# ------------------------------------------------------------------------------------------- GLPI over TLS


def test_glpi_with_a_private_ca(sync_env: SyncEnv, tmp_path: Path) -> None:
    certs = make_certificates(tmp_path / "glpi-certs", "glpi")
    glpi = EmulatorProcess(tmp_path, tls=certs)
    glpi.start()
    try:
        trusting = sync_env.worker("w1")
        trusting.env["GLPI_SYNC_GLPI_CA_FILE"] = str(certs.ca)
        trusting.start()
        sync_env.publish([hook_envelope(glpi.api_url), *story()])
        wait_until(lambda: len(glpi.state()["ITILFollowup"]) == 3, 60, what="the story over https")
        tested = cli(sync_env, "hook", "test", "--hook-id", "7")
        assert f"✔ TLS certificate valid: verified against {certs.ca}" in tested.stdout
        # The same hook tested by a worker that does not trust the CA: the doctor says which and why.
        trusting.stop()
        strict = sync_env.worker("w2")
        strict.start()
        tested = cli(
            sync_env, "hook", "test", "--hook-id", "7", GLPI_SYNC_WORKER_URL=f"http://127.0.0.1:{strict.http_port}"
        )
        assert tested.returncode == 1
        assert f"✘ TLS certificate valid: the TLS certificate of 127.0.0.1:{glpi.port} was refused" in tested.stdout
        assert "unable to get local issuer certificate" in tested.stdout
        assert "fix: set GLPI_SYNC_GLPI_CA_FILE" in tested.stdout
    finally:
        glpi.stop()


# ------------------------------------------------------------------------------------------- tokens at rest


def test_inline_tokens_encrypted_at_rest_or_refused(sync_env: SyncEnv, emulator: EmulatorProcess) -> None:
    worker = sync_env.worker()
    worker.env.update(GLPI_SYNC_INLINE_TOKENS="encrypt", GLPI_SYNC_TOKEN_KEYS=Fernet.generate_key().decode())
    worker.start()
    sync_env.publish([hook_envelope(emulator.api_url), *conversation_events(42, 1)])
    wait_until(lambda: len(emulator.state()["ITILFollowup"]) == 1, 60, what="synced with encrypted tokens")
    changelog = sync_env.read_topic(f"{sync_env.app_id}-hooks-changelog", 1)
    stored = b"".join(r.value for r in changelog)
    assert b"emulator-user-token" not in stored and b"emulator-app-token" not in stored
    assert b'"encrypted"' in stored
    worker.stop()
    worker.env["GLPI_SYNC_INLINE_TOKENS"] = "refuse"
    worker.start()
    sync_env.publish([hook_envelope(emulator.api_url, hook_id=8, account_id=8)])
    (reason,) = dlq_reasons(sync_env, 1)
    assert "inline tokens are refused here" in reason
    dead = sync_env.read_topic(sync_env.dlq, 1)[0].value
    assert b"emulator-user-token" not in dead  # the refused record itself is kept without its tokens
