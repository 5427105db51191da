"""What the commands share: exit statuses and errors, Kafka, the workers' HTTP, output, common flags.

Every command reads the same environment as the worker (``KAFKA_BOOTSTRAP_SERVERS``, ``GLPI_SYNC_TOPIC``, ...).
A mistake is one line on stderr and an exit status, never a traceback:

| status | meaning |
|---|---|
| 0 | done |
| 1 | the command ran and found problems (a red doctor line, a failed check, a timeout waiting) |
| 2 | invalid input: arguments, environment values, hook settings |
| 3 | a service cannot be reached or is not ready: Kafka, its topics, a worker, GLPI |
| 4 | GLPI refused: credentials, rights, entity, category |
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
import time
import uuid
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import aiohttp
import orjson

from app.doctor import MARK
from app.kafka_io import BrokerUnreachableError, KafkaConnection, TopicMissingError, publish, require_topic
from app.settings import ToolSettings

EXIT_PROBLEMS, EXIT_INPUT, EXIT_UNREACHABLE, EXIT_REFUSED = 1, 2, 3, 4


class CliError(Exception):
    """A mistake or a failure, printed as one line (or a few), with the exit status it means."""

    def __init__(self, message: str, status: int = EXIT_INPUT) -> None:
        super().__init__(message)
        self.status = status


def product_version() -> str:
    try:
        return version("chatwoot-glpi-sync")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without an install
        return "unknown"


# ------------------------------------------------------------------------------------------------ Kafka


def kafka(env: ToolSettings) -> KafkaConnection:
    try:
        return KafkaConnection.from_settings(env)
    except (OSError, ValueError) as exc:
        raise CliError(f"Kafka security settings cannot be used: {exc}") from None


def run(coro: Any) -> Any:
    """Run one async step of a command, turning Kafka failures into one line and an exit status."""
    try:
        return asyncio.run(coro)
    except BrokerUnreachableError as exc:
        raise CliError(str(exc), EXIT_UNREACHABLE) from None
    except TopicMissingError as exc:
        raise CliError(str(exc), EXIT_UNREACHABLE) from None


def publish_to(env: ToolSettings, topic: str, what: str, envelopes: list[dict[str, Any]], batch: int = 1) -> int:
    conn = kafka(env)

    async def go() -> int:
        await require_topic(conn, topic, what)
        return await publish(conn, topic, envelopes, batch_size=batch)

    return int(run(go()))


def send_command(env: ToolSettings, event: str, hook_id: int, **payload: Any) -> str:
    """Publish a control command keyed by hook id (its hook's partition); returns its event id."""
    payload.setdefault("requested_by", getpass.getuser())
    event_id = uuid.uuid4().hex
    command = {
        "event": event,
        "hook_id": hook_id,
        "event_id": event_id,
        "payload": {k: v for k, v in payload.items() if v is not None},
    }
    publish_to(env, env.control_topic, "control", [command])
    return event_id


# ------------------------------------------------------------------------------------------------ workers


def admin_headers(env: ToolSettings) -> dict[str, str]:
    try:
        token = env.admin_secret()
    except OSError as exc:
        raise CliError(f"GLPI_SYNC_ADMIN_TOKEN_FILE cannot be read: {exc.strerror or exc}") from None
    return {"Authorization": f"Bearer {token}"} if token else {}


def worker_get(env: ToolSettings, path: str, url: str | None = None) -> tuple[int, Any]:
    """GET a worker endpoint (any worker: it forwards to the one that owns the hook)."""
    target = f"{(url or env.worker_url).rstrip('/')}{path}"
    headers = admin_headers(env)

    async def go() -> tuple[int, Any]:
        async with aiohttp.ClientSession() as http:
            for _attempt in range(15):  # 503 while the group rebalances or recovers: retry for a little while
                async with http.get(target, headers=headers, timeout=aiohttp.ClientTimeout(total=60)) as resp:
                    status, body = resp.status, await resp.json(content_type=None)
                if status != 503:
                    break
                await asyncio.sleep(2)
            return status, body

    try:
        status, body = asyncio.run(go())
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
        reason = str(exc) or type(exc).__name__
        raise CliError(
            f"no worker answered at {url or env.worker_url} ({reason}): set GLPI_SYNC_WORKER_URL to a worker's "
            "HTTP port (kubectl port-forward pod/chatwoot-glpi-sync-0 6066)",
            EXIT_UNREACHABLE,
        ) from None
    if status in (401, 403):
        raise CliError(str(body.get("error", body) if isinstance(body, dict) else body))
    return status, body


def wait_for_result(env: ToolSettings, hook_id: int, event_id: str, timeout: float) -> dict[str, Any]:
    """Poll the owning worker until it applied command ``event_id``; its outcome and reason."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = worker_get(env, f"/state/hook/{hook_id}/command/{event_id}")
        if status == 200 and isinstance(body, dict) and body.get("applied"):
            return body
        time.sleep(0.5)
    raise CliError(
        f"the worker did not confirm within {timeout:.0f} s (it may be catching up): "
        f"check with glpi-sync inspect hook --hook-id {hook_id}",
        EXIT_PROBLEMS,
    )


def report_command(env: ToolSettings, args: argparse.Namespace, hook_id: int, event_id: str, sent: str) -> int:
    """After publishing a command: print "sent", or wait for the worker's result (``--wait``)."""
    if not args.wait:
        print(f"{sent} (not waiting; see: glpi-sync inspect hook --hook-id {hook_id})")
        return 0
    result = wait_for_result(env, hook_id, event_id, args.timeout)
    if args.json:
        print_json(result)
    else:
        print(f"{result['outcome']}: {result['reason']}")
    return 0 if result["outcome"] in ("synced", "skipped") else EXIT_PROBLEMS


# ------------------------------------------------------------------------------------------------ output


def print_json(data: Any) -> None:
    print(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


def print_table(rows: list[list[str]], headers: list[str]) -> None:
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]
    for row in [headers, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def render_checks(checks: list[dict[str, Any]], prefix: str = "") -> int:
    """Print check lines; returns how many failed."""
    failed = 0
    for check in checks:
        status = check.get("status") or ("ok" if check["ok"] else "fail")
        fix = f"\n      fix: {check['fix']}" if check.get("fix") and status == "fail" else ""
        print(f"{MARK[status]} {prefix}{check['check']}: {check['detail']}{fix}")
        failed += status == "fail"
    return failed


def parse_since(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise CliError(f"not an ISO-8601 time: {text!r} (for example 2026-11-01T00:00:00Z)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# ------------------------------------------------------------------------------------------------ flags


def add_wait_flags(parser: argparse.ArgumentParser) -> None:
    interactive = sys.stdout.isatty()
    parser.add_argument(
        "--wait",
        action=argparse.BooleanOptionalAction,
        default=interactive,
        help="wait for the owning worker to apply it and print its result (default on a terminal); e.g. --no-wait",
    )
    parser.add_argument("--timeout", type=float, default=60, help="seconds to wait, e.g. --timeout 120")
    parser.add_argument("--json", action="store_true", help="print the result as JSON, e.g. --json")


def add_hook_id(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--hook-id", type=int, required=True, help="the hook's id (yours to choose, one per Chatwoot account), e.g. 7"
    )


def add_hook_filter(parser: argparse.ArgumentParser, text: str) -> None:
    """An optional ``--hook-id`` (``--hook``, its old name, still works and is not shown)."""
    parser.add_argument("--hook-id", type=int, dest="hook", help=f"{text}, e.g. --hook-id 7")
    parser.add_argument("--hook", type=int, dest="hook", help=argparse.SUPPRESS)


def add_worker_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--worker", help="a worker's URL (default GLPI_SYNC_WORKER_URL), e.g. http://127.0.0.1:6066")
