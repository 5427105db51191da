"""``glpi-sync doctor``: the troubleshooting guide's whole health checklist as one command.

Each line is ✔ (fine), ! (worth a look, not a failure) or ✘ (broken, with the fix). The exit status is 1 when any
line is ✘. Kafka is checked directly; workers, hooks and GLPI through a worker's HTTP port (any worker: it finds
the others and forwards per-hook checks to the worker that owns the hook, which holds the resolved tokens).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import asdict, dataclass
from typing import Any, Literal

import aiohttp
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from app.kafka_io import KafkaConnection, committed_offsets
from app.settings import ToolSettings
from app.topology import topic_specs

Level = Literal["ok", "warn", "fail", "skip"]
MARK = {"ok": "✔", "warn": "!", "fail": "✘", "skip": "–"}


@dataclass
class Line:
    check: str
    level: Level
    detail: str
    fix: str = ""

    def render(self) -> str:
        fix = f"\n      fix: {self.fix}" if self.fix and self.level != "ok" else ""
        return f"{MARK[self.level]} {self.check}: {self.detail}{fix}"


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.get(url, timeout=aiohttp.ClientTimeout(total=30)) as resp:  # the session carries the token
        if resp.content_type == "application/json":
            return resp.status, await resp.json()
        return resp.status, await resp.text()


async def kafka_lines(env: ToolSettings) -> list[Line]:
    lines: list[Line] = []
    conn = KafkaConnection.from_settings(env)
    admin = AIOKafkaAdminClient(**conn.kwargs(), request_timeout_ms=10000)
    try:
        await asyncio.wait_for(admin.start(), 15)
    except Exception as exc:
        with contextlib.suppress(Exception):
            await admin.close()
        fix = "check KAFKA_BOOTSTRAP_SERVERS (and the KAFKA_SECURITY_PROTOCOL, SASL and SSL variables) and the broker"
        return [Line("broker reachable", "fail", str(conn.unreachable(exc)), fix)]
    try:
        topics = set(await admin.list_topics())
        lines.append(Line("broker reachable", "ok", f"{env.kafka_bootstrap_servers} ({len(topics)} topics)"))
        specs = topic_specs(env)
        described = {
            t["topic"]: len(t["partitions"])
            for t in await admin.describe_topics([s.name for s in specs if s.name in topics])
            if t.get("partitions")
        }
        partitions = described.get(env.topic, env.partitions)
        for spec in specs:
            count = described.get(spec.name)
            if count is None:
                lines.append(
                    Line(
                        f"topic {spec.name}",
                        "fail",
                        "missing",
                        "start a worker (it creates its topics), or with Strimzi apply "
                        "deploy/k8s/components/strimzi-topics/topics.yaml",
                    )
                )
            elif spec.co_partitioned and count != partitions:
                lines.append(
                    Line(
                        f"topic {spec.name}",
                        "fail",
                        f"{count} partitions, but the input topic {env.topic} has {partitions}",
                        "the worker refuses to start like this: see its start-up lines for the fix",
                    )
                )
            else:
                lines.append(Line(f"topic {spec.name}", "ok", f"{count} partitions"))
        changelogs = [spec.name for spec in specs if spec.role == "changelog"]
        present = [c for c in changelogs if c in topics]
        if present:
            response = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, c) for c in present])
            for resp in response:
                for resource in resp.resources:
                    entries = {e[0]: e[1] for e in resource[4]}
                    policy = entries.get("cleanup.policy", "?")
                    lines.append(
                        Line(
                            f"changelog {resource[3]} compaction",
                            "ok" if "compact" in policy else "fail",
                            f"cleanup.policy={policy}",
                            "set cleanup.policy=compact (time retention loses state)",
                        )
                    )
        try:
            groups = await admin.describe_consumer_groups([env.app_id])
        except KafkaError:  # no coordinator for a group nobody ever joined
            groups = []
        group = groups[0].groups[0] if groups and groups[0].groups else None
        state = group[2] if group else "unknown"
        members = len(group[5]) if group else 0
        level: Level = "ok" if state == "Stable" else ("fail" if state in ("Dead", "Empty", "unknown") else "warn")
        lines.append(
            Line(
                "consumer group",
                level,
                f"{env.app_id}: {state}, {members} member(s)",
                "start the workers (kubectl get pods -l app.kubernetes.io/name=chatwoot-glpi-sync)",
            )
        )
        try:
            lag = await consumer_lag(env)
        except KafkaError as exc:
            lines.append(
                Line(
                    "consumer lag",
                    "warn",
                    f"unknown: the group's committed offsets could not be read ({type(exc).__name__})",
                    "see cwglpi_consumer_lag_messages on the workers' /metrics",
                )
            )
        else:
            lines.append(
                Line(
                    "consumer lag",
                    "ok" if lag < 1000 else "warn",
                    f"{lag} message(s) behind",
                    "see cwglpi_consumer_lag_messages and the slowest hooks in the dashboard",
                )
            )
        dlq = await _topic_size(env, env.dlq_topic) if env.dlq_topic in topics else 0
        lines.append(
            Line(
                "dead-letter topic",
                "ok" if dlq == 0 else "warn",
                f"{dlq} record(s) in {env.dlq_topic}",
                "glpi-sync dlq list, fix the cause, then glpi-sync dlq replay",
            )
        )
    finally:
        await admin.close()
    return lines


async def _topic_size(env: ToolSettings, topic: str) -> int:
    consumer = AIOKafkaConsumer(**KafkaConnection.from_settings(env).kwargs(), enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not tps:
            return 0
        begin = await consumer.beginning_offsets(tps)
        end = await consumer.end_offsets(tps)
        return sum(end[tp] - begin[tp] for tp in tps)
    finally:
        await consumer.stop()


async def consumer_lag(env: ToolSettings) -> int:
    """Records of the input topic past the group's committed offsets (all of them for a group never committed)."""
    committed = await committed_offsets(KafkaConnection.from_settings(env), env.app_id, env.topic)
    consumer = AIOKafkaConsumer(**KafkaConnection.from_settings(env).kwargs(), enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(env.topic, p) for p in consumer.partitions_for_topic(env.topic) or ()]
        end = await consumer.end_offsets(tps) if tps else {}
        return sum(max(0, end[tp] - committed.get(tp.partition, 0)) for tp in tps)
    finally:
        await consumer.stop()


