"""What a hook configuration may ask for, how tokens are resolved and kept, who may read the state pages."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest
from cryptography.fernet import Fernet

from app.events import HookSettings, TokenEncrypted, TokenFromEnv, TokenFromFile
from app.ops import admin_gate, contact_view
from app.pipeline.dead_letters import without_inline_tokens
from app.secrets import HookConfigError, TokenVault, resolve_token
from app.settings import SettingsError, ToolSettings, WorkerSettings, load
from app.sync.hook_config import HookPolicy, grant_problems, token_reference_problem
from app.sync.state import ContactRecord

POLICY = HookPolicy(secrets_dir="/run/secrets/glpi-sync")


@pytest.mark.parametrize(
    ("ref", "granted"),
    [
        (TokenFromEnv(env="GLPI_SYNC_HOOK_SECRET_7_USER"), True),
        (TokenFromEnv(env="KAFKA_SASL_PASSWORD"), False),  # the worker's own Kafka password
        (TokenFromEnv(env="AWS_SECRET_ACCESS_KEY"), False),
        (TokenFromEnv(env="GLPI_SYNC_HOOK_SECRET_"), False),  # the prefix alone
        (TokenFromFile(file="/run/secrets/glpi-sync/hook-7-user"), True),
        (TokenFromFile(file="/run/secrets/glpi-sync/tenant-b/user"), True),
        (TokenFromFile(file="/var/run/secrets/kubernetes.io/serviceaccount/token"), False),
        (TokenFromFile(file="/run/secrets/glpi-sync/../glpi-other/token"), False),
        (TokenFromFile(file="run/secrets/glpi-sync/relative"), False),
        (TokenFromFile(file="/run/secrets/glpi-sync"), False),
        (TokenEncrypted(encrypted="gAAAA"), False),  # only the worker writes these, in its own table
        ("inline-token-value", True),
    ],
)
def test_token_references_name_only_what_operators_granted(ref: object, granted: bool) -> None:
    problem = token_reference_problem(ref, "user_token", POLICY)  # type: ignore[arg-type]
    assert (problem is None) is granted
    if problem:
        assert "inline-token-value" not in problem


def test_inline_tokens_can_be_refused_and_hosts_allow_listed() -> None:
    policy = HookPolicy(refuse_inline_tokens=True, allowed_hosts=frozenset({"glpi.example.com", "10.0.0.5:8443"}))
    settings = HookSettings(api_url="https://evil.example.net/apirest.php", user_token="abc")
    problems = grant_problems(settings, policy)
    assert any("'evil.example.net' is not one of GLPI_SYNC_ALLOWED_GLPI_HOSTS" in p for p in problems)
    assert any("inline tokens are refused" in p for p in problems)
    ok = HookSettings(api_url="https://10.0.0.5:8443/apirest.php", user_token={"env": "GLPI_SYNC_HOOK_SECRET_X"})
    assert grant_problems(ok, policy) == []


def test_a_link_inside_the_granted_directory_pointing_outside_is_refused(tmp_path: Path) -> None:
    granted = tmp_path / "secrets"
    granted.mkdir()
    (granted / "good").write_text("token-good\n")
    elsewhere = tmp_path / "serviceaccount-token"
    elsewhere.write_text("the cluster's keys")
    (granted / "sneaky").symlink_to(elsewhere)
    policy = HookPolicy(secrets_dir=str(granted))
    assert resolve_token(TokenFromFile(file=str(granted / "good")), "user_token", policy) == "token-good"
    with pytest.raises(HookConfigError, match="leads outside"):
        resolve_token(TokenFromFile(file=str(granted / "sneaky")), "user_token", policy)
    with pytest.raises(HookConfigError, match="only variables named"):
        resolve_token(TokenFromEnv(env="HOME"), "user_token", policy)
    os.environ["GLPI_SYNC_HOOK_SECRET_UNIT"] = " from-env "
    assert resolve_token(TokenFromEnv(env="GLPI_SYNC_HOOK_SECRET_UNIT"), "user_token", policy) == "from-env"


def test_inline_tokens_are_encrypted_at_rest_and_keys_rotate() -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings = HookSettings(api_url="https://g/apirest.php", user_token="the-user-token", app_token="the-app-token")
    stored = TokenVault.from_text(old).encrypt_inline(settings)
    dumped = orjson.dumps(stored.model_dump(mode="json"))
    assert b"the-user-token" not in dumped and b"the-app-token" not in dumped
    assert isinstance(stored.user_token, TokenEncrypted)
    # Rotation: the new key first, the old one after it, until every hook was configured again.
    rotated = TokenVault.from_text(f"{new},{old}")
    assert resolve_token(stored.user_token, "user_token", HookPolicy(), rotated) == "the-user-token"
    with pytest.raises(HookConfigError, match="does not decrypt"):
        TokenVault.from_text(new).decrypt(stored.user_token)
    with pytest.raises(HookConfigError, match="no token key"):
        resolve_token(stored.user_token, "user_token", HookPolicy(), None)
    with pytest.raises(ValueError, match="not a Fernet key"):
        TokenVault.from_text("not-a-key")


def test_state_endpoints_are_off_without_a_token_and_closed_without_the_right_one() -> None:
    off = admin_gate("Bearer anything", None)
    assert off is not None and off[0] == 403 and "off" in off[1]["error"]
    assert admin_gate(None, "s3cret")[0] == 401  # type: ignore[index]
    assert admin_gate("Bearer wrong", "s3cret")[0] == 401  # type: ignore[index]
    assert admin_gate("Basic s3cret", "s3cret")[0] == 401  # type: ignore[index]
    assert admin_gate("Bearer s3cret", "s3cret") is None
    assert admin_gate("bearer  s3cret ", "s3cret") is None


def test_state_pages_show_ids_not_contact_details() -> None:
    shown = contact_view(
        ContactRecord(
            account_id=7,
            contact_id=318,
            glpi_id=42,
            name="Marta Silva",
            phone="+351912000111",
            emails=("marta@ex.org",),
        )
    )
    assert (shown["glpi_id"], shown["contact_id"]) == (42, 318)
    assert shown["name"] == "***" and shown["emails"] == ["m***@ex.org"] and shown["phone"] == "+351…111"
    assert "Marta" not in orjson.dumps(shown).decode()


def test_a_refused_hook_configuration_reaches_the_dlq_without_its_tokens() -> None:
    record = orjson.dumps(
        {
            "event": "hook_configured",
            "hook_id": 7,
            "payload": {"settings": {"api_url": "x", "user_token": "secret-u", "app_token": {"env": "GLPI_SYNC_X"}}},
        }
    )
    scrubbed, hidden = without_inline_tokens(record)
    assert hidden and b"secret-u" not in scrubbed
    assert orjson.loads(scrubbed)["payload"]["settings"]["app_token"] == {"env": "GLPI_SYNC_X"}  # not a secret
    assert without_inline_tokens(b'{"event": "message_created"}') == (b'{"event": "message_created"}', False)


def test_bad_environment_values_name_the_variable_and_what_it_accepts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLPI_SYNC_HTTP_PORT", "abc")
    monkeypatch.setenv("GLPI_SYNC_STORE", "redis://cache:6379")
    monkeypatch.setenv("GLPI_SYNC_LOG_LEVEL", "info")  # case-insensitive
    with pytest.raises(SettingsError) as caught:
        load(WorkerSettings)
    lines = caught.value.lines
    assert any(line.startswith("GLPI_SYNC_HTTP_PORT: ") and "'abc'" in line for line in lines)
    assert any(line.startswith("GLPI_SYNC_STORE: must be rocksdb://") for line in lines)
    # A bad worker-only value does not stop the other commands.
    tools = load(ToolSettings)
    assert tools.log_level == "INFO"


def test_dlq_and_control_topics_follow_the_input_topic(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLPI_SYNC_TOPIC", "tenant-b.events")
    settings = load(ToolSettings)
    assert (settings.dlq_topic, settings.control_topic) == ("tenant-b.events.dlq", "tenant-b.events.control")
    monkeypatch.setenv("GLPI_SYNC_DLQ_TOPIC", "shared.dlq")
    assert load(ToolSettings).dlq_topic == "shared.dlq"
