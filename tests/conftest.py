"""Shared fixtures: example payloads, and (for the broker tests) a real Kafka, the emulator and workers."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.demo import STORY
from tests.harness import ChatwootEmulatorProcess, EmulatorProcess, KafkaBroker, WorkerProcess, unique

EXAMPLES = Path(__file__).resolve().parent.parent / "schemas" / "examples"
#: The GLPI versions the emulator answers as (a parameter of the ``emulator`` fixture).
GLPI_VERSIONS = ("10", "11")
#: The workers' admin token in the suite (GLPI_SYNC_ADMIN_TOKEN).
ADMIN_TOKEN = "test-admin-token-7f3e"


def load_example(example_name: str, /, **overrides: Any) -> dict[str, Any]:
    """The Chatwoot webhook body of ``schemas/examples/<name>.json`` (the story of chatwoot-events.md §8)."""
    body = json.loads((EXAMPLES / f"{example_name}.json").read_text())["payload"]
    body = copy.deepcopy(body)
    body.update(overrides)
    return body


def envelope(
    event: str, payload: dict[str, Any], hook_id: int = 7, account_id: int = 7, **extra: Any
) -> dict[str, Any]:
    return {"event": event, "hook_id": hook_id, "account_id": account_id, "payload": payload, **extra}


def hook_envelope(api_url: str, hook_id: int = 7, account_id: int = 7, **settings: Any) -> dict[str, Any]:
    return envelope(
        "hook_configured",
        {
            "status": settings.pop("status", "enabled"),
            "account_features": settings.pop("account_features", ["crm_integration"]),
            "settings": {
                "api_url": api_url,
                "app_token": "emulator-app-token",
                "user_token": "emulator-user-token",
                "entity_id": "0",
                "sync_type": "user",
                "ticket_type": "1",
                **settings,
            },
        },
        hook_id,
        account_id,
    )


def story(hook_id: int = 7, account_id: int = 7) -> list[dict[str, Any]]:
    """The example story of chatwoot-events.md §8, in delivery order, as envelopes."""
    return [envelope(load_example(n)["event"], load_example(n), hook_id, account_id) for n in STORY]


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def emulator(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EmulatorProcess]:
    """The GLPI emulator as GLPI 10.0.12; ``@pytest.mark.parametrize("emulator", GLPI_VERSIONS, indirect=True)``
    runs a test against GLPI 10 and GLPI 11 (``tests/integration/test_glpi_conformance.py`` holds both to the
    recorded answers)."""
    emu = EmulatorProcess(tmp_path, glpi11=getattr(request, "param", "10") == "11")
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture
def chatwoot(tmp_path: Path) -> Iterator[ChatwootEmulatorProcess]:
    """The Chatwoot emulator (tests/chatwoot_emulator.py) on a free port."""
    process = ChatwootEmulatorProcess(tmp_path)
    process.start()
    try:
        yield process
    finally:
        process.stop()


class SyncEnv:
    """One isolated deployment on the shared broker: its own topics, consumer group and workers."""

    def __init__(self, kafka: KafkaBroker, workdir: Path, partitions: int = 4) -> None:
        self.kafka = kafka
        self.workdir = workdir
        self.partitions = partitions
        self.topic = unique("events")
        self.dlq = self.topic + ".dlq"
        self.control = self.topic + ".control"
        self.app_id = unique("cwglpi")
        self.workers: list[WorkerProcess] = []
        from app.kafka_io import ensure_topics

        asyncio.run(ensure_topics(kafka.bootstrap, {self.topic: partitions, self.dlq: 1}))

    @property
    def env(self) -> dict[str, str]:
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap,
            "GLPI_SYNC_TOPIC": self.topic,
            "GLPI_SYNC_DLQ_TOPIC": self.dlq,
            "GLPI_SYNC_CONTROL_TOPIC": self.control,
            "GLPI_SYNC_RESUME_INTERVAL": "2",
            "GLPI_SYNC_SESSION_TIMEOUT": "6",
            # A worker stopped during a rebalance gives up its clean stop sooner than in production (30 s).
            "GLPI_SYNC_STOP_TIMEOUT": "15",
            # No GLPI_SYNC_PARTITIONS: like a real deployment, the workers take the count of the input topic
            # that the "producers" (this fixture) created.
            "GLPI_SYNC_APP_ID": self.app_id,
            "GLPI_SYNC_ALLOW_HTTP": "true",
            "GLPI_SYNC_RETRY_BUDGET": "5",
            "GLPI_SYNC_RETRY_BASE": "0.1",
            "GLPI_SYNC_GLPI_TIMEOUT": "5",
            # A short late-commit window keeps injected 5xx faults quick; the late-commit scenarios set their own.
            "GLPI_SYNC_LATE_COMMIT_WINDOW": "3",
            "GLPI_SYNC_ADMIN_TOKEN": ADMIN_TOKEN,
            "GLPI_SYNC_HOOK_SECRETS_DIR": str(self.workdir / "secrets"),
        }

    def worker(self, name: str = "w1") -> WorkerProcess:
        worker = WorkerProcess(self.workdir, self.env, name)
        self.workers.append(worker)
        return worker

    def publish(self, envelopes: list[dict[str, Any]]) -> None:
        from app.kafka_io import publish

        asyncio.run(publish(self.kafka.bootstrap, self.topic, envelopes, batch_size=2))

    def command(self, event: str, hook_id: int, **payload: Any) -> None:
        """What ``glpi-sync hook pause|resume|...`` publishes: a command on the control topic, keyed by hook."""
        from app.kafka_io import publish

        body = {"event": event, "hook_id": hook_id, "payload": {"requested_by": "test", **payload}}
        asyncio.run(publish(self.kafka.bootstrap, self.control, [body]))

    def publish_raw(self, records: list[tuple[bytes | None, bytes]]) -> None:
        from aiokafka import AIOKafkaProducer

        async def go() -> None:
            producer = AIOKafkaProducer(bootstrap_servers=self.kafka.bootstrap, acks="all")
            await producer.start()
            try:
                for key, value in records:
                    await producer.send_and_wait(self.topic, value, key=key)
            finally:
                await producer.stop()

        asyncio.run(go())

    def read_topic(self, topic: str, expected: int, timeout: float = 30.0) -> list[Any]:
        from aiokafka import AIOKafkaConsumer

        async def go() -> list[Any]:
            consumer = AIOKafkaConsumer(
                topic,
                bootstrap_servers=self.kafka.bootstrap,
                auto_offset_reset="earliest",
                enable_auto_commit=False,
            )
            await consumer.start()
            records: list[Any] = []
            try:
                loop = asyncio.get_running_loop()
                deadline = loop.time() + timeout
                while len(records) < expected and loop.time() < deadline:
                    batch = await consumer.getmany(timeout_ms=500)
                    for msgs in batch.values():
                        records.extend(msgs)
            finally:
                await consumer.stop()
            return records

        return asyncio.run(go())

    def stop(self) -> None:
        """Teardown: SIGTERM, then SIGKILL after 15 s (tests of a graceful stop call ``worker.stop()`` themselves;
        a worker stopped in the middle of a rebalance can take faust a minute to leave)."""
        running = [w for w in self.workers if w.proc is not None and w.proc.poll() is None]
        for worker in running:  # all at once: each one's leaving would otherwise wait for the next rebalance
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.proc.pid, signal.SIGTERM)  # type: ignore[union-attr]
        deadline = time.monotonic() + 15
        for worker in running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.proc.wait(max(0.5, deadline - time.monotonic()))  # type: ignore[union-attr]
            worker.kill()  # SIGKILL to what is left of it


@pytest.fixture
def sync_env(kafka: KafkaBroker, tmp_path: Path) -> Iterator[SyncEnv]:
    env = SyncEnv(kafka, tmp_path)
    try:
        yield env
    finally:
        env.stop()


#: Every token value the suite gives a hook or a worker. None may appear in any worker's log output.
TEST_SECRETS = (
    "emulator-user-token",
    "emulator-app-token",
    "revoked-token",
    "wrong-user-token",
    "wrong-app-token",
    "test-admin-token-7f3e",
    "scram-secret-alice-91",
    "agent-token-5c1d",
)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Grep all worker log output of the whole suite for the test tokens; a leak fails the run."""
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None:
        return
    try:
        base = factory.getbasetemp()
    except (OSError, ValueError):
        return
    leaks = []
    logs = list(base.rglob("worker-*.log"))
    for log in logs:
        text = log.read_text(errors="replace")
        leaks += [f"{log}: {secret}" for secret in TEST_SECRETS if secret in text]
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and logs:
        reporter.write_line(
            f"secret scan: {len(logs)} worker log(s) searched for {len(TEST_SECRETS)} test tokens, {len(leaks)} leak(s)"
        )
    if leaks:
        if reporter is not None:
            for leak in leaks:
                reporter.write_line(f"TOKEN LEAKED IN LOGS: {leak}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
