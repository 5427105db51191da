"""``make bench``: how fast the worker syncs against a GLPI of a given latency and capacity. Numbers, never asserts.

One run, on the real test Kafka and the GLPI emulator (each API request holds one of ``--capacity`` php-fpm-like
slots for ``--latency`` seconds):

0. **raw capacity**: a bare aiohttp loop of followup POSTs on one reused session, at the pool's concurrency and
   twice it: what this GLPI can take at best, the 100 % of the table;
1. **one hook**: a backlog of 50 conversations × 10 messages, published before the drain is timed;
2. **8 hooks**: 10 conversations × 10 messages each;
3. **steady**: one hook, messages at half the raw capacity into open conversations, for the sync lag;
4. optionally (``--rss-conversations N``) the peak RSS of a worker holding N conversations in its tables.

Per run: messages/s, % of raw capacity, GLPI requests per message (every request of the run, tickets and users
included), worker CPU ms per event (the worker process's user+system time over the run / events), peak RSS,
p50/p99 sync lag (event time to GLPI done, from the worker's own outcome lines).

``python -m tests.bench --write docs/bench.md`` replaces the result block of ``docs/bench.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from app.kafka_io import ensure_topics
from tests.conftest import ADMIN_TOKEN, envelope, hook_envelope, load_example
from tests.harness import EmulatorProcess, KafkaBroker, WorkerProcess, unique, wait_until

TICKS = os.sysconf("SC_CLK_TCK")
PARTITIONS = 8
TIMED_EVENTS = ("message_created", "conversation_created")
MARK_BEGIN = "<!-- bench:begin -->"
MARK_END = "<!-- bench:end -->"


@dataclass
class Row:
    run: str
    messages: int
    events: int
    seconds: float
    requests: int
    cpu_seconds: float
    rss_mb: float
    lags: list[float]
    raw: float

    def cells(self) -> list[str]:
        rate = self.messages / self.seconds if self.seconds else 0.0
        lags = sorted(self.lags)
        return [
            self.run,
            f"{rate:.1f}",
            f"{100 * rate / self.raw:.0f} %" if self.raw else "-",
            f"{self.requests / self.messages:.2f}" if self.messages else "-",
            f"{100 * self.requests / self.seconds / self.raw:.0f} %" if self.raw and self.seconds else "-",
            f"{1000 * self.cpu_seconds / self.events:.2f}" if self.events else "-",
            f"{self.rss_mb:.0f}",
            f"{1000 * _quantile(lags, 0.5):.0f}" if lags else "-",
            f"{1000 * _quantile(lags, 0.99):.0f}" if lags else "-",
        ]


HEADERS = [
    "run",
    "messages/s",
    "of raw",
    "GLPI req/msg",
    "GLPI req/s of raw",
    "CPU ms/event",
    "peak RSS MB",
    "p50 lag ms",
    "p99 lag ms",
]


def _quantile(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


# ------------------------------------------------------------------------------------------- GLPI emulator


async def _raw_capacity(api_url: str, concurrency: int, seconds: float) -> float:
    """Followup POSTs per second on one reused session: GLPI's best, without our worker."""
    headers = {"App-Token": "emulator-app-token", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as http:
        async with http.get(
            f"{api_url}/initSession", headers={**headers, "Authorization": "user_token emulator-user-token"}
        ) as resp:
            session = (await resp.json())["session_token"]
        headers["Session-Token"] = session
        ticket = {"input": {"name": "bench", "content": "bench", "type": 1}}
        async with http.post(f"{api_url}/Ticket", headers=headers, data=orjson.dumps(ticket)) as resp:
            ticket_id = (await resp.json())["id"]
        done = 0
        deadline = time.monotonic() + seconds

        async def loop() -> None:
            nonlocal done
            body = orjson.dumps({"input": {"itemtype": "Ticket", "items_id": ticket_id, "content": "x"}})
            while time.monotonic() < deadline:
                async with http.post(f"{api_url}/ITILFollowup", headers=headers, data=body) as resp:
                    await resp.read()
                done += 1

        started = time.monotonic()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        return done / (time.monotonic() - started)


def _emulator_call(emulator: EmulatorProcess, method: str, path: str) -> Any:
    async def go() -> Any:
        async with aiohttp.ClientSession() as http, http.request(method, f"{emulator.base}/_emulator/{path}") as r:
            return await r.json()

    return asyncio.run(go())


def _request_count(emulator: EmulatorProcess) -> int:
    return len(_emulator_call(emulator, "GET", "requests"))


# ------------------------------------------------------------------------------------------- workloads


def _conversation(hook: int, conv: int, contact: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Conversation ``conv`` of ``hook``, from its own contact unless ``contact`` (a number) is given."""
    contact = conv if contact is None else contact
    contact_id = hook * 10**7 + contact
    body = load_example("conversation_created", id=conv)
    sender = body["meta"]["sender"]
    sender.update(
        id=contact_id, email=f"b{hook}-{contact}@bench.example", name=f"Bench {hook} {contact}", phone_number=None
    )
    # A new conversation's conversation_created carries its latest message, its first so far: message 1, whose own
    # message_created follows (and finds it synced). Any other id would be an 11th message of the conversation.
    body["messages"][0].update(id=hook * 10**9 + conv * 10**4 + 1, sender=dict(sender))
    return envelope("conversation_created", body, hook, hook), sender


def _message(hook: int, conv: int, n: int, sender: dict[str, Any], occurred_at: str | None = None) -> dict[str, Any]:
    msg_id = hook * 10**9 + conv * 10**4 + n
    msg = load_example("message_created", id=msg_id, content=f"bench hook {hook} conversation {conv} message {n}")
    msg["account"]["id"] = hook
    msg["conversation"]["id"] = conv
    msg["conversation"]["meta"]["sender"] = dict(sender)
    msg["sender"] = {**msg["sender"], "id": sender["id"], "email": sender["email"]}
    extra = {"occurred_at": occurred_at} if occurred_at else {}
    return envelope("message_created", msg, hook, hook, **extra)


def backlog(hooks: int, conversations: int, messages: int) -> tuple[list[dict[str, Any]], int]:
    """Conversations opened, then their messages interleaved across conversations (a busy morning)."""
    events: list[dict[str, Any]] = []
    senders: dict[tuple[int, int], dict[str, Any]] = {}
    for hook in range(1, hooks + 1):
        for conv in range(1, conversations + 1):
            created, senders[(hook, conv)] = _conversation(hook, conv)
            events.append(created)
    for n in range(1, messages + 1):
        for hook in range(1, hooks + 1):
            for conv in range(1, conversations + 1):
                events.append(_message(hook, conv, n, senders[(hook, conv)]))
    return events, hooks * conversations * messages


class Deployment:
    """One worker on its own topics, against the shared broker and emulator."""

    def __init__(self, kafka: KafkaBroker, emulator: EmulatorProcess, workdir: Path) -> None:
        self.kafka = kafka
        self.emulator = emulator
        self.topic = unique("bench")
        asyncio.run(ensure_topics(kafka.bootstrap, {self.topic: PARTITIONS, f"{self.topic}.dlq": 1}))
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
            "GLPI_SYNC_TOPIC": self.topic,
            "GLPI_SYNC_APP_ID": unique("bench"),
            "GLPI_SYNC_ALLOW_HTTP": "true",
            "GLPI_SYNC_ADMIN_TOKEN": ADMIN_TOKEN,
            "GLPI_SYNC_HOOK_SECRETS_DIR": str(workdir / "secrets"),
            "GLPI_SYNC_LOG_LEVEL": "INFO",  # the outcome lines carry the lag
            **EXTRA_ENV,
        }
        # A name of its own: the log (outcome lines are counted) and the data dir must not carry an earlier run's.
        self.worker = WorkerProcess(workdir, env, unique("bench"))

    def publish(self, events: list[dict[str, Any]]) -> None:
        """All at once (a backlog): pipelined sends, one flush; per-hook order is kept (one partition, idempotent)."""
        from aiokafka import AIOKafkaProducer

        async def go() -> None:
            producer = AIOKafkaProducer(
                bootstrap_servers=self.kafka.bootstrap, acks="all", enable_idempotence=True, linger_ms=5
            )
            await producer.start()
            try:
                sent = [
                    await producer.send(self.topic, orjson.dumps(e), key=str(e["hook_id"]).encode()) for e in events
                ]
                await asyncio.gather(*sent)
            finally:
                await producer.stop()

        asyncio.run(go())

    def outcomes(self) -> list[dict[str, Any]]:
        return [line for line in self.worker.outcomes() if line.get("event") in TIMED_EVENTS]

    def finished(self) -> int:
        """Outcome lines of timed events so far, counted without parsing (the bench shares the CPU)."""
        raw = self.worker.log_path.read_bytes()
        return sum(raw.count(f'"event":"{name}","outcome"'.encode()) for name in TIMED_EVENTS)

    def start(self, hooks: int) -> None:
        self.worker.start()
        self.publish([hook_envelope(self.emulator.api_url, hook_id=h, account_id=h) for h in range(1, hooks + 1)])
        wait_until(
            lambda: sum(1 for o in self.worker.outcomes() if o.get("event") == "hook_configured") >= hooks,
            120,
            what="hooks configured",
        )

    def stop(self) -> None:
        self.worker.stop()


#: Worker settings to try (``--set GLPI_SYNC_HOOK_CONCURRENCY=16``); the defaults otherwise.
EXTRA_ENV: dict[str, str] = {}
PROFILE_DIR = os.environ.get("BENCH_PROFILE")  # a directory: py-spy samples the worker of each run (collapsed)


@contextlib.contextmanager
def _profiled(name: str, pid: int) -> Iterator[None]:
    """With ``BENCH_PROFILE=dir``, py-spy samples the worker meanwhile into ``dir/<run>.txt`` (raw stacks)."""
    if not PROFILE_DIR:
        yield
        return
    out = Path(PROFILE_DIR) / (name.split(",")[0].replace(" ", "-") + ".txt")
    spy = subprocess.Popen(["py-spy", "record", "-p", str(pid), "-f", "raw", "-o", str(out), "-r", "200"])
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        spy.wait(30)


def _timed_run(name: str, dep: Deployment, events: list[dict[str, Any]], messages: int, raw: float) -> Row:
    pid = dep.worker.proc.pid
    requests_before = _request_count(dep.emulator)
    cpu_before = _cpu_seconds(pid)
    with _profiled(name, pid):
        dep.publish(events)
        wait_until(lambda: dep.finished() >= len(events), 3600, what=f"{name}: every event synced", interval=1.0)
        cpu = _cpu_seconds(pid) - cpu_before
    finished = dep.outcomes()
    stamps = [datetime.fromisoformat(o["ts"]).timestamp() for o in finished]
    # From the first outcome to the last: the drain itself, not the publishing before it.
    seconds = max(stamps) - min(stamps)
    bad = [o for o in finished if o["outcome"] != "synced"]
    if bad:
        print(f"   warning: {len(bad)} event(s) not synced, e.g. {bad[0]['msg']}")
    lags = [float(o["lag_s"]) for o in finished if o.get("lag_s") is not None and o["event"] == "message_created"]
    return Row(
        name, messages, len(events), seconds, _request_count(dep.emulator) - requests_before, cpu,
        _peak_rss_mb(pid), lags, raw,
    )  # fmt: skip


def run_backlog(
    name: str, kafka: KafkaBroker, emulator: EmulatorProcess, workdir: Path, shape: tuple[int, int, int], raw: float
) -> Row:
    hooks, conversations, messages = shape
    _emulator_call(emulator, "POST", "reset")
    dep = Deployment(kafka, emulator, workdir)
    dep.start(hooks)
    try:
        events, count = backlog(hooks, conversations, messages)
        return _timed_run(name, dep, events, count, raw)
    finally:
        dep.stop()


def run_steady(
    kafka: KafkaBroker, emulator: EmulatorProcess, workdir: Path, rate: float, seconds: float, raw: float
) -> Row:
    """Messages at ``rate`` per second into 50 open conversations of one hook; the lag is the number that counts."""
    _emulator_call(emulator, "POST", "reset")
    dep = Deployment(kafka, emulator, workdir)
    dep.start(1)
    try:
        senders = {}
        opened = []
        for conv in range(1, 51):
            created, senders[conv] = _conversation(1, conv)
            opened.append(created)
        dep.publish(opened)
        wait_until(lambda: dep.finished() >= 50, 300, what="steady: conversations open")
        total = int(rate * seconds)
        pid = dep.worker.proc.pid
        requests_before = _request_count(emulator)
        cpu_before = _cpu_seconds(pid)
        with _profiled("steady", pid):
            asyncio.run(_paced(dep, senders, total, rate))
            wait_until(lambda: dep.finished() >= 50 + total, 600, what="steady: every message synced", interval=1.0)
            cpu = _cpu_seconds(pid) - cpu_before
        finished = [o for o in dep.outcomes() if o["event"] == "message_created"]
        lags = [float(o["lag_s"]) for o in finished if o.get("lag_s") is not None]
        return Row(
            f"steady, {rate:.0f} msg/s for {seconds:.0f} s", total, total, total / rate,
            _request_count(emulator) - requests_before, cpu, _peak_rss_mb(pid), lags, raw,
        )  # fmt: skip
    finally:
        dep.stop()


async def _paced(dep: Deployment, senders: dict[int, dict[str, Any]], total: int, rate: float) -> None:
    """Publish ``total`` messages at ``rate`` per second, each dated when it is sent (its lag starts there)."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=dep.kafka.bootstrap, acks="all", linger_ms=0)
    await producer.start()
    try:
        started = time.monotonic()
        for i in range(total):
            delay = started + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            conv = i % 50 + 1
            now = datetime.now(tz=UTC).isoformat(timespec="milliseconds")
            event = _message(1, conv, 100 + i // 50, senders[conv], occurred_at=now)
            await producer.send(dep.topic, orjson.dumps(event), key=b"1")
        await producer.flush()
    finally:
        await producer.stop()


def run_rss(kafka: KafkaBroker, workdir: Path, conversations: int) -> Row:
    """A worker that holds ``conversations`` conversations in its tables: its peak RSS.

    A contact opens 100 of them (the emulator looks users up by scanning them all: 100,000 distinct contacts
    would measure the emulator's search, not the worker).
    """
    emulator = EmulatorProcess(workdir)  # no latency: this run is about memory, not speed
    emulator.start()
    dep = Deployment(kafka, emulator, workdir)
    dep.start(1)
    try:
        events = [
            _conversation(1, conv, conv % max(1, conversations // 100))[0] for conv in range(1, conversations + 1)
        ]
        return _timed_run(f"RSS with {conversations:,} conversations", dep, events, conversations, 0.0)
    finally:
        dep.stop()
        emulator.stop()


# ------------------------------------------------------------------------------------------- report


def table(rows: list[Row]) -> str:
    cells = [HEADERS, *[row.cells() for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(HEADERS))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def write_result(path: Path, text: str, block: str = "bench") -> None:
    doc = path.read_text()
    first, last = f"<!-- {block}:begin -->", f"<!-- {block}:end -->"
    begin, end = doc.index(first) + len(first), doc.index(last)
    path.write_text(doc[:begin] + "\n" + text + "\n" + doc[end:])


#: Seconds per kind of request of the GLPI 10.0.12 of issue 22 (php -S, 4 workers, MariaDB, same host), at
#: concurrency 1 (medians of 25, measured 2026-12-03): a user search 11.5 ms, a ticket read 8.4, a followup POST
#: 14.8, a ticket PUT 18.2.
REAL_GLPI_10 = "search=0.012,read=0.008,create=0.015,update=0.018,delete=0.015"


def _glpi(args: argparse.Namespace) -> str:
    if args.kind_latency:
        return f"per kind of request {args.kind_latency} (seconds), {args.capacity} slots"
    return f"{args.latency * 1000:.0f} ms per request, {args.capacity} slots"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per GLPI request, e.g. 0.05")
    parser.add_argument("--capacity", type=int, default=16, help="GLPI requests served at once, e.g. 16")
    parser.add_argument(
        "--kind-latency",
        default="",
        help=f"seconds per kind of GLPI request instead of --latency, e.g. {REAL_GLPI_10} (a real GLPI 10's)",
    )
    parser.add_argument("--block", default="bench", help="the result block of --write to replace, e.g. bench-kinds")
    parser.add_argument("--steady-seconds", type=float, default=20.0, help="length of the steady run, e.g. 30")
    parser.add_argument("--rss-conversations", type=int, default=0, help="also measure RSS with N conversations")
    parser.add_argument("--write", type=Path, help="replace the result block of this file, e.g. docs/bench.md")
    parser.add_argument(
        "--set", action="append", default=[], help="a worker setting, e.g. GLPI_SYNC_HOOK_CONCURRENCY=4"
    )
    parser.add_argument("--runs", type=int, default=3, help="runs of each backlog (the median is kept), e.g. 3")
    parser.add_argument(
        "--only", choices=["one", "eight", "steady", "rss"], help="run one of the runs, e.g. --only one"
    )
    args = parser.parse_args()
    # Stopped by a signal (a timeout, a supervisor), unwind as on Ctrl-C: the broker, emulator and worker stop too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.only == "rss" and not args.rss_conversations:
        parser.error("--only rss needs --rss-conversations N")
    EXTRA_ENV.update(item.split("=", 1) for item in args.set)
    workdir = Path(tempfile.mkdtemp(prefix="cwglpi-bench-"))
    kafka = KafkaBroker(workdir / "kafka")
    kafka.start()
    emulator = EmulatorProcess(workdir, latency=args.latency, capacity=args.capacity, kind_latency=args.kind_latency)
    emulator.start()
    rows: list[Row] = []
    try:
        raw = max(asyncio.run(_raw_capacity(emulator.api_url, c, 5.0)) for c in (args.capacity, 2 * args.capacity))
        print(f"raw capacity: {raw:.1f} followups/s ({_glpi(args)})")
        backlogs = {"one": ("one hook, 50 × 10", (1, 50, 10)), "eight": ("8 hooks, 10 × 10 each", (8, 10, 10))}
        if args.only in (None, "one", "eight"):
            # A fresh broker's JVM is cold: the first run measured Kafka warming up, not the worker (not reported).
            run_backlog("warm-up", kafka, emulator, workdir, (1, 10, 10), raw)
        for key, (name, shape) in backlogs.items():
            if args.only in (None, key):
                runs = []
                for _ in range(args.runs):
                    runs.append(run_backlog(name, kafka, emulator, workdir, shape, raw))
                    print(table(runs[-1:]).splitlines()[-1], flush=True)
                # A backlog drains in a few seconds: one run is noisy, the median of several is the figure.
                rows.append(sorted(runs, key=lambda row: row.messages / row.seconds)[len(runs) // 2])
        if args.only in (None, "steady"):
            rows.append(run_steady(kafka, emulator, workdir, raw / 2, args.steady_seconds, raw))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
        if args.rss_conversations and args.only in (None, "rss"):
            rows.append(run_rss(kafka, workdir, args.rss_conversations))
    finally:
        emulator.stop()
        kafka.stop()
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)
    settings = ", ".join(args.set) or "default worker settings"
    result = (
        f"Measured {datetime.now(tz=UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores with {settings}; GLPI "
        f"emulator: {_glpi(args)}; raw capacity {raw:.1f} followups/s; backlogs: the median of {args.runs} runs."
        "\n\n" + table(rows)
    )
    print()
    print(result)
    if args.write:
        write_result(args.write, result, args.block)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
