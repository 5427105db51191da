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
import threading
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


#: The SCRAM user of the broker's SASL_SSL listener (created at format time) and a PLAIN user.
SCRAM_USER, SCRAM_PASSWORD = "alice", "scram-secret-alice-91"


class KafkaBroker:
    """A single-node KRaft Apache Kafka in a temporary directory.

    Three client listeners: PLAINTEXT (most tests), SASL_SSL (SCRAM-SHA-256/512 and PLAIN over TLS, with a
    certificate the harness makes) for the security tests, and PROXIED, which advertises the address of
    :attr:`proxy` (a TCP proxy in front of it) so that a test can cut its clients' connections and restore them.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.secure_port = free_port()
        self.proxied_port = free_port()
        self.proxy = TcpProxy(free_port(), self.proxied_port)
        self.controller_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "kafka.log"
        self.certs: Any = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def proxied_bootstrap(self) -> str:
        """The bootstrap of clients whose every connection goes through :attr:`proxy`."""
        return f"127.0.0.1:{self.proxy.port}"

    @property
    def secure_bootstrap(self) -> str:
        return f"127.0.0.1:{self.secure_port}"

    def secure_env(self, mechanism: str = "SCRAM-SHA-256") -> dict[str, str]:
        """The environment of a client of the SASL_SSL listener."""
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.secure_bootstrap,
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_MECHANISM": mechanism,
            "KAFKA_SASL_USERNAME": SCRAM_USER,
            "KAFKA_SASL_PASSWORD": SCRAM_PASSWORD,
            "KAFKA_SSL_CA_FILE": str(self.certs.ca),
        }

    def _write_config(self) -> Path:
        from tests.certs import make_certificates

        self.certs = make_certificates(self.workdir / "certs", "kafka")
        scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        config = self.workdir / "server.properties"
        config.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
                    f"listeners=PLAINTEXT://127.0.0.1:{self.port},SASL_SSL://127.0.0.1:{self.secure_port},"
                    f"PROXIED://127.0.0.1:{self.proxied_port},CONTROLLER://127.0.0.1:{self.controller_port}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port},SASL_SSL://127.0.0.1:{self.secure_port},"
                    f"PROXIED://127.0.0.1:{self.proxy.port}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,PROXIED:PLAINTEXT,"
                    "CONTROLLER:PLAINTEXT",
                    "sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512,PLAIN",
                    f"listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config={scram}",
                    f"listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={scram}",
                    "listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain."
                    f'PlainLoginModule required user_{SCRAM_USER}="{SCRAM_PASSWORD}";',
                    "listener.name.sasl_ssl.ssl.keystore.type=PEM",
                    f"listener.name.sasl_ssl.ssl.keystore.location={self.certs.bundle}",
                    f"log.dirs={self.workdir / 'data'}",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=4",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "num.partitions=1",
                    "auto.create.topics.enable=false",
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
                "--add-scram",
                f"SCRAM-SHA-256=[name={SCRAM_USER},password={SCRAM_PASSWORD}]",
                "--add-scram",
                f"SCRAM-SHA-512=[name={SCRAM_USER},password={SCRAM_PASSWORD}]",
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
        self.proxy.start()

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
        self.thaw()
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
        self.relaunch()

    def kill9(self) -> None:
        """``kill -9`` the broker: no clean shutdown, its log is recovered at the next :meth:`relaunch`."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def freeze(self) -> None:
        """Stop the broker's process (SIGSTOP): connections stay open, nothing answers (a GC pause, a stalled VM)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGCONT)

    def relaunch(self) -> None:
        """Start the broker again after :meth:`stop`, with its data and its port."""
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


class TcpProxy:
    """A TCP proxy on 127.0.0.1 (in a thread) that can cut every connection and refuse new ones, then restore.

    Stands between the workers and the broker's PROXIED listener: a network partition, a failover, a proxy
    restart, as the clients see it.
    """

    def __init__(self, port: int, target_port: int) -> None:
        self.port = port
        self.target_port = target_port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.cut_count = 0

    def start(self) -> None:
        if self._loop is not None:
            return
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            loop.run_until_complete(self._listen())
            ready.set()
            loop.run_forever()

        threading.Thread(target=run, daemon=True, name="tcp-proxy").start()
        ready.wait(10)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, upstream_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))
        self._writers -= {writer, upstream_writer}

    def _call(self, job: Any) -> None:
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(job(), self._loop).result(10)

    def cut(self) -> None:
        """Close every connection and stop accepting new ones (clients see resets, then refused connections)."""

        async def job() -> None:
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()
                self._server = None
            for writer in list(self._writers):
                transport = writer.transport
                transport.abort()
            self._writers.clear()

        self._call(job)
        self.cut_count += 1

    def restore(self) -> None:
        self._call(self._listen)


class EmulatorProcess:
    """``python -m tests.glpi_emulator`` on a free port, with a small sync client for its test endpoints."""

    def __init__(
        self,
        workdir: Path,
        *,
        session_ttl: float = 1440.0,
        tls: Any = None,
        latency: float = 0.0,
        capacity: int = 0,
        glpi11: bool = False,
        kind_latency: str = "",
    ) -> None:
        self.port = free_port()
        self.kind_latency = kind_latency
        self.glpi11 = glpi11
        self.workdir = workdir
        self.session_ttl = session_ttl
        self.latency = latency
        self.capacity = capacity
        self.tls = tls  # tests.certs.Certificates: serve HTTPS
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.base}/apirest.php"

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
                "--latency",
                str(self.latency),
                "--capacity",
                str(self.capacity),
                *(["--kind-latency", self.kind_latency] if self.kind_latency else []),
                *(["--certfile", str(self.tls.cert), "--keyfile", str(self.tls.key)] if self.tls else []),
                *(["--glpi11"] if self.glpi11 else []),
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
                http.request(method, f"{self.base}/_emulator/{path}", json=body, ssl=False) as resp,
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

    def http_get(self, path: str, token: str | None = "") -> tuple[int, bytes]:
        """GET a worker page; with the worker's admin token unless ``token`` says otherwise (None: no header)."""
        secret = self.env.get("GLPI_SYNC_ADMIN_TOKEN", "") if token == "" else token
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}

        async def go() -> tuple[int, bytes]:
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{self.http_port}{path}", headers=headers) as resp,
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