async def worker_lines(env: ToolSettings, worker_url: str, hook_ids: list[int] | None) -> list[Line]:
    lines: list[Line] = []
    token = env.admin_secret()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession(headers=headers) as http:
        try:
            status, workers = await _get(http, f"{worker_url}/state/workers")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return [
                Line(
                    "workers reachable",
                    "fail",
                    f"{worker_url}: {str(exc) or type(exc).__name__}",
                    "set GLPI_SYNC_WORKER_URL to a worker's HTTP port (kubectl port-forward pod/NAME 6066)",
                )
            ]
        if status != 200 or not isinstance(workers, dict) or "workers" not in workers:
            error = workers.get("error") if isinstance(workers, dict) else str(workers)[:200]
            if status in (401, 403):
                fix = "set GLPI_SYNC_ADMIN_TOKEN (or GLPI_SYNC_ADMIN_TOKEN_FILE) here to the workers' admin token"
            else:
                fix = "is GLPI_SYNC_WORKER_URL a sync worker's HTTP port (default 6066)? see the worker's logs"
            return [Line("workers reachable", "fail", f"{worker_url} answered {status}: {error}", fix)]
        errors: dict[str, float] = {}
        stuck: list[Line] = []
        for url in workers["workers"]:
            try:
                live_status, live = await _get(http, f"{url}/health/live")
                ready_status, _ = await _get(http, f"{url}/health/ready")
                _, metrics = await _get(http, f"{url}/metrics")
                _, state = await _get(http, f"{url}/state/workers")
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                lines.append(
                    Line(
                        f"worker {url}",
                        "fail",
                        f"unreachable ({type(exc).__name__})",
                        "check the pod (kubectl describe pod) and its logs",
                    )
                )
                continue
            alive = live_status == 200
            ready = ready_status == 200
            level: Level = "ok" if alive and ready else "fail"
            lines.append(
                Line(
                    f"worker {url}",
                    level,
                    f"{'alive' if alive else 'NOT LIVE'}, "
                    f"{'ready' if ready else 'recovering (not ready)'}" + ("" if alive else f" {live}"),
                    "see the worker's logs; liveness fails when commits stall",
                )
            )
            for code, value in re.findall(r'^cwglpi_glpi_errors_total\{code="([^"]+)"\} (\S+)$', str(metrics), re.M):
                errors[code] = errors.get(code, 0.0) + float(value)
            stuck += [_stuck_line(url, partition) for partition in (state or {}).get("stuck", [])]
        lines += stuck or [Line("stuck work", "ok", "every partition with waiting records makes progress")]
        summary = ", ".join(f"{code} ×{int(n)}" for code, n in sorted(errors.items(), key=lambda kv: -kv[1])) or "none"
        lines.append(
            Line(
                "GLPI errors since the workers started",
                "ok" if not errors else "warn",
                summary,
                "docs/troubleshooting.md, section 'GLPI error codes', explains each code",
            )
        )
        _, hooks_body = await _get(http, f"{worker_url}/state/hooks?all=1")
        hooks = hooks_body.get("hooks", [])
        if hook_ids:
            hooks = [h for h in hooks if h["hook_id"] in hook_ids]
            missing = set(hook_ids) - {h["hook_id"] for h in hooks}
            lines += [Line(f"hook {h} config", "fail", "not configured", "glpi-sync hook set ...") for h in missing]
        if not hooks and not hook_ids:
            lines.append(Line("hooks", "warn", "no hook is configured", "glpi-sync hook set ..."))
        for hook in hooks:
            hid = hook["hook_id"]
            lines.append(
                Line(
                    f"hook {hid} config",
                    "ok",
                    f"account {hook['account_id']}, {hook['settings']['api_url']}"
                    f", sync_type {hook['settings']['sync_type']}, parked {hook['parked_events']}",
                )
            )
            status, body = await _get(http, f"{worker_url}/state/hook/{hid}/test")
            if status != 200:
                lines.append(Line(f"hook {hid} checks", "fail", str(body), "see the worker's logs"))
                continue
            for check in body["checks"]:
                level = check.get("status") or ("ok" if check["ok"] else "fail")
                lines.append(Line(f"hook {hid} {check['check']}", level, check["detail"], check["fix"]))
            _, state = await _get(http, f"{worker_url}/state/hook/{hid}")
            session = "open and reused" if state.get("glpi_session_open") else "none open (opened on the next event)"
            lines.append(Line(f"hook {hid} GLPI session", "ok", f"{session}, held by {state.get('served_by')}"))
            requests = state.get("glpi_requests")
            if isinstance(requests, dict):
                floor = requests.get("latency_floor_ms")
                detail = (
                    f"{requests['limit']} at once now (at most {requests['maximum']}), {requests['inflight']} running"
                    + (f", GLPI answers in {floor} ms when not busy" if floor is not None else "")
                )
                lines.append(Line(f"hook {hid} GLPI requests", "ok", detail))
    return lines


