"""``glpi-sync``: the command-line entry point (worker, publish, hook set).

Every command reads the same environment as the worker (``KAFKA_BOOTSTRAP_SERVERS``, ``GLPI_SYNC_TOPIC``, ...).
Errors are printed as one clear line and exit with status 2 (bad input) or 1 (runtime failure).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from pydantic import ValidationError

from app.events import HookSettings
from app.glpi import GlpiClient, GlpiError
from app.kafka_io import publish
from app.settings import WorkerSettings
from app.sync.decide import validate_hook_settings


class CliError(Exception):
    """A user mistake: printed without a traceback, exit status 2."""


def _load_records(path: str) -> list[Any]:
    text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
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


def _token_ref(inline: str | None, env: str | None, file: str | None, name: str) -> Any:
    given = [v for v in (inline, env, file) if v]
    if len(given) > 1:
        raise CliError(f"give the {name} once: inline, --{name}-env or --{name}-file")
    if env:
        return {"env": env}
    if file:
        return {"file": file}
    return inline


def _resolve_locally(ref: Any) -> str | None:
    """Resolve a token reference here, to test it; the worker resolves it again in its own environment."""
    from app.pipeline import HookConfigError, resolve_token

    try:
        return resolve_token(ref)
    except HookConfigError as exc:
        raise CliError(f"{exc} (here, where the hook is tested; use --no-test to skip)") from None


async def check_glpi_connection(settings: HookSettings, timeout_s: float = 10.0) -> str:
    """InitSession then killSession with the hook's tokens; returns a one-line success message."""
    app_token = _resolve_locally(settings.app_token)
    user_token = _resolve_locally(settings.user_token)
    assert user_token is not None
    async with aiohttp.ClientSession() as http:
        client = GlpiClient(settings.api_url, app_token=app_token, user_token=user_token, http=http, timeout=timeout_s)
        await client.open()
        profile = await client.get_active_profile()
        await client.close()
    return f"GLPI connection successful (active profile: {profile.get('name', '?')})"


def cmd_hook_set(args: argparse.Namespace, env: WorkerSettings) -> int:
    raw_settings: dict[str, Any] = {
        "api_url": args.api_url,
        "app_token": _token_ref(args.app_token, args.app_token_env, args.app_token_file, "app-token"),
        "user_token": _token_ref(args.user_token, args.user_token_env, args.user_token_file, "user-token"),
        "entity_id": args.entity_id,
        "sync_type": args.sync_type,
        "ticket_type": args.ticket_type,
        "category_id": args.category_id,
        "timezone": args.timezone,
    }
    if not raw_settings["user_token"]:
        raise CliError("a user token is required (--user-token, --user-token-env or --user-token-file)")
    try:
        settings = HookSettings.model_validate({k: v for k, v in raw_settings.items() if v is not None})
    except ValidationError as exc:
        fields = ", ".join(".".join(str(p) for p in e["loc"]) + f" ({e['msg']})" for e in exc.errors())
        raise CliError(f"invalid hook settings: {fields}") from None
    settings, problems = validate_hook_settings(settings, allow_http=env.allow_http or args.allow_http)
    if problems:
        raise CliError("invalid hook settings:\n  - " + "\n  - ".join(problems))
    if not args.no_test:
        try:
            print(asyncio.run(check_glpi_connection(settings, env.glpi_timeout)))
        except GlpiError as exc:
            raise CliError(
                f"GLPI refused the connection test: {type(exc).__name__} {exc.code}: {exc.message}"
            ) from None
    envelope = {
        "event": "hook_configured",
        "hook_id": args.hook_id,
        "account_id": args.account_id,
        "payload": {
            "status": args.status,
            "account_features": args.features.split(",") if args.features else [],
            "settings": settings.model_dump(mode="json", exclude_none=True),
        },
    }
    asyncio.run(publish(env.kafka_bootstrap_servers, env.topic, [envelope]))
    print(f"hook {args.hook_id} configured ({args.status}) on topic {env.topic}")
    return 0


