"""The CLI's input handling: files of envelopes or raw webhook bodies, and `hook set` refusing bad settings."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from app.cli.common import CliError
from app.cli.publish import load_records, to_envelopes
from app.kafka_io import envelope_key
from tests.conftest import load_example
from tests.harness import WORKER_BIN


def test_jsonl_and_json_files_are_read(tmp_path: Path) -> None:
    body = load_example("contact_updated")
    jsonl = tmp_path / "events.jsonl"
    jsonl.write_text(json.dumps(body) + "\n\n" + json.dumps(body) + "\n")
    array = tmp_path / "events.json"
    array.write_text(json.dumps([body, body, body]))
    assert len(load_records(str(jsonl))) == 2
    assert len(load_records(str(array))) == 3
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"event": "x"}\nnot json\n')
    with pytest.raises(CliError, match=r"bad\.jsonl:2"):
        load_records(str(bad))


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


def _glpi_sync(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("GLPI_SYNC_", "KAFKA_"))}
    return subprocess.run(
        [WORKER_BIN, *args],
        env={**clean, "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9", **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_an_unknown_option_before_the_command_is_named() -> None:
    result = _glpi_sync("--bogus")
    assert result.returncode == 2
    assert result.stderr.strip() == "glpi-sync: unknown option --bogus: a COMMAND comes first (glpi-sync --help)"


@pytest.mark.parametrize("variable", ["KAFKA_SECURITY_PROTOCOL", "GLPI_SYNC_KAFKA_SECURITY_PROTOCOL"])
def test_a_bad_variable_is_named_as_the_user_set_it(variable: str) -> None:
    result = _glpi_sync("dlq", "list", **{variable: "TLS"})
    assert result.returncode == 2
    assert f"  {variable}: Input should be 'PLAINTEXT'" in result.stderr


def test_an_api_url_that_is_no_url_gets_an_example_not_a_guess() -> None:
    result = _glpi_sync(
        "hook", "set", "--hook-id", "7", "--account-id", "7", "--api-url", "not-a-url", "--user-token", "u"
    )
    assert result.returncode == 2
    assert "e.g. https://glpi.example.com/apirest.php" in result.stderr
    assert "not-a-url/apirest.php" not in result.stderr


def test_every_command_names_a_hook_with_hook_id_and_the_old_dlq_flag_still_works() -> None:
    for args in (["dlq", "list", "--hook-id", "7"], ["dlq", "list", "--hook", "7"]):
        result = _glpi_sync(*args)
        assert result.returncode == 3, result.stderr  # parsed; then the broker (none here) cannot be reached
        assert "unrecognized" not in result.stderr
    assert "--hook-id" in _glpi_sync("dlq", "replay", "--help").stdout
    assert "--hook " not in _glpi_sync("dlq", "purge", "--help").stdout


def test_skip_has_an_example_of_its_own() -> None:
    shown = _glpi_sync("hook", "skip", "--help").stdout
    assert "GLPI upgrade" not in shown and "--reason" in shown


def test_an_ingress_on_a_busy_port_says_so_in_one_line() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _glpi_sync("ingress", "--port", str(port), GLPI_SYNC_INGRESS_HOST="127.0.0.1")
    assert result.returncode == 2
    assert "Traceback" not in result.stdout + result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stdout + result.stderr
    assert "ingress listening" not in result.stdout + result.stderr


def test_a_backfill_from_a_chatwoot_nobody_answers_at_is_unreachable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]  # bound, never listening: connections are refused
        result = _glpi_sync(
            "backfill",
            "--hook-id",
            "7",
            "--account-id",
            "7",
            "--chatwoot-url",
            f"http://127.0.0.1:{closed}",
            "--api-token-env",
            "CW_TOKEN",
            "--dry-run",
            CW_TOKEN="secret-token",
        )
    assert result.returncode == 3, result.stdout + result.stderr
    assert f"Chatwoot at http://127.0.0.1:{closed} cannot be reached" in result.stderr
    assert "tried 3 times" in result.stderr  # not 8 attempts over three minutes
    assert "secret-token" not in result.stdout + result.stderr


def test_sigterm_ends_a_long_command_as_ctrl_c_does(tmp_path: Path) -> None:
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("GLPI_SYNC_", "KAFKA_"))}
        proc = subprocess.Popen(
            [
                WORKER_BIN,
                "backfill",
                "--hook-id",
                "7",
                "--account-id",
                "7",
                "--chatwoot-url",
                f"http://127.0.0.1:{silent.getsockname()[1]}",
                "--api-token-env",
                "CW_TOKEN",
                "--dry-run",
            ],
            env={**clean, "CW_TOKEN": "t"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(3)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert err.strip().endswith("glpi-sync: interrupted")
    assert "Traceback" not in err