def _stuck_line(worker: str, stuck: dict[str, Any]) -> Line:
    """A stuck partition as the worker described it (``app/progress.py``)."""
    who = f"hook {stuck['hook']}" if stuck.get("hook") else "no event of it held by the worker"
    detail = (
        f"partition {stuck['partition']} of {stuck['topic']} at offset {stuck['offset']} ({who}, "
        f"{stuck['pending']} waiting): no progress for {stuck['seconds']:.0f} s on {worker}"
    )
    if stuck.get("running"):
        fix = "its event still runs (a very slow GLPI or Chatwoot?): glpi-sync trace, the worker's log"
    else:
        fix = "the worker reads it again from the committed offset by itself; if it stays, restart the worker"
    return Line("stuck work", "fail", detail, fix)


def _counters(text: str, name: str) -> dict[str, float]:
    """``{label value: count}`` of one single-label counter in Prometheus text."""
    found: dict[str, float] = {}
    for match in re.finditer(rf'^{name}_total{{\w+="([^"]*)"}} (\S+)$', text, re.M):
        found[match.group(1)] = float(match.group(2))
    return found


async def ingress_lines(ingress_urls: list[str]) -> list[Line]:
    """Each ingress: ready (producer connected, topic there), and the deliveries it refused since it started."""
    if not ingress_urls:
        fix = "glpi-sync doctor --ingress http://<ingress>:8080 (or GLPI_SYNC_INGRESS_URL)"
        return [Line("webhook ingress", "skip", "not checked (no ingress URL given)", fix)]
    lines: list[Line] = []
    async with aiohttp.ClientSession() as http:
        for url in (u.rstrip("/") for u in ingress_urls):
            try:
                status, body = await _get(http, f"{url}/health/ready")
                _, metrics = await _get(http, f"{url}/metrics")
            except (aiohttp.ClientError, TimeoutError) as exc:
                fix = f"start glpi-sync ingress there, or check the URL ({type(exc).__name__})"
                lines.append(Line(f"ingress {url}", "fail", "not reachable", fix))
                continue
            if status != 200:
                reason = body.get("reason", body) if isinstance(body, dict) else body
                lines.append(Line(f"ingress {url}", "fail", f"not ready: {reason}", "see the ingress's log"))
                continue
            lines.append(Line(f"ingress {url}", "ok", f"ready, producing to {body.get('topic')}"))
            text = metrics if isinstance(metrics, str) else ""
            refused = _counters(text, "cwglpi_ingress_signature_failures")
            if any(refused.values()):
                shown = ", ".join(f"{k} ×{int(v)}" for k, v in sorted(refused.items()) if v)
                fix = 'a rotated webhook secret? see docs/troubleshooting.md "Webhook ingress"'
                lines.append(Line(f"ingress {url} deliveries", "warn", f"refused since start: {shown}", fix))
            errors = _counters(text, "cwglpi_ingress_produce_errors")
            if any(errors.values()):
                shown = ", ".join(f"{k} ×{int(v)}" for k, v in sorted(errors.items()) if v)
                fix = "Kafka was unavailable to the ingress (503s; Chatwoot retries them)"
                lines.append(Line(f"ingress {url} produce", "warn", f"503 answers since start: {shown}", fix))
    return lines


async def run(
    env: ToolSettings, worker_url: str, hook_ids: list[int] | None, ingress_urls: list[str] | None = None
) -> list[Line]:
    lines = await kafka_lines(env)  # the workers and ingresses are checked even when the broker is not reachable
    lines += await worker_lines(env, worker_url.rstrip("/"), hook_ids)
    return lines + await ingress_lines(ingress_urls or [])


def as_json(lines: list[Line]) -> list[dict[str, Any]]:
    return [asdict(line) for line in lines]