def cmd_publish(args: argparse.Namespace, env: WorkerSettings) -> int:
    envelopes = to_envelopes(_load_records(args.file), args.hook_id, args.account_id)
    count = asyncio.run(
        publish(
            env.kafka_bootstrap_servers,
            args.topic or env.topic,
            envelopes,
            batch_size=1 if env.embedded_broker else 2,
        )
    )
    print(f"published {count} event(s) to {args.topic or env.topic}")
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
    return {
        "dlq_offset": record.offset,
        "dlq_partition": record.partition,
        "failed_at": headers.get("cwglpi.failed_at", ""),
        "hook_id": hook_id,
        "event": event,
        "source": f"{headers.get('__connect.errors.topic', '?')}/{headers.get('__connect.errors.partition', '?')}"
        f"@{headers.get('__connect.errors.offset', '?')}",
        "stage": headers.get("__connect.errors.stage", ""),
        "error_class": headers.get("__connect.errors.exception.class.name", ""),
        "glpi_code": headers.get("cwglpi.glpi.code", ""),
        "reason": headers.get("__connect.errors.exception.message", ""),
        "replayed_from": headers.get("cwglpi.replayed_from", ""),
    }


def _dlq_records(env: WorkerSettings) -> list[Any]:
    from app.kafka_io import read_topic

    return asyncio.run(read_topic(env.kafka_bootstrap_servers, env.dlq_topic))


def cmd_dlq_list(args: argparse.Namespace, env: WorkerSettings) -> int:
    entries = [_dlq_entry(r) for r in _dlq_records(env)]
    if args.hook is not None:
        entries = [e for e in entries if e["hook_id"] == args.hook]
    entries = entries[-args.limit :] if args.limit else entries
    if args.json:
        print(orjson.dumps(entries, option=orjson.OPT_INDENT_2).decode())
        return 0
    if not entries:
        print(f"{env.dlq_topic} is empty")
        return 0
    for e in entries:
        where = f"#{e['dlq_partition']}:{e['dlq_offset']}  {e['failed_at']}  hook {e['hook_id']}"
        print(f"{where}  {e['event'] or '(unparsed)'}  from {e['source']}")
        print(f"    {e['stage']}: {e['error_class']} {e['glpi_code']} {e['reason']}")
    print(f"{len(entries)} dead-lettered record(s) in {env.dlq_topic}")
    return 0


def cmd_dlq_replay(args: argparse.Namespace, env: WorkerSettings) -> int:
    from app.kafka_io import publish_raw

    if not args.all and not args.offset and args.hook is None:
        raise CliError("choose what to replay: --offset N (repeatable), --hook H, or --all")
    selected = []
    for record in _dlq_records(env):
        entry = _dlq_entry(record)
        if args.offset and record.offset not in args.offset:
            continue
        if args.hook is not None and entry["hook_id"] != args.hook:
            continue
        # Key by the envelope's hook id when it has one, so the replay lands on the hook's partition.
        key = str(entry["hook_id"]).encode() if entry["hook_id"] is not None else record.key
        headers = [("cwglpi.replayed_from", f"{env.dlq_topic}:{record.partition}:{record.offset}".encode())]
        selected.append((key, record.value, headers))
    if args.dry_run:
        print(f"would replay {len(selected)} record(s) onto {env.topic}")
        return 0
    count = asyncio.run(publish_raw(env.kafka_bootstrap_servers, env.topic, selected))
    print(f"replayed {count} record(s) onto {env.topic} (safe to repeat: the sync never writes anything twice)")
    return 0


def cmd_worker(args: argparse.Namespace, env: WorkerSettings) -> int:
    from app.worker import run_worker

    run_worker(env)
    return 0