class ChatwootEmulatorProcess:
    """``python -m tests.chatwoot_emulator`` on a free port, with a small sync client for its test endpoints."""

    def __init__(self, workdir: Path, token: str = "agent-token-5c1d", account_id: int = 7) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.token = token
        self.account_id = account_id
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = (self.workdir / f"chatwoot-{self.port}.log").open("wb")
        self.proc = subprocess.Popen(
            [
                *(PYTHON, "-m", "tests.chatwoot_emulator", "--port", str(self.port)),
                *("--token", self.token, "--account-id", str(self.account_id)),
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

    def call(self, method: str, path: str, body: Any = None) -> Any:
        async def go() -> Any:
            async with (
                aiohttp.ClientSession() as http,
                http.request(method, f"{self.base}/_emulator/{path}", json=body) as resp,
            ):
                return await resp.json()

        return asyncio.run(go())

    def deliveries(self) -> list[dict[str, Any]]:
        return list(self.call("GET", "deliveries"))


class IngressProcess:
    """A ``glpi-sync ingress`` subprocess on a free port."""

    def __init__(self, workdir: Path, env: dict[str, str], name: str = "i1") -> None:
        self.port = free_port()
        self.env = {**os.environ, **env, "GLPI_SYNC_LOG_FORMAT": "json"}
        self.log_path = workdir / f"ingress-{name}-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [WORKER_BIN, "ingress", "--port", str(self.port)],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_port(self.port, 30, self.proc)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        code = None
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                code = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                code = self.proc.wait(10)
        self.proc = None
        return code

    def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
        async def go() -> tuple[int, dict[str, str], Any]:
            async with (
                aiohttp.ClientSession() as http,
                http.post(f"{self.base}{path}", data=body, headers=headers or {}) as resp,
            ):
                raw = await resp.read()
                return resp.status, dict(resp.headers), orjson.loads(raw) if raw[:1] in (b"{", b"[") else raw

        return asyncio.run(go())

    def get(self, path: str) -> tuple[int, bytes]:
        async def go() -> tuple[int, bytes]:
            async with aiohttp.ClientSession() as http, http.get(f"{self.base}{path}") as resp:
                return resp.status, await resp.read()

        return asyncio.run(go())

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
