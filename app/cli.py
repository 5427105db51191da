"""``glpi-sync``: the command line (worker, hooks, DLQ, inspection, doctor, the demo).

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
import logging
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from pydantic import ValidationError

from app.events import HookSettings
from app.kafka_io import BrokerUnreachableError, KafkaConnection, TopicMissingError, publish, require_topic
from app.settings import SettingsError, ToolSettings, load
from app.sync.decide import validate_hook_settings

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


# ------------------------------------------------------------------------------------------------ input files


def _load_records(path: str) -> list[Any]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"{path}: {exc.strerror or exc}") from None
    stripped = text.strip()
    if not stripped:
        return []
    try:
        data = orjson.loads(stripped)
        return data if isinstance(data, list) else [data]
    except orjson.JSONDecodeError:
        records = []
        for number, line in enumerate(stripped.splitlines(), 1):
            if line.strip():
                try:
                    records.append(orjson.loads(line))
                except orjson.JSONDecodeError as exc:
                    raise CliError(f"{path}:{number}: not JSON ({exc.msg})") from None
        return records


def to_envelopes(records: list[Any], hook_id: int | None, account_id: int | None) -> list[dict[str, Any]]:
    """Envelopes as given, or raw Chatwoot webhook bodies wrapped with ``hook_id``/``account_id``."""
    envelopes = []
    for index, record in enumerate(records):
        if not isinstance(record, dict) or not isinstance(record.get("event"), str):
            raise CliError(f"record {index}: expected a JSON object with an 'event' name")
        if "payload" in record and "hook_id" in record:
            envelopes.append(record)
            continue
        if hook_id is None:
            raise CliError(f"record {index} is a raw Chatwoot body: pass --hook-id (and --account-id)")
        account = account_id
        if account is None and isinstance(record.get("account"), dict):
            account = record["account"].get("id")
        if account is None:
            raise CliError(f"record {index}: no account id in the body; pass --account-id")
        envelopes.append({"event": record["event"], "hook_id": hook_id, "account_id": int(account), "payload": record})
    return envelopes


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


def _admin_headers(env: ToolSettings) -> dict[str, str]:
    try:
        token = env.admin_secret()
    except OSError as exc:
        raise CliError(f"GLPI_SYNC_ADMIN_TOKEN_FILE cannot be read: {exc.strerror or exc}") from None
    return {"Authorization": f"Bearer {token}"} if token else {}


def worker_get(env: ToolSettings, path: str, url: str | None = None) -> tuple[int, Any]:
    """GET a worker endpoint (any worker: it forwards to the one that owns the hook)."""
    target = f"{(url or env.worker_url).rstrip('/')}{path}"
    headers = _admin_headers(env)

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


# ------------------------------------------------------------------------------------------------ output


def _print_json(data: Any) -> None:
    print(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


def _table(rows: list[list[str]], headers: list[str]) -> None:
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]
    for row in [headers, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


MARK = {"ok": "✔", "fail": "✘", "skip": "–", "warn": "!"}


def render_checks(checks: list[dict[str, Any]], prefix: str = "") -> int:
    """Print check lines; returns how many failed."""
    failed = 0
    for check in checks:
        status = check.get("status") or ("ok" if check["ok"] else "fail")
        fix = f"\n      fix: {check['fix']}" if check.get("fix") and status == "fail" else ""
        print(f"{MARK[status]} {prefix}{check['check']}: {check['detail']}{fix}")
        failed += status == "fail"
    return failed


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


def _report(env: ToolSettings, args: argparse.Namespace, hook_id: int, event_id: str, sent: str) -> int:
    """After publishing a command: print "sent", or wait for the worker's result (``--wait``)."""
    if not args.wait:
        print(f"{sent} (not waiting; see: glpi-sync inspect hook --hook-id {hook_id})")
        return 0
    result = wait_for_result(env, hook_id, event_id, args.timeout)
    if args.json:
        _print_json(result)
    else:
        print(f"{result['outcome']}: {result['reason']}")
    return 0 if result["outcome"] in ("synced", "skipped") else EXIT_PROBLEMS


# ------------------------------------------------------------------------------------------------ hook set


def _token_ref(env: ToolSettings, inline: str | None, var: str | None, file: str | None, name: str) -> Any:
    given = [v for v in (inline, var, file) if v]
    if len(given) > 1:
        raise CliError(f"give the {name} once: --{name}, --{name}-env or --{name}-file")
    if var:
        return {"env": var}
    if file:
        path = Path(file)
        return {"file": str(path if path.is_absolute() else env.hook_secrets_dir / path)}
    return inline


def _resolve_here(env: ToolSettings, settings: HookSettings) -> tuple[str | None, str]:
    """The tokens as this machine sees them, to test them (the worker resolves them again in its own place)."""
    from app.secrets import HookConfigError, hook_policy, resolve_token

    policy = hook_policy(env)
    try:
        app_token = resolve_token(settings.app_token, "app_token", policy)
        user_token = resolve_token(settings.user_token, "user_token", policy)
    except HookConfigError as exc:
        raise CliError(f"{exc} (here, where the hook is tested; --no-test skips the test)") from None
    assert user_token is not None
    return app_token, user_token


def _check_chatwoot(env: ToolSettings, settings: HookSettings, account_id: int) -> None:
    """Two-way: the Chatwoot token works (``/api/v1/profile``) and belongs to a member of the hook's account."""
    from app.chatwoot.api import ChatwootClient, ChatwootError, ChatwootRefusedError
    from app.secrets import HookConfigError, hook_policy, resolve_token

    try:
        token = resolve_token(settings.chatwoot_token, "chatwoot_token", hook_policy(env))
    except HookConfigError as exc:
        raise CliError(f"{exc} (here, where the hook is tested; --no-test skips the test)") from None
    url = settings.chatwoot_url or ""
    if not token:
        raise CliError("two-way needs a Chatwoot token (--chatwoot-token-env or --chatwoot-token-file)")

    async def go() -> dict[str, Any]:
        async with ChatwootClient(url, account_id, token) as client:
            return await client.profile()

    try:
        profile = asyncio.run(go())
    except ChatwootRefusedError as exc:
        raise CliError(f"two-way: {exc}", EXIT_REFUSED) from None
    except (ChatwootError, aiohttp.ClientError, OSError) as exc:
        raise CliError(
            f"two-way: Chatwoot at {settings.chatwoot_url} cannot be reached ({exc})", EXIT_UNREACHABLE
        ) from None
    accounts = [a.get("id") for a in profile.get("accounts", []) if isinstance(a, dict)]
    if account_id not in accounts:
        raise CliError(
            f"two-way: the Chatwoot token's user ({profile.get('name')}) is not a member of account {account_id}",
            EXIT_REFUSED,
        )
    print(f"Chatwoot token valid: {profile.get('name')}, member of account {account_id}")