def cmd_demo(args: argparse.Namespace, env: WorkerSettings) -> int:
    from app.demo import main as demo_main

    return demo_main(once=args.once)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glpi-sync", description="Chatwoot → GLPI sync worker and tools.")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("worker", help="run the sync worker (configured by environment)").set_defaults(func=cmd_worker)

    demo = sub.add_parser("demo", help="embedded broker + GLPI emulator + worker + a demo conversation (make run)")
    demo.add_argument("--once", action="store_true", help="exit after printing the result instead of running on")
    demo.set_defaults(func=cmd_demo)

    pub = sub.add_parser("publish", help="publish envelopes or raw Chatwoot webhook bodies to the topic")
    pub.add_argument("file", help="JSON (object or array) or JSONL file; '-' reads stdin")
    pub.add_argument("--hook-id", type=int, help="wrap raw Chatwoot bodies for this hook")
    pub.add_argument("--account-id", type=int, help="account of raw bodies (default: the body's account.id)")
    pub.add_argument("--topic", help="override GLPI_SYNC_TOPIC")
    pub.set_defaults(func=cmd_publish)

    dlq = sub.add_parser("dlq", help="inspect and replay the dead-letter topic")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    dl = dlq_sub.add_parser("list", help="what was dead-lettered, and why")
    dl.add_argument("--hook", type=int, help="only this hook's records")
    dl.add_argument("--limit", type=int, default=0, help="only the last N records")
    dl.add_argument("--json", action="store_true", help="machine-readable output")
    dl.set_defaults(func=cmd_dlq_list)
    dr = dlq_sub.add_parser("replay", help="publish dead-lettered records back onto the main topic")
    dr.add_argument("--offset", type=int, action="append", default=[], help="DLQ offset to replay (repeatable)")
    dr.add_argument("--hook", type=int, help="replay this hook's records")
    dr.add_argument("--all", action="store_true", help="replay everything")
    dr.add_argument("--dry-run", action="store_true")
    dr.set_defaults(func=cmd_dlq_replay)

    hook = sub.add_parser("hook", help="manage hooks")
    hook_sub = hook.add_subparsers(dest="hook_command", required=True)
    hs = hook_sub.add_parser("set", help="validate, test and publish a hook's GLPI settings")
    hs.add_argument("--hook-id", type=int, required=True)
    hs.add_argument("--account-id", type=int, required=True)
    hs.add_argument("--api-url", required=True, help="e.g. https://glpi.example.com/apirest.php")
    for name in ("app-token", "user-token"):
        hs.add_argument(f"--{name}", help=f"{name} inline (prefer --{name}-env or --{name}-file)")
        hs.add_argument(f"--{name}-env", metavar="VAR", help=f"read the {name} from the worker's environment VAR")
        hs.add_argument(f"--{name}-file", metavar="PATH", help=f"read the {name} from a file on the worker")
    hs.add_argument("--entity-id", type=int, default=0)
    hs.add_argument("--sync-type", choices=["user", "contact"], default="user")
    hs.add_argument("--ticket-type", type=int, choices=[1, 2], default=1)
    hs.add_argument("--category-id", type=int)
    hs.add_argument("--timezone", default="UTC", help="GLPI server time zone for dates (IANA name)")
    hs.add_argument("--status", choices=["enabled", "disabled"], default="enabled")
    hs.add_argument("--features", default="crm_integration", help="comma-separated account features")
    hs.add_argument("--allow-http", action="store_true", help="accept a plain-http api_url (local GLPI)")
    hs.add_argument("--no-test", action="store_true", help="do not test the tokens with initSession")
    hs.set_defaults(func=cmd_hook_set)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        env = WorkerSettings()
    except ValidationError as exc:
        print(f"glpi-sync: invalid configuration: {exc}", file=sys.stderr)
        return 2
    try:
        return int(args.func(args, env))
    except CliError as exc:
        print(f"glpi-sync: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"glpi-sync: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
