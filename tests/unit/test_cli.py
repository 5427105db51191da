"""The CLI's input handling: files of envelopes or raw webhook bodies, and `hook set` refusing bad settings."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from app.cli import CliError, _load_records, to_envelopes
from app.kafka_io import envelope_key
from tests.conftest import load_example
from tests.harness import WORKER_BIN


def test_jsonl_and_json_files_are_read(tmp_path: Path) -> None:
    body = load_example("contact_updated")
    jsonl = tmp_path / "events.jsonl"
    jsonl.write_text(json.dumps(body) + "\n\n" + json.dumps(body) + "\n")
    array = tmp_path / "events.json"
    array.write_text(json.dumps([body, body, body]))
    assert len(_load_records(str(jsonl))) == 2
    assert len(_load_records(str(array))) == 3
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"event": "x"}\nnot json\n')
    with pytest.raises(CliError, match=r"bad\.jsonl:2"):
        _load_records(str(bad))


def test_raw_bodies_are_wrapped_and_keyed_by_hook() -> None:
    contact = load_example("contact_updated")
    conversation = load_example("conversation_created")
    envelopes = to_envelopes([contact], hook_id=7, account_id=None)
    assert envelopes == [{"event": "contact_updated", "hook_id": 7, "account_id": 7, "payload": contact}]
    assert envelope_key(envelopes[0]) == b"7"
    with pytest.raises(CliError, match="no account id"):
        to_envelopes([conversation], hook_id=7, account_id=None)  # conversations carry no account
    assert to_envelopes([conversation], hook_id=7, account_id=7)[0]["account_id"] == 7
    with pytest.raises(CliError, match="pass --hook-id"):
        to_envelopes([contact], hook_id=None, account_id=None)
    envelope = {"event": "hook_removed", "hook_id": 9, "account_id": 9, "payload": {}}
    assert to_envelopes([envelope], hook_id=None, account_id=None) == [envelope]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--api-url", "https://glpi.example.com/glpi", "--user-token", "u"],
            "did you mean https://glpi.example.com/glpi/apirest.php",
        ),
        (["--api-url", "http://glpi.example.com/apirest.php", "--user-token", "u"], "--allow-http"),
        (["--api-url", "https://glpi.example.com/apirest.php"], "a user token is required"),
        (
            ["--api-url", "https://glpi.example.com/apirest.php", "--user-token", "u", "--user-token-env", "X"],
            "give the user-token once",
        ),
        (
            ["--api-url", "https://glpi.example.com/apirest.php", "--user-token-env", "GLPI_SYNC_HOOK_SECRET_UNSET"],
            "environment variable GLPI_SYNC_HOOK_SECRET_UNSET is not set",
        ),
        # Token references name only what operators granted to hooks.
        (
            ["--api-url", "https://glpi.example.com/apirest.php", "--user-token-env", "KAFKA_SASL_PASSWORD"],
            "only variables named GLPI_SYNC_HOOK_SECRET_* are granted to hooks",
        ),
        (
            ["--api-url", "https://glpi.example.com/apirest.php", "--user-token-file", "/etc/passwd"],
            "only files under /run/secrets/glpi-sync/ are granted to hooks",
        ),
        (
            ["--api-url", "https://glpi.example.com/apirest.php", "--user-token-file", "../../etc/passwd"],
            "only files under /run/secrets/glpi-sync/ are granted to hooks",
        ),
    ],
)
def test_hook_set_refuses_the_classic_mistakes(args: list[str], message: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLPI_SYNC_")}
    result = subprocess.run(
        [WORKER_BIN, "hook", "set", "--hook-id", "7", "--account-id", "7", *args],
        env={**env, "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