def cmd_hook_set(args: argparse.Namespace, env: ToolSettings) -> int:
    from app.glpi_checks import glpi_checks
    from app.secrets import hook_policy

    raw_settings: dict[str, Any] = {
        "api_url": args.api_url,
        "app_token": _token_ref(env, args.app_token, args.app_token_env, args.app_token_file, "app-token"),
        "user_token": _token_ref(env, args.user_token, args.user_token_env, args.user_token_file, "user-token"),
        "entity_id": args.entity_id,
        "sync_type": args.sync_type,
        "ticket_type": args.ticket_type,
        "category_id": args.category_id,
        "timezone": args.timezone,
        "notify_requester": args.notify_requester,
        "phone_region": args.phone_region,
        "match_by_phone": args.match_by_phone,
        "two_way": args.two_way,
        "chatwoot_url": args.chatwoot_url,
        "chatwoot_token": _token_ref(
            env, args.chatwoot_token, args.chatwoot_token_env, args.chatwoot_token_file, "chatwoot-token"
        ),
        "two_way_private_followups": args.private_followups,
        "two_way_resolve_on_solution": args.resolve_on_solution,
    }
    if not raw_settings["user_token"]:
        raise CliError("a user token is required (--user-token-env, --user-token-file or --user-token)")
    try:
        settings = HookSettings.model_validate({k: v for k, v in raw_settings.items() if v is not None})
    except ValidationError as exc:
        fields = ", ".join(".".join(str(p) for p in e["loc"]) + f" ({e['msg']})" for e in exc.errors())
        raise CliError(f"invalid hook settings: {fields}") from None
    settings, problems = validate_hook_settings(
        settings, allow_http=env.allow_http or args.allow_http, policy=hook_policy(env)
    )
    if problems:
        raise CliError("invalid hook settings:\n  - " + "\n  - ".join(problems))
    if not args.no_test:
        app_token, user_token = _resolve_here(env, settings)
        checks = asyncio.run(
            glpi_checks(settings, app_token, user_token, hook_hint="run hook set again", timeout_s=env.glpi_timeout)
        )
        failed = [c for c in checks if not c.ok]
        render_checks([c.as_dict() for c in checks])
        if failed:
            unreachable = failed[0].check in ("GLPI reachable", "TLS certificate valid")
            raise CliError(
                f"hook {args.hook_id} not configured: GLPI {'cannot be reached' if unreachable else 'refused'}",
                EXIT_UNREACHABLE if unreachable else EXIT_REFUSED,
            )
        print("GLPI connection successful")
        if settings.two_way:
            _check_chatwoot(env, settings, args.account_id)
    event_id = uuid.uuid4().hex
    envelope = {
        "event": "hook_configured",
        "hook_id": args.hook_id,
        "account_id": args.account_id,
        "event_id": event_id,
        "payload": {
            "status": args.status,
            "account_features": args.features.split(",") if args.features else [],
            "settings": settings.model_dump(mode="json", exclude_none=True),
        },
    }
    # Operators configure hooks on the control topic (accepted whatever GLPI_SYNC_HOOK_CONFIG_SOURCE says).
    publish_to(env, env.control_topic, "control", [envelope])
    return _report(env, args, args.hook_id, event_id, f"hook {args.hook_id} configuration sent ({args.status})")


# ------------------------------------------------------------------------------------------------ publish, DLQ


def cmd_publish(args: argparse.Namespace, env: ToolSettings) -> int:
    envelopes = to_envelopes(_load_records(args.file), args.hook_id, args.account_id)
    topic = args.topic or env.topic
    count = publish_to(env, topic, "input", envelopes, batch=1 if env.embedded_broker else 2)
    print(f"published {count} event(s) to {topic}")
    return 0


def _dlq_entry(record: Any) -> dict[str, Any]:
    headers = {k: v.decode("utf-8", "replace") for k, v in (record.headers or ())}
    event, hook_id = None, None
    try:
        parsed = orjson.loads(record.value)
        if isinstance(parsed, dict):
            event = parsed.get("event") if isinstance(parsed.get("event"), str) else None
            hook_id = parsed.get("hook_id") if isinstance(parsed.get("hook_id"), int) else None
    except orjson.JSONDecodeError:
        pass
    if hook_id is None and record.key and record.key.isdigit():
        hook_id = int(record.key)
    return {
        "dlq_offset": record.offset,
        "dlq_partition": record.partition,
        "failed_at": headers.get("cwglpi.failed_at", ""),
        "timestamp": record.timestamp / 1000,
        "hook_id": hook_id,
        "event": event,
        "source": f"{headers.get('__connect.errors.topic', '?')}/{headers.get('__connect.errors.partition', '?')}"
        f"@{headers.get('__connect.errors.offset', '?')}",
        "stage": headers.get("__connect.errors.stage", ""),
        "error_class": headers.get("__connect.errors.exception.class.name", ""),
        "glpi_code": headers.get("cwglpi.glpi.code", ""),
        "reason": headers.get("__connect.errors.exception.message", ""),
        "truncated": headers.get("cwglpi.value.truncated", ""),
        "replayed_from": headers.get("cwglpi.replayed_from", ""),
    }


