"""Real processes for the tests: Apache Kafka (KRaft, single node), the GLPI emulator and sync workers.

Everything binds 127.0.0.1 on free ports and runs from temporary directories; ``stop()`` always cleans up.
Kafka's jars come from Maven Central (``deploy/kafka/pom.xml``, cached in ``.cache/kafka/libs``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parent.parent
KAFKA_LIBS = Path(os.environ.get("KAFKA_LIBS", ROOT / ".cache" / "kafka" / "libs"))
PYTHON = sys.executable
WORKER_BIN = str(Path(PYTHON).parent / "glpi-sync")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float, proc: subprocess.Popen[Any] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before port {port} opened")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"port {port} did not open within {timeout}s")


def ensure_kafka_libs() -> Path:
    """Fetch the Kafka jars with Maven when the cache is empty."""
    if not any(KAFKA_LIBS.glob("kafka_2.13-*.jar")):
        KAFKA_LIBS.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                "mvn",
                "-q",
                "-B",
                "-f",
                str(ROOT / "deploy" / "kafka" / "pom.xml"),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={KAFKA_LIBS}",
            ],
            check=True,
        )
    return KAFKA_LIBS


class KafkaBroker:
    """A single-node KRaft Apache Kafka in a temporary directory."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.controller_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "kafka.log"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _write_config(self) -> Path:
        config = self.workdir / "server.properties"
        config.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
                    f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                    f"log.dirs={self.workdir / 'data'}",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=4",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "num.partitions=1",
                    "auto.create.topics.enable=false",
                    "log.flush.interval.messages=1",
                ]
            )
        )
        return config

    def start(self, timeout: float = 90.0) -> None:
        libs = ensure_kafka_libs()
        config = self._write_config()
        classpath = f"{libs}/*"
        subprocess.run(
            [
                "java",
                "-cp",
                classpath,
                "kafka.tools.StorageTool",
                "format",
                "-t",
                "cwglpiTestCluster0000A",
                "-c",
                str(config),
            ],
            check=True,
            capture_output=True,
        )
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                "java",
                "-Xms256m",
                "-Xmx768m",
                "-XX:+UseSerialGC",
                "-cp",
                classpath,
                "kafka.Kafka",
                str(config),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_port(self.port, timeout, self.proc)
        asyncio.run(self._wait_ready(timeout))

    async def _wait_ready(self, timeout: float) -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        deadline = time.monotonic() + timeout
        while True:
            try:
                admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000)
                await admin.start()
                try:
                    await admin.list_topics()
                    return
                finally:
                    await admin.close()
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        log = self.log_path.open("ab")
        config = self.workdir / "server.properties"
        self.proc = subprocess.Popen(
            [
                "java",
                "-Xms256m",
                "-Xmx768m",
                "-XX:+UseSerialGC",
                "-cp",
                f"{KAFKA_LIBS}/*",
                "kafka.Kafka",
                str(config),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_port(self.port, 90, self.proc)
        asyncio.run(self._wait_ready(90))


class EmulatorProcess:
    """``python -m tests.glpi_emulator`` on a free port, with a small sync client for its test endpoints."""

    def __init__(self, workdir: Path, *, session_ttl: float = 1440.0) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.session_ttl = session_ttl
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/apirest.php"

    def start(self) -> None:
        log = (self.workdir / f"emulator-{self.port}.log").open("wb")
        self.proc = subprocess.Popen(
            [
                PYTHON,
                "-m",
                "tests.glpi_emulator",
                "--port",
                str(self.port),
                "--session-ttl",
                str(self.session_ttl),
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_port(self.port, 30, self.proc)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        async def go() -> Any:
            async with (
                aiohttp.ClientSession() as http,
                http.request(method, f"http://127.0.0.1:{self.port}/_emulator/{path}", json=body) as resp,
            ):
                return await resp.json()

        return asyncio.run(go())

    def delete(self, path: str) -> Any:
        """DELETE an item through the emulated API (what a GLPI admin does in the UI)."""

        async def go() -> Any:
            async with aiohttp.ClientSession() as http:
                base = f"http://127.0.0.1:{self.port}/apirest.php"
                headers = {"App-Token": "emulator-app-token"}
                async with http.get(
                    f"{base}/initSession", headers={**headers, "Authorization": "user_token emulator-user-token"}
                ) as resp:
                    token = (await resp.json())["session_token"]
                async with http.delete(f"{base}/{path}", headers={**headers, "Session-Token": token}) as resp:
                    return await resp.json()

        return asyncio.run(go())

    def state(self) -> dict[str, list[dict[str, Any]]]:
        return dict(self._call("GET", "state"))

    def requests(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "requests"))

    def set_status(self, ticket_id: int, status: int) -> None:
        """What a technician does in GLPI: set a ticket's status (6 closes it)."""
        self._call("POST", "set_status", {"ticket": ticket_id, "status": status})

    def faults(self, *rules: dict[str, Any], clear: bool = False) -> None:
        self._call("POST", "faults", {"rules": list(rules), "clear": clear})

    def config(self, **values: Any) -> None:
        self._call("POST", "config", values)


class WorkerProcess:
    """A ``glpi-sync worker`` subprocess with its own data dir and HTTP port."""

    def __init__(self, workdir: Path, env: dict[str, str], name: str = "w1") -> None:
        self.workdir = workdir
        self.name = name
        self.http_port = free_port()
        self.env = {
            **os.environ,
            **env,
            "GLPI_SYNC_HTTP_PORT": str(self.http_port),
            "GLPI_SYNC_ADVERTISED_URL": f"http://127.0.0.1:{self.http_port}",
            "GLPI_SYNC_DATA_DIR": str(workdir / f"data-{name}"),
            "GLPI_SYNC_LOG_FORMAT": "json",
        }
        self.log_path = workdir / f"worker-{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [WORKER_BIN, "worker"],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_port(self.http_port, 60, self.proc)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for raw in self.log_path.read_bytes().splitlines():
            start = raw.find(b"{")  # terminal control sequences may precede a line
            if start < 0:
                continue
            with contextlib.suppress(orjson.JSONDecodeError):
                parsed = orjson.loads(raw[start:])
                if isinstance(parsed, dict):
                    lines.append(parsed)
        return lines

    def outcomes(self) -> list[dict[str, Any]]:
        return [line for line in self.log_lines() if line.get("logger") == "cwglpi.worker" and "outcome" in line]

    def http_get(self, path: str) -> tuple[int, bytes]:
        async def go() -> tuple[int, bytes]:
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{self.http_port}{path}") as resp,
            ):
                return resp.status, await resp.read()

        return asyncio.run(go())


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def wait_until(predicate: Any, timeout: float = 60.0, interval: float = 0.25, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@contextlib.contextmanager
def running(*procs: Any) -> Iterator[None]:
    try:
        yield
    finally:
        for proc in reversed(procs):
            with contextlib.suppress(Exception):
                proc.stop()
