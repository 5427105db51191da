"""Mistakes a new user makes with the command line: each gives one clear line and an exit status, no traceback.

The real ``glpi-sync`` command runs in a subprocess, as a user runs it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import SyncEnv
from tests.harness import WORKER_BIN, EmulatorProcess

NOWHERE = "127.0.0.1:9"  # the discard port: nothing listens there


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("GLPI_SYNC_", "KAFKA_"))}
    return subprocess.run(
        [WORKER_BIN, *args],
        env={**clean, "KAFKA_BOOTSTRAP_SERVERS": NOWHERE, **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def assert_one_clear_line(result: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "Unclosed" not in result.stderr, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["publish", "--hook-id", "7", "schemas/examples/contact_created.json"],
        ["dlq", "list"],
        ["hook", "pause", "--hook-id", "7", "--no-wait"],
        ["worker"],
    ],
)
def test_an_unreachable_broker_is_one_line_naming_the_servers_and_the_fix(command: list[str]) -> None:
    result = run(*command)
    assert_one_clear_line(result, 3, f"cannot reach Kafka at {NOWHERE}", "KAFKA_BOOTSTRAP_SERVERS")
    assert len([line for line in result.stderr.splitlines() if not line.startswith("{")]) == 1


@pytest.mark.parametrize(
    ("variable", "value", "words"),
    [
        ("GLPI_SYNC_HTTP_PORT", "abc", ["GLPI_SYNC_HTTP_PORT", "integer", "'abc'"]),
        ("GLPI_SYNC_STORE", "redis://", ["GLPI_SYNC_STORE", "rocksdb://", "memory://"]),
        ("GLPI_SYNC_INLINE_TOKENS", "maybe", ["GLPI_SYNC_INLINE_TOKENS", "allow", "encrypt", "refuse"]),
    ],
)
def test_a_bad_worker_setting_names_the_variable_and_what_it_accepts(
    variable: str, value: str, words: list[str]
) -> None:
    result = run("worker", **{variable: value})
    assert_one_clear_line(result, 2, "invalid configuration", *words)
    assert "pydantic" not in result.stderr and "errors.pydantic.dev" not in result.stderr


def test_a_bad_worker_only_setting_does_not_stop_the_other_commands() -> None:
    # dlq list needs Kafka, not the worker's store: it goes on to the (unreachable) broker, exit 3 not 2.
    result = run("dlq", "list", GLPI_SYNC_STORE="redis://", GLPI_SYNC_LOG_LEVEL="info")
    assert_one_clear_line(result, 3, "cannot reach Kafka")


def test_version_and_shell_completion() -> None:
    version = run("--version")
    assert version.returncode == 0 and version.stdout.startswith("glpi-sync ")
    completion = run("completion", "bash")
    assert completion.returncode == 0 and "complete" in completion.stdout and "trace" in completion.stdout
    assert_one_clear_line(run("frobnicate"), 2, "invalid choice")


def test_worker_help_lists_the_environment_variables() -> None:
    result = run("worker", "--help")
    assert result.returncode == 0
    for variable in ("KAFKA_BOOTSTRAP_SERVERS", "GLPI_SYNC_TOPIC", "GLPI_SYNC_ADMIN_TOKEN", "KAFKA_SECURITY_PROTOCOL"):
        assert variable in result.stdout


@pytest.mark.broker
def test_hook_set_before_any_worker_says_to_start_one(
    sync_env: SyncEnv, emulator: EmulatorProcess, tmp_path: Path
) -> None:
    # The deployment's input topic exists (producers made it) but no worker created the control topic yet.
    result = run(
        "hook", "set", "--hook-id", "7", "--account-id", "7", "--api-url", emulator.api_url, "--allow-http",
        "--user-token", "emulator-user-token", "--app-token", "emulator-app-token", "--no-wait",
        KAFKA_BOOTSTRAP_SERVERS=sync_env.kafka.bootstrap, GLPI_SYNC_TOPIC=sync_env.topic,
    )  # fmt: skip
    assert_one_clear_line(result, 3, f"the control topic {sync_env.control} does not exist yet", "start a worker first")
    assert "not found in cluster metadata" not in result.stdout + result.stderr