def _since(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise CliError(f"not an ISO-8601 time: {text!r} (for example 2026-11-01T00:00:00Z)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _dlq_records(env: ToolSettings) -> list[Any]:
    from app.kafka_io import read_topic

    return list(run(read_topic(kafka(env), env.dlq_topic)))


def cmd_dlq_list(args: argparse.Namespace, env: ToolSettings) -> int:
    entries = [_dlq_entry(r) for r in _dlq_records(env)]
    since = _since(args.since)
    if args.hook is not None:
        entries = [e for e in entries if e["hook_id"] == args.hook]
    if since is not None:
        entries = [e for e in entries if e["timestamp"] >= since.timestamp()]
    entries = entries[-args.limit :] if args.limit else entries
    if args.json:
        _print_json(entries)
        return 0
    if not entries:
        print(f"{env.dlq_topic}: no dead-lettered record" + (f" for hook {args.hook}" if args.hook else ""))
        return 0
    for e in entries:
        where = f"#{e['dlq_partition']}:{e['dlq_offset']}  {e['failed_at']}  hook {e['hook_id']}"
        cut = f"  (cut; {e['truncated']} bytes at the source)" if e["truncated"] else ""
        print(f"{where}  {e['event'] or '(unparsed)'}  from {e['source']}{cut}")
        print(f"    {e['stage']}: {e['reason']}")
    print(f"{len(entries)} dead-lettered record(s) in {env.dlq_topic}")
    return 0


def cmd_dlq_replay(args: argparse.Namespace, env: ToolSettings) -> int:
    from app.kafka_io import publish_raw, read_record

    if not args.all and not args.offset and args.hook is None:
        raise CliError("choose what to replay: --offset N (repeatable), --hook-id H, or --all")
    conn = kafka(env)
    selected, parse_failures = [], 0
    for record in _dlq_records(env):
        entry = _dlq_entry(record)
        if args.offset and record.offset not in args.offset:
            continue
        if args.hook is not None and entry["hook_id"] != args.hook:
            continue
        if entry["stage"] == "parse" and not args.force:
            parse_failures += 1  # they failed to parse: replayed as they are, they can only fail again
            continue
        value = record.value
        if entry["truncated"]:  # cut in the DLQ: read the whole record back from its source
            topic, _, rest = entry["source"].partition("/")
            partition, _, offset = rest.partition("@")
            source = run(read_record(conn, topic, int(partition), int(offset)))
            if source is None:
                print(f"warning: DLQ record #{record.offset} was cut and its source {entry['source']} is gone")
                continue
            value = source.value
        # Key by the envelope's hook id when it has one, so the replay lands on the hook's partition.
        key = str(entry["hook_id"]).encode() if entry["hook_id"] is not None else record.key
        headers = [("cwglpi.replayed_from", f"{env.dlq_topic}:{record.partition}:{record.offset}".encode())]
        selected.append((key, value, headers))
    if parse_failures:
        print(f"warning: {parse_failures} record(s) that failed to parse are not replayed (--force replays them)")
    if args.dry_run:
        print(f"would replay {len(selected)} record(s) onto {env.topic}")
        return 0
    count = run(publish_raw(conn, env.topic, selected))
    print(f"replayed {count} record(s) onto {env.topic} (safe to repeat: the sync never writes anything twice)")
    return 0


def cmd_dlq_purge(args: argparse.Namespace, env: ToolSettings) -> int:
    """Delete dead letters older than ``--before`` (Kafka deletes a partition's oldest records only)."""
    from app.kafka_io import delete_before, publish_raw

    before = _since(args.before)
    assert before is not None
    conn = kafka(env)
    records = _dlq_records(env)
    old = [r for r in records if r.timestamp / 1000 < before.timestamp()]
    doomed = [r for r in old if args.hook is None or _dlq_entry(r)["hook_id"] == args.hook]
    kept = [r for r in old if r not in doomed]
    if args.dry_run or not doomed:
        print(f"would purge {len(doomed)} record(s) older than {before.isoformat()}" if doomed else "nothing to purge")
        return 0
    # Kafka cannot delete one record in the middle: other hooks' older records are copied to the end first.
    moved = [
        (r.key, r.value, [*(r.headers or ()), ("cwglpi.dlq.kept_from", f"{r.partition}:{r.offset}".encode())])
        for r in kept
    ]
    if moved:
        run(publish_raw(conn, env.dlq_topic, moved))
    cut: dict[int, int] = {}
    for r in old:
        cut[r.partition] = max(cut.get(r.partition, 0), r.offset + 1)
    run(delete_before(conn, env.dlq_topic, cut))
    extra = f"; {len(moved)} older record(s) of other hooks were kept (moved to the end)" if moved else ""
    print(f"purged {len(doomed)} dead-lettered record(s) older than {before.isoformat()}{extra}")
    return 0


# ------------------------------------------------------------------------------------------------ hooks, state

HOOK_COMMANDS = {
    "enable": "hook_enable",
    "disable": "hook_disable",
    "pause": "hook_pause",
    "resume": "hook_resume",
    "skip": "hook_skip",
}


def cmd_hook_command(args: argparse.Namespace, env: ToolSettings) -> int:
    event = HOOK_COMMANDS[args.hook_command]
    event_id = send_command(env, event, args.hook_id, reason=getattr(args, "reason", None) or None)
    return _report(env, args, args.hook_id, event_id, f"{event} sent for hook {args.hook_id}")


def cmd_hook_test(args: argparse.Namespace, env: ToolSettings) -> int:
    status, body = worker_get(env, f"/state/hook/{args.hook_id}/test", args.worker)
    if status != 200:
        raise CliError(str(body.get("error", body)), EXIT_PROBLEMS)
    if args.json:
        _print_json(body)
        return 1 if any(not c["ok"] for c in body["checks"]) else 0
    return 1 if render_checks(body["checks"]) else 0


def cmd_hook_list(args: argparse.Namespace, env: ToolSettings) -> int:
    status, body = worker_get(env, "/state/hooks?all=1", args.worker)
    hooks = body.get("hooks", []) if status == 200 else []
    if args.json:
        _print_json(hooks)
        return 0
    if not hooks:
        print("no hook is known to the workers yet (glpi-sync hook set ...)")
        return 0
    rows = [
        [
            str(h["hook_id"]),
            str(h.get("account_id") or "-"),
            str(h.get("state", h.get("status"))),
            str(h.get("parked_events", 0)),
            str(h.get("set_aside_events", 0)),
            (h.get("settings") or {}).get("api_url", "-"),
            str(h.get("served_by", "")),
        ]
        for h in hooks
    ]
    _table(rows, ["HOOK", "ACCOUNT", "STATE", "PARKED", "SET ASIDE", "GLPI", "WORKER"])
    return 0


def cmd_inspect(args: argparse.Namespace, env: ToolSettings) -> int:
    paths = {
        "hook": f"/state/hook/{args.hook_id}",
        "contact": f"/state/hook/{args.hook_id}/contact/{args.id}",
        "conversation": f"/state/hook/{args.hook_id}/conversation/{args.id}",
    }
    if args.kind != "hook" and args.id is None:
        raise CliError(f"inspect {args.kind} needs the Chatwoot {args.kind} id")
    status, body = worker_get(env, paths[args.kind], args.worker)
    _print_json(body)
    return 0 if status == 200 else EXIT_PROBLEMS


def glpi_ticket_link(api_url: str, ticket_id: int) -> str:
    """The GLPI web page of a ticket, from the hook's API URL (``…/apirest.php`` → ``…/front/ticket.form.php``)."""
    root = api_url.rstrip("/").removesuffix("/apirest.php")
    return f"{root}/front/ticket.form.php?id={ticket_id}"


def cmd_trace(args: argparse.Namespace, env: ToolSettings) -> int:
    status, body = worker_get(env, f"/state/hook/{args.hook_id}/conversation/{args.id}", args.worker)
    if status != 200:
        raise CliError(str(body.get("error") or f"the worker answered HTTP {status}"), EXIT_PROBLEMS)
    conv = body["conversation"]
    _status, hook = worker_get(env, f"/state/hook/{args.hook_id}", args.worker)
    api_url = ((hook or {}).get("settings") or {}).get("api_url") if _status == 200 else None
    ticket_id = conv.get("ticket_id")
    link = glpi_ticket_link(api_url, ticket_id) if api_url and ticket_id else None
    if args.json:
        _print_json({**body, "ticket_link": link})
        return 0
    print(f"conversation {args.id} of hook {args.hook_id} (account {conv['account_id']})")
    print(f"  ticket      {ticket_id if ticket_id else 'none yet'}" + (f"  {link}" if link else ""))
    if conv.get("replaced_ticket_ids"):
        replaced = ", ".join(str(t) for t in conv["replaced_ticket_ids"])
        print(f"  replaced    {replaced} (latest because it was {conv.get('replaced_because') or 'replaced'})")
    print(f"  status      {conv.get('status') or '-'}; last synced message {conv.get('last_synced_message_id') or '-'}")
    synced = [m for m in body.get("messages", []) if m.get("followup_id")]
    print(f"  messages    {len(synced)} with a followup")
    if conv.get("pending"):
        print(
            f"  in flight   {conv['pending']['op']} (an intent: after a crash the worker looks it up before any POST)"
        )
    history = conv.get("history") or []
    if not history:
        print("  no event of this conversation was traced yet (traces start with this version)")
        return 0
    print()
    rows = [
        [e["at"], e["event"], e["source"], e["outcome"], _ids(e.get("glpi_ids") or {}), e["reason"]] for e in history
    ]
    _table(rows, ["TIME", "EVENT", "FROM", "OUTCOME", "GLPI", "REASON"])
    return 0


def _ids(ids: dict[str, int]) -> str:
    return ",".join(f"{name.removesuffix('_id')} {value}" for name, value in sorted(ids.items())) or "-"


def cmd_repair(args: argparse.Namespace, env: ToolSettings) -> int:
    glpi_id = None if args.clear else args.glpi_id
    if glpi_id is None and not args.clear:
        raise CliError("give --glpi-id N, or --clear to forget the mapping")
    if args.kind == "contact":
        event_id = send_command(
            env, "set_contact_mapping", args.hook_id, contact_id=args.id, glpi_id=glpi_id, glpi_itemtype=args.itemtype
        )
    else:
        event_id = send_command(env, "set_conversation_mapping", args.hook_id, conversation_id=args.id, glpi_id=glpi_id)
    return _report(env, args, args.hook_id, event_id, f"mapping change for {args.kind} {args.id} sent")


def cmd_resync(args: argparse.Namespace, env: ToolSettings) -> int:
    field = "contact_id" if args.kind == "contact" else "conversation_id"
    event_id = send_command(env, f"resync_{args.kind}", args.hook_id, **{field: args.id})
    return _report(env, args, args.hook_id, event_id, f"resync of {args.kind} {args.id} requested")


REPLAYED_BY_RESET = "cwglpi.replayed_by"


def replayable(records: list[Any]) -> tuple[list[Any], dict[str, int]]:
    """The records a reset replays, and why the others are left out.

    Left out: the product's own earlier replays (a second reset would replay them again, and the DLQ would double),
    records that can never parse (they would only be dead-lettered again), and hook configuration: a reset rebuilds
    mappings, it must not bring back an older configuration or undo an operator's ``hook disable``.
    """
    from app.events import HookConfigured, HookRemoved, InvalidEnvelopeError, parse_envelope

    kept: list[Any] = []
    skipped: dict[str, int] = {}

    def skip(why: str) -> None:
        skipped[why] = skipped.get(why, 0) + 1

    for record in records:
        if any(key == REPLAYED_BY_RESET for key, _ in record.headers or ()):
            skip("earlier replay(s) of a reset")
            continue
        try:
            parsed = parse_envelope(record.value)
        except InvalidEnvelopeError:
            skip("record(s) that cannot be parsed (see glpi-sync dlq list)")
            continue
        if isinstance(parsed, HookConfigured | HookRemoved):
            skip("hook configuration record(s) (the current configuration stays)")
            continue
        kept.append(record)
    return kept, skipped


def cmd_reset(args: argparse.Namespace, env: ToolSettings) -> int:
    from app.kafka_io import committed_offsets, end_offsets, publish_raw, read_topic_since

    since = _since(args.since)
    assert since is not None
    conn = kafka(env)
    hook_records = [r for r in run(read_topic_since(conn, env.topic, since)) if r.key == str(args.hook_id).encode()]
    records, skipped = replayable(hook_records)
    print(f"hook {args.hook_id}: {len(records)} event(s) since {since.isoformat()} will be replayed")
    for why, count in sorted(skipped.items()):
        print(f"  not replayed: {count} {why}")
    if args.dry_run:
        return 0
    send_command(env, "hook_reset", args.hook_id, reason=f"replay since {since.isoformat()}")
    _wait_for(env, args.hook_id, lambda hook: bool(hook.get("rebuilding")), "the reset to be applied")
    replay = [(r.key, r.value, [(REPLAYED_BY_RESET, b"hook-reset")]) for r in records]
    for start in range(0, len(replay), 100):
        chunk = replay[start : start + 100]
        run(publish_raw(conn, env.topic, chunk))
        _progress("published", start + len(chunk), len(replay))
    print()
    ends = run(end_offsets(conn, env.topic, sorted({r.partition for r in records})))
    deadline = time.monotonic() + args.timeout
    while True:
        done = run(committed_offsets(conn, env.app_id, env.topic))
        behind = sum(max(0, end - done.get(p, 0)) for p, end in ends.items())
        _progress("synced", len(replay) - min(behind, len(replay)), len(replay))
        if behind == 0:
            break
        if time.monotonic() > deadline:
            print()
            raise CliError(f"the worker has not caught up after {args.timeout}s; run the reset again (safe)", 1)
        time.sleep(1)
    print()
    send_command(env, "hook_rebuilt", args.hook_id)
    _wait_for(env, args.hook_id, lambda hook: not hook.get("rebuilding"), "the rebuild to be closed")
    print(f"hook {args.hook_id} rebuilt from {len(replay)} event(s); existing GLPI objects were adopted, not copied")
    return 0


def _progress(label: str, done: int, total: int) -> None:
    if not sys.stdout.isatty():
        if done == total:
            print(f"{label:>9} {done}/{total}", end="")
        return
    width = 30
    filled = int(width * done / total) if total else width
    sys.stdout.write(f"\r{label:>9} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    sys.stdout.flush()


def _wait_for(
    env: ToolSettings, hook_id: int, predicate: Callable[[Any], bool], what: str, timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = worker_get(env, f"/state/hook/{hook_id}")
        if status == 200 and predicate(body):
            return
        time.sleep(0.5)
    raise CliError(f"timed out waiting for {what}", EXIT_PROBLEMS)


def cmd_doctor(args: argparse.Namespace, env: ToolSettings) -> int:
    from app import doctor

    ingress = args.ingress or [u.strip() for u in env.ingress_url.split(",") if u.strip()]
    lines = asyncio.run(doctor.run(env, args.worker or env.worker_url, args.hook_id or None, ingress))
    failed = sum(line.level == "fail" for line in lines)
    if args.json:
        _print_json({"ok": not failed, "checks": doctor.as_json(lines)})
    else:
        for line in lines:
            print(line.render())
        print(f"{len(lines)} checks: {failed} failed" if failed else f"{len(lines)} checks: all good")
    return EXIT_PROBLEMS if failed else 0


def cmd_worker(args: argparse.Namespace, env: ToolSettings) -> int:
    from app.settings import WorkerSettings
    from app.worker import run_worker

    try:
        worker_env = load(WorkerSettings)
    except SettingsError as exc:
        raise CliError("invalid configuration:\n  " + "\n  ".join(exc.lines)) from None
    return run_worker(worker_env)


def _backfill_account(env: ToolSettings, args: argparse.Namespace) -> int:
    if args.account_id is not None:
        return int(args.account_id)
    try:
        status, body = worker_get(env, f"/state/hook/{args.hook_id}")
    except CliError:
        status, body = 0, None
    account = body.get("account_id") if status == 200 and isinstance(body, dict) else None
    if not isinstance(account, int):
        raise CliError(
            f"cannot learn hook {args.hook_id}'s Chatwoot account from a worker (is the hook configured, the worker "
            "reachable at GLPI_SYNC_WORKER_URL with GLPI_SYNC_ADMIN_TOKEN?): pass --account-id"
        )
    return account


def _backfill_token(args: argparse.Namespace) -> str:
    if args.api_token_file:
        try:
            token = Path(args.api_token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise CliError(f"cannot read --api-token-file {args.api_token_file}: {exc.strerror}") from None
    else:
        token = os.environ.get(args.api_token_env, "").strip()
        if not token:
            raise CliError(f"environment variable {args.api_token_env} (--api-token-env) is not set or empty")
    if not token:
        raise CliError(f"--api-token-file {args.api_token_file} is empty")
    return token


def cmd_backfill(args: argparse.Namespace, env: ToolSettings) -> int:
    from app.backfill.run import Checkpoint, Scope, Summary, backfill
    from app.chatwoot.api import ChatwootClient, ChatwootError, ChatwootRefusedError
    from app.kafka_io import open_publisher

    if not args.chatwoot_url.startswith(("https://", "http://")):
        raise CliError(f"--chatwoot-url must start with https:// (got {args.chatwoot_url!r})")
    token = _backfill_token(args)
    account = _backfill_account(env, args)
    since = _since(args.since)
    scope = Scope(status=args.status, since=since, conversation=args.conversation)
    path = None if args.dry_run else Path(args.checkpoint or f"glpi-sync-backfill-{args.hook_id}.json")
    if path is not None and args.fresh and path.exists():
        path.unlink()
    checkpoint = Checkpoint(path)
    conn = kafka(env)

    def progress(done: int, total: int | None) -> None:
        if sys.stderr.isatty():
            shown = f"{done}/{total}" if total else str(done)
            width, filled = 30, int(30 * done / total) if total else 0
            sys.stderr.write(f"\rbackfill [{'#' * filled}{'.' * (width - filled)}] {shown} conversations")
            sys.stderr.flush()

    async def go() -> Summary:
        async with ChatwootClient(args.chatwoot_url, account, token, rate=args.rate) as client:
            if args.dry_run:
                return await backfill(client, args.hook_id, scope, checkpoint, None, progress)
            await require_topic(conn, env.topic, "input")
            async with open_publisher(conn, env.topic) as send:
                return await backfill(client, args.hook_id, scope, checkpoint, send, progress)

    try:
        summary = run(go())
    except ChatwootRefusedError as exc:
        raise CliError(str(exc), EXIT_REFUSED) from None
    except ChatwootError as exc:
        raise CliError(str(exc), EXIT_UNREACHABLE) from None
    finally:
        if sys.stderr.isatty():
            sys.stderr.write("\n")
    if args.json:
        _print_json(summary.as_json())
    else:
        print(summary.line())
        for detail in summary.error_details[:20]:
            print(f"  error: {detail}")
        if path is not None and summary.errors:
            print(f"  run the same command again to retry them (checkpoint {path})")
    return EXIT_PROBLEMS if summary.errors else 0


def cmd_ingress(args: argparse.Namespace, env: ToolSettings) -> int:
    from app import logs
    from app.ingress.server import run_ingress
    from app.settings import IngressSettings

    try:
        ingress_env = load(IngressSettings)
    except SettingsError as exc:
        raise CliError("invalid configuration:\n  " + "\n  ".join(exc.lines)) from None
    logs.configure(ingress_env.log_level, ingress_env.log_format)
    return run_ingress(ingress_env, args.port)


def cmd_demo(args: argparse.Namespace, env: ToolSettings) -> int:
    from app.demo import main as demo_main

    return demo_main(once=args.once)


# ------------------------------------------------------------------------------------------------ parser

WORKER_ENVIRONMENT = """environment (see README "Configuration" for all of them):
  KAFKA_BOOTSTRAP_SERVERS        e.g. kafka-0.kafka:9092,kafka-1.kafka:9092
  KAFKA_SECURITY_PROTOCOL        PLAINTEXT (default), SSL, SASL_PLAINTEXT, SASL_SSL
  KAFKA_SASL_MECHANISM           SCRAM-SHA-512 (default), SCRAM-SHA-256, PLAIN
  KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD or KAFKA_SASL_PASSWORD_FILE, KAFKA_SSL_CA_FILE
  GLPI_SYNC_TOPIC                input topic (default chatwoot.events; DLQ and control topics follow it)
  GLPI_SYNC_DATA_DIR             RocksDB state, one per worker (default ./data)
  GLPI_SYNC_HTTP_PORT            metrics, health and state (default 6066); GLPI_SYNC_HTTP_HOST binds it
  GLPI_SYNC_ADMIN_TOKEN[_FILE]   bearer token for /state and admin endpoints (off without one)
  GLPI_SYNC_HOOK_SECRET_*        tokens hooks may reference; GLPI_SYNC_HOOK_SECRETS_DIR for files
  GLPI_SYNC_LOG_LEVEL, GLPI_SYNC_LOG_FORMAT   info|debug|warning, json|text
"""

INGRESS_ENVIRONMENT = """environment (see README "Connecting a stock Chatwoot"):
  KAFKA_BOOTSTRAP_SERVERS, KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_*, KAFKA_SSL_*   as for the worker
  GLPI_SYNC_TOPIC                      input topic (default chatwoot.events)
  GLPI_SYNC_INGRESS_HOST, _PORT        bind address (default 0.0.0.0:8080)
  GLPI_SYNC_WEBHOOK_SECRET_<HOOK_ID>   the Chatwoot webhook's secret (or a file <hook id> in the directory below)
  GLPI_SYNC_WEBHOOK_SECRETS_DIR        default /run/secrets/glpi-sync-webhooks
  GLPI_SYNC_WEBHOOK_URL_TOKEN_<ID>     unsigned deliveries (Chatwoot < 4.11.2) at /webhooks/chatwoot/<id>/<token>
  GLPI_SYNC_GLPI_WEBHOOK_SECRET_<ID>   two-way: GLPI 11 webhooks at /webhooks/glpi/<id>
"""


def _with_wait(parser: argparse.ArgumentParser) -> None:
    interactive = sys.stdout.isatty()
    parser.add_argument(
        "--wait",
        action=argparse.BooleanOptionalAction,
        default=interactive,
        help="wait for the owning worker to apply it and print its result (default on a terminal); e.g. --no-wait",
    )
    parser.add_argument("--timeout", type=float, default=60, help="seconds to wait, e.g. --timeout 120")
    parser.add_argument("--json", action="store_true", help="print the result as JSON, e.g. --json")


def _hook_id(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--hook-id", type=int, required=True, help="the hook's id (yours to choose, one per Chatwoot account), e.g. 7"
    )


def _hook_filter(parser: argparse.ArgumentParser, text: str) -> None:
    """An optional ``--hook-id`` (``--hook``, its old name, still works and is not shown)."""
    parser.add_argument("--hook-id", type=int, dest="hook", help=f"{text}, e.g. --hook-id 7")
    parser.add_argument("--hook", type=int, dest="hook", help=argparse.SUPPRESS)


def _worker_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--worker", help="a worker's URL (default GLPI_SYNC_WORKER_URL), e.g. http://127.0.0.1:6066")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="glpi-sync",
        description="Chatwoot → GLPI sync: the worker and its tools.",
        epilog=(
            "exit status: 0 done, 1 problems found, 2 invalid input, 3 a service unreachable, "
            "4 GLPI (or Chatwoot) refused"
        ),
    )
    parser.add_argument("--version", action="version", version=f"glpi-sync {product_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    worker = sub.add_parser(
        "worker",
        help="run the sync worker (configured by environment)",
        epilog=WORKER_ENVIRONMENT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    worker.set_defaults(func=cmd_worker)

    ingress = sub.add_parser(
        "ingress",
        help="receive Chatwoot's signed webhooks and produce them to the input topic (stateless, scale out)",
        epilog=INGRESS_ENVIRONMENT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ingress.add_argument(
        "--port", type=int, help="listen port (default GLPI_SYNC_INGRESS_PORT, 8080), e.g. --port 8080"
    )
    ingress.set_defaults(func=cmd_ingress)

    bf = sub.add_parser(
        "backfill",
        help="import conversations that existed before the hook (or were missed) through Chatwoot's API",
    )
    _hook_id(bf)
    bf.add_argument("--chatwoot-url", required=True, help="e.g. --chatwoot-url https://chat.example.com")
    token = bf.add_mutually_exclusive_group(required=True)
    token.add_argument("--api-token-env", help="variable holding an agent's api_access_token, e.g. CHATWOOT_TOKEN")
    token.add_argument("--api-token-file", help="file holding the api_access_token, e.g. /run/secrets/chatwoot")
    bf.add_argument("--account-id", type=int, help="Chatwoot account (default: the hook's, from a worker)")
    bf.add_argument("--since", help="only conversations active since, e.g. --since 2026-11-01T00:00:00Z")
    bf.add_argument("--status", choices=("open", "all"), default="open", help="which conversations (default open)")
    bf.add_argument("--conversation", type=int, help="just this conversation (display id), e.g. --conversation 57")
    bf.add_argument("--dry-run", action="store_true", help="count what would be published, publish nothing")
    bf.add_argument("--rate", type=float, default=5.0, help="Chatwoot requests per second (default 5)")
    bf.add_argument("--checkpoint", help="checkpoint file (default ./glpi-sync-backfill-<hook id>.json)")
    bf.add_argument("--fresh", action="store_true", help="ignore the checkpoint: start from the first conversation")
    bf.add_argument("--json", action="store_true", help="print the summary as JSON")
    bf.set_defaults(func=cmd_backfill)

    demo = sub.add_parser("demo", help="embedded broker + GLPI emulator + worker + a demo conversation (make run)")
    demo.add_argument("--once", action="store_true", help="exit after printing the result, e.g. glpi-sync demo --once")
    demo.set_defaults(func=cmd_demo)

    pub = sub.add_parser("publish", help="publish envelopes or raw Chatwoot webhook bodies to the input topic")
    pub.add_argument("file", help="JSON (object or array) or JSONL file; '-' reads stdin, e.g. events.jsonl")
    pub.add_argument("--hook-id", type=int, help="wrap raw Chatwoot bodies for this hook, e.g. --hook-id 7")
    pub.add_argument("--account-id", type=int, help="account of raw bodies (default: the body's account.id)")
    pub.add_argument("--topic", help="override GLPI_SYNC_TOPIC, e.g. --topic chatwoot.events")
    pub.set_defaults(func=cmd_publish)

    dlq = sub.add_parser("dlq", help="inspect, replay and purge the dead-letter topic")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="COMMAND")
    dl = dlq_sub.add_parser("list", help="what was dead-lettered, and why")
    _hook_filter(dl, "only this hook's records")
    dl.add_argument("--since", help="only records since this time, e.g. --since 2026-11-01T00:00:00Z")
    dl.add_argument("--limit", type=int, default=0, help="only the last N records, e.g. --limit 20")
    dl.add_argument("--json", action="store_true", help="machine-readable output")
    dl.set_defaults(func=cmd_dlq_list)
    dr = dlq_sub.add_parser("replay", help="publish dead-lettered records back onto the input topic (safe to repeat)")
    dr.add_argument("--offset", type=int, action="append", default=[], help="DLQ offset (repeatable), e.g. --offset 12")
    _hook_filter(dr, "replay this hook's records")
    dr.add_argument("--all", action="store_true", help="replay everything")
    dr.add_argument("--force", action="store_true", help="also replay records that failed to parse")
    dr.add_argument("--dry-run", action="store_true", help="say what would be replayed")
    dr.set_defaults(func=cmd_dlq_replay)
    dp = dlq_sub.add_parser("purge", help="delete dead letters older than a time")
    dp.add_argument("--before", required=True, help="delete records older than this, e.g. --before 2026-11-01")
    _hook_filter(dp, "only this hook's (others are kept, moved to the end)")
    dp.add_argument("--dry-run", action="store_true", help="say what would be purged")
    dp.set_defaults(func=cmd_dlq_purge)

    hook = sub.add_parser("hook", help="configure, control and test hooks")
    hook_sub = hook.add_subparsers(dest="hook_command", required=True, metavar="COMMAND")
    hs = hook_sub.add_parser("set", help="check a hook's GLPI settings against GLPI, then configure the hook")
    _hook_id(hs)
    hs.add_argument("--account-id", type=int, required=True, help="its Chatwoot account id, e.g. --account-id 7")
    hs.add_argument("--api-url", required=True, help="GLPI's API, e.g. https://glpi.example.com/apirest.php")
    for name in ("app-token", "user-token"):
        hs.add_argument(
            f"--{name}-env",
            metavar="VAR",
            help=f"the worker's variable holding the {name}, e.g. --{name}-env GLPI_SYNC_HOOK_SECRET_7_"
            + name.split("-")[0].upper(),
        )
        hs.add_argument(
            f"--{name}-file",
            metavar="PATH",
            help=f"a file under GLPI_SYNC_HOOK_SECRETS_DIR holding the {name}, e.g. --{name}-file hook-7-{name}",
        )
        hs.add_argument(f"--{name}", help=f"the {name} itself (stored in Kafka: prefer -env or -file)")
    hs.add_argument("--entity-id", type=int, default=0, help="GLPI entity of new items, e.g. --entity-id 0")
    hs.add_argument(
        "--sync-type", choices=["user", "contact"], default="user", help="contacts become Users or Contacts"
    )
    hs.add_argument("--ticket-type", type=int, choices=[1, 2], default=1, help="1 Incident, 2 Request")
    hs.add_argument("--category-id", type=int, help="ITIL category of new tickets, e.g. --category-id 12")
    hs.add_argument("--timezone", default="UTC", help="GLPI server's time zone, e.g. --timezone Europe/Lisbon")
    hs.add_argument("--notify-requester", action="store_true", help="let GLPI email requesters about their ticket")
    hs.add_argument("--phone-region", help="region of national phone numbers (ISO 3166), e.g. --phone-region PT")
    hs.add_argument(
        "--match-by-phone",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="find existing GLPI users by phone too (off where people share a number), e.g. --no-match-by-phone",
    )
    hs.add_argument("--two-way", action="store_true", help="technicians' GLPI answers go back to the conversation")
    hs.add_argument("--chatwoot-url", help="two-way: Chatwoot's base URL, e.g. https://chat.example.com")
    hs.add_argument("--chatwoot-token-env", metavar="VAR", help="two-way: variable with an agent's api_access_token")
    hs.add_argument("--chatwoot-token-file", metavar="PATH", help="two-way: file with the api_access_token")
    hs.add_argument("--chatwoot-token", help="two-way: the api_access_token itself (stored in Kafka: prefer -env)")
    hs.add_argument(
        "--private-followups", choices=["skip", "note"], default="skip", help="two-way: private GLPI followups"
    )
    hs.add_argument(
        "--resolve-on-solution",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="two-way: a GLPI solution resolves the conversation, e.g. --no-resolve-on-solution",
    )
    hs.add_argument("--status", choices=["enabled", "disabled"], default="enabled", help="e.g. --status disabled")
    hs.add_argument("--features", default="crm_integration", help="account features, e.g. --features crm_integration")
    hs.add_argument("--allow-http", action="store_true", help="accept a plain-http api_url (a local GLPI only)")
    hs.add_argument("--no-test", action="store_true", help="publish without testing the tokens against GLPI")
    _with_wait(hs)
    hs.set_defaults(func=cmd_hook_set)
    for name, text in (
        ("enable", "sync this hook's events again (and drain the parked ones)"),
        ("disable", "set this hook's new events aside (dead-lettered with the reason)"),
        ("pause", "park this hook's events until resumed"),
        ("resume", "resume a paused hook and sync its parked events in order"),
        ("skip", "move the parked event the hook is stuck on to the dead-letter topic"),
    ):
        sp = hook_sub.add_parser(name, help=text)
        _hook_id(sp)
        if name in ("pause", "skip"):
            example = "GLPI upgrade" if name == "pause" else "ticket deleted in GLPI by hand"
            sp.add_argument("--reason", default="", help=f'recorded with the command, e.g. --reason "{example}"')
        _with_wait(sp)
        sp.set_defaults(func=cmd_hook_command)
    ht = hook_sub.add_parser("test", help="the health checklist for one hook, run by the worker that owns it")
    _hook_id(ht)
    _worker_url(ht)
    ht.add_argument("--json", action="store_true", help="machine-readable output")
    ht.set_defaults(func=cmd_hook_test)
    hl = hook_sub.add_parser("list", help="every hook the workers know, with its state")
    _worker_url(hl)
    hl.add_argument("--json", action="store_true", help="machine-readable output")
    hl.set_defaults(func=cmd_hook_list)

    doc = sub.add_parser("doctor", help="the whole health checklist: broker, topics, group, workers, hooks, GLPI")
    doc.add_argument("--hook-id", type=int, action="append", default=[], help="only these hooks, e.g. --hook-id 7")
    _worker_url(doc)
    doc.add_argument(
        "--ingress", action="append", default=[], help="a webhook ingress to check, e.g. --ingress http://ingress:8080"
    )
    doc.add_argument("--json", action="store_true", help="machine-readable output")
    doc.set_defaults(func=cmd_doctor)

    insp = sub.add_parser("inspect", help="show the sync state of a hook, contact or conversation (JSON)")
    insp.add_argument("kind", choices=["hook", "contact", "conversation"])
    insp.add_argument("id", type=int, nargs="?", help="Chatwoot contact id or conversation display id, e.g. 57")
    _hook_id(insp)
    _worker_url(insp)
    insp.set_defaults(func=cmd_inspect)

    tr = sub.add_parser("trace", help="a conversation's history: each event, how it ended, the GLPI ticket's link")
    tr.add_argument("kind", choices=["conversation"])
    tr.add_argument("id", type=int, help="Chatwoot conversation display id, e.g. 57")
    _hook_id(tr)
    _worker_url(tr)
    tr.add_argument("--json", action="store_true", help="machine-readable output")
    tr.set_defaults(func=cmd_trace)

    rep = sub.add_parser("repair", help="point a contact or conversation at a GLPI id, or clear the mapping")
    rep.add_argument("kind", choices=["contact", "conversation"])
    rep.add_argument("id", type=int, help="Chatwoot contact id or conversation display id, e.g. 318")
    _hook_id(rep)
    rep.add_argument("--glpi-id", type=int, help="the GLPI User, Contact or Ticket id, e.g. --glpi-id 42")
    rep.add_argument("--itemtype", choices=["User", "Contact"], help="for contacts: what the id is")
    rep.add_argument("--clear", action="store_true", help="forget the mapping")
    _with_wait(rep)
    rep.set_defaults(func=cmd_repair)

    rs = sub.add_parser("resync", help="re-check GLPI and re-create what is missing, never duplicating")
    rs.add_argument("kind", choices=["contact", "conversation"])
    rs.add_argument("id", type=int, help="Chatwoot contact id or conversation display id, e.g. 57")
    _hook_id(rs)
    _with_wait(rs)
    rs.set_defaults(func=cmd_resync)

    reset = sub.add_parser("reset", help="forget a hook's mappings and rebuild them by replaying the topic")
    reset.add_argument("target", choices=["hook"])
    _hook_id(reset)
    reset.add_argument("--since", required=True, help="replay from this time, e.g. --since 2025-11-01T00:00:00Z")
    reset.add_argument("--timeout", type=float, default=600, help="seconds to wait for the replay, e.g. 1200")
    reset.add_argument("--dry-run", action="store_true", help="say what would be replayed")
    reset.set_defaults(func=cmd_reset)

    comp = sub.add_parser("completion", help="print a shell completion script, e.g. glpi-sync completion bash")
    comp.add_argument("shell", choices=["bash", "zsh", "tcsh"])
    comp.set_defaults(func=cmd_completion)
    return parser


def cmd_completion(args: argparse.Namespace, env: ToolSettings) -> int:
    import shtab

    print(shtab.complete(build_parser(), shell=args.shell))
    return 0


def _interrupted(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"):
        # argparse would only say that a COMMAND is required, without naming what it did not understand.
        print(f"glpi-sync: unknown option {argv[0]}: a COMMAND comes first (glpi-sync --help)", file=sys.stderr)
        return EXIT_INPUT
    args = build_parser().parse_args(argv)
    # SIGTERM (kill, a container stopping) ends a command as Ctrl-C does; the worker and the ingress install their
    # own handlers, which stop them gracefully.
    signal.signal(signal.SIGTERM, _interrupted)
    # aiokafka logs every failed connection attempt; a command says it once, in its own words.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        env = load(ToolSettings)
    except SettingsError as exc:
        print("glpi-sync: invalid configuration:\n  " + "\n  ".join(exc.lines), file=sys.stderr)
        return EXIT_INPUT
    try:
        return int(args.func(args, env))
    except CliError as exc:
        print(f"glpi-sync: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        print("glpi-sync: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
