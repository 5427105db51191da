"""``make bench-ingress``: signed webhooks per second through ``glpi-sync ingress`` into the real test Kafka.

Several concurrent senders (one aiohttp session each, keep-alive, like Chatwoot's Sidekiq workers) post a
realistic mix of signed Chatwoot bodies (the examples of ``schemas/examples``: contact, conversation, message,
status events, some typing noise) for 8 hooks, for ``--seconds``. Every 200 was acknowledged by the broker
(acks=all). Numbers, never asserts: webhooks/s, p50/p99/max latency seen by the senders, statuses, and the ingress
process's CPU per webhook. ``--write docs/bench.md`` replaces the ingress block there.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import aiohttp
import orjson

from app.chatwoot.webhooks import sign
from app.kafka_io import ensure_topics
from tests.conftest import load_example
from tests.harness import IngressProcess, KafkaBroker, unique, wait_until

TICKS = os.sysconf("SC_CLK_TCK")
MARK_BEGIN = "<!-- bench-ingress:begin -->"
MARK_END = "<!-- bench-ingress:end -->"
MIX = [
    "message_created",
    "message_created",
    "message_created",
    "message_created_private_note",
    "conversation_created",
    "conversation_updated",
    "conversation_status_changed",
    "contact_updated",
    "contact_created",
    "message_updated",
]
SECRET = "bench-secret"


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def _sender(base: str, bodies: list[bytes], until: float, latencies: list[float], statuses: Counter[int]) -> None:
    async with aiohttp.ClientSession() as http:
        index = 0
        while time.monotonic() < until:
            raw = bodies[index % len(bodies)]
            hook = 1 + index % 8
            index += 1
            timestamp = str(int(time.time()))
            headers = {
                "Content-Type": "application/json",
                "X-Chatwoot-Signature": sign(SECRET, timestamp, raw),
                "X-Chatwoot-Timestamp": timestamp,
                "X-Chatwoot-Delivery": str(uuid.uuid4()),
            }
            started = time.monotonic()
            async with http.post(f"{base}/webhooks/chatwoot/{hook}", data=raw, headers=headers) as resp:
                await resp.read()
            latencies.append(time.monotonic() - started)
            statuses[resp.status] += 1


async def _load(base: str, senders: int, seconds: float) -> tuple[list[float], Counter[int], float]:
    bodies = [orjson.dumps(load_example(name)) for name in MIX]
    bodies.append(orjson.dumps({"event": "conversation_typing_on", "conversation": {"id": 57}}))
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    started = time.monotonic()
    until = started + seconds
    await asyncio.gather(*(_sender(base, bodies, until, latencies, statuses) for _ in range(senders)))
    return latencies, statuses, time.monotonic() - started


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--senders", type=int, default=16, help="concurrent senders, e.g. 16")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the run, e.g. 30")
    parser.add_argument("--write", type=Path, help="replace the ingress block of this file, e.g. docs/bench.md")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-ingress-"))
    kafka = KafkaBroker(workdir / "kafka")
    kafka.start()
    ingress = None
    try:
        topic = unique("bench-ingress")
        asyncio.run(ensure_topics(kafka.bootstrap, {topic: 8}))
        env = {"KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap, "GLPI_SYNC_TOPIC": topic, "GLPI_SYNC_LOG_LEVEL": "WARNING"}
        env.update({f"GLPI_SYNC_WEBHOOK_SECRET_{hook}": SECRET for hook in range(1, 9)})
        ingress = IngressProcess(workdir, env)
        ingress.start()
        wait_until(lambda: ingress.get("/health/ready")[0] == 200, 60, what="ingress ready")
        assert ingress.proc is not None
        asyncio.run(_load(ingress.base, args.senders, 3.0))  # warm-up: connections, metadata, JIT of the broker
        cpu_before = _cpu_seconds(ingress.proc.pid)
        latencies, statuses, elapsed = asyncio.run(_load(ingress.base, args.senders, args.seconds))
        cpu = _cpu_seconds(ingress.proc.pid) - cpu_before
        total = sum(statuses.values())
        lines = [
            f"`python -m tests.bench_ingress --senders {args.senders} --seconds {args.seconds:g}`, "
            f"{time.strftime('%Y-%m-%d', time.gmtime())}, {os.cpu_count()} cores "
            "(senders, ingress and Kafka share them)",
            "",
            "| webhooks/s | p50 ms | p99 ms | max ms | statuses | ingress CPU ms/webhook |",
            "|---|---|---|---|---|---|",
            f"| {total / elapsed:.0f} | {1000 * _quantile(latencies, 0.5):.1f}"
            f" | {1000 * _quantile(latencies, 0.99):.1f}"
            f" | {1000 * max(latencies):.1f} | {', '.join(f'{k}×{v}' for k, v in sorted(statuses.items()))}"
            f" | {1000 * cpu / total:.2f} |",
            "",
            f"mean latency {1000 * statistics.fmean(latencies):.1f} ms",
        ]
        text = "\n".join(lines)
        print(text)
        if args.write:
            current = args.write.read_text()
            head, _, rest = current.partition(MARK_BEGIN)
            _, _, tail = rest.partition(MARK_END)
            if MARK_BEGIN not in current:
                head, tail = current.rstrip() + "\n\n## Webhook ingress\n\n", "\n"
            args.write.write_text(f"{head}{MARK_BEGIN}\n{text}\n{MARK_END}{tail}")
        return 0
    finally:
        if ingress is not None:
            ingress.stop()
        kafka.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
