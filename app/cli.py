"""``glpi-sync``: the command-line entry point (worker, publish, hook set).

Every command reads the same environment as the worker (``KAFKA_BOOTSTRAP_SERVERS``, ``GLPI_SYNC_TOPIC``, ...).
Errors are printed as one clear line and exit with status 2 (bad input) or 1 (runtime failure).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
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


def send_command(env: WorkerSettings, event: str, hook_id: int, **payload: Any) -> None:
    """Publish a control command keyed by hook id (same partition as the hook's events) on the control topic."""
    payload.setdefault("requested_by", getpass.getuser())
    command = {"event": event, "hook_id": hook_id, "payload": {k: v for k, v in payload.items() if v is not None}}
    asyncio.run(publish(env.kafka_bootstrap_servers, env.control_topic, [command]))


def worker_get(env: WorkerSettings, path: str, url: str | None = None) -> tuple[int, Any]:
    """GET a worker endpoint (any worker: it forwards to the one that owns the hook)."""

    async def go() -> tuple[int, Any]:
        target = f"{(url or env.worker_url).rstrip('/')}{path}"
        async with aiohttp.ClientSession() as http:
            for _attempt in range(15):  # 503 while the group rebalances or recovers: retry for a little while
                async with http.get(target, timeout=aiohttp.ClientTimeout(total=60)) as resp:
                    status, body = resp.status, await resp.json(content_type=None)
                if status != 503:
                    break
                await asyncio.sleep(2)
            return status, body

    try:
        return asyncio.run(go())
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise CliError(
            f"no worker answered at {url or env.worker_url} ({type(exc).__name__}); set GLPI_SYNC_WORKER_URL"
        ) from None


def _print_json(data: Any) -> None:
    print(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


def cmd_inspect(args: argparse.Namespace, env: WorkerSettings) -> int:
    paths = {
        "hook": f"/state/hook/{args.hook_id}",
        "contact": f"/state/hook/{args.hook_id}/contact/{args.id}",
        "conversation": f"/state/hook/{args.hook_id}/conversation/{args.id}",
    }
    if args.kind != "hook" and args.id is None:
        raise CliError(f"inspect {args.kind} needs the Chatwoot {args.kind} id")
    status, body = worker_get(env, paths[args.kind], args.worker)
    _print_json(body)
    return 0 if status == 200 else 1


def cmd_hook_command(args: argparse.Namespace, env: WorkerSettings) -> int:
    event = {
        "enable": "hook_enable",
        "disable": "hook_disable",
        "pause": "hook_pause",
        "resume": "hook_resume",
        "skip": "hook_skip",
    }[args.hook_command]
    send_command(env, event, args.hook_id, reason=getattr(args, "reason", None))
    print(f"{event} sent for hook {args.hook_id} on {env.control_topic}")
    print(f"see: glpi-sync inspect hook --hook-id {args.hook_id}")
    return 0


def cmd_hook_test(args: argparse.Namespace, env: WorkerSettings) -> int:
    status, body = worker_get(env, f"/state/hook/{args.hook_id}/test", args.worker)
    if status != 200:
        raise CliError(str(body.get("error", body)))
    failed = 0
    for check in body["checks"]:
        mark = "✔" if check["ok"] else "✘"
        fix = f"  → {check['fix']}" if check["fix"] else ""
        print(f"{mark} {check['check']}: {check['detail']}{fix}")
        failed += 0 if check["ok"] else 1
    return 1 if failed else 0


def cmd_repair(args: argparse.Namespace, env: WorkerSettings) -> int:
    glpi_id = None if args.clear else args.glpi_id
    if glpi_id is None and not args.clear:
        raise CliError("give --glpi-id N, or --clear to forget the mapping")
    if args.kind == "contact":
        send_command(
            env, "set_contact_mapping", args.hook_id, contact_id=args.id, glpi_id=glpi_id, glpi_itemtype=args.itemtype
        )
    else:
        send_command(env, "set_conversation_mapping", args.hook_id, conversation_id=args.id, glpi_id=glpi_id)
    print(
        f"mapping change for {args.kind} {args.id} sent; check with: glpi-sync inspect {args.kind} "
        f"--hook-id {args.hook_id} {args.id}"
    )
    return 0


def cmd_resync(args: argparse.Namespace, env: WorkerSettings) -> int:
    field = "contact_id" if args.kind == "contact" else "conversation_id"
    send_command(env, f"resync_{args.kind}", args.hook_id, **{field: args.id})
    print(f"resync of {args.kind} {args.id} requested; the worker logs what it found and re-created")
    return 0


def cmd_reset(args: argparse.Namespace, env: WorkerSettings) -> int:
    from app.kafka_io import committed_offsets, read_topic_since

    since = datetime.fromisoformat(args.since.replace("Z", "+00:00"))
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    hook_records = [
        r
        for r in asyncio.run(read_topic_since(env.kafka_bootstrap_servers, env.topic, since))
        if r.key == str(args.hook_id).encode()
    ]
    records, skipped = replayable(hook_records)
    print(f"hook {args.hook_id}: {len(records)} event(s) since {since.isoformat()} will be replayed")
    for why, count in sorted(skipped.items()):
        print(f"  not replayed: {count} {why}")
    if args.dry_run:
        return 0
    send_command(env, "hook_reset", args.hook_id, reason=f"replay since {since.isoformat()}")
    _wait_for(env, args.hook_id, lambda hook: bool(hook.get("rebuilding")), "the reset to be applied")
    from app.kafka_io import publish_raw

    headers = [(REPLAYED_BY_RESET, b"hook-reset")]
    replay = [(r.key, r.value, headers) for r in records]
    ends: dict[int, int] = {}
    for start in range(0, len(replay), 100):
        chunk = replay[start : start + 100]
        asyncio.run(publish_raw(env.kafka_bootstrap_servers, env.topic, chunk))
        _progress("published", start + len(chunk), len(replay))
    print()
    ends = asyncio.run(end_offsets_for(env, records))
    group = env.app_id
    deadline = time.monotonic() + args.timeout
    while True:
        done = asyncio.run(committed_offsets(env.kafka_bootstrap_servers, group, env.topic))
        behind = sum(max(0, end - done.get(p, 0)) for p, end in ends.items())
        _progress("synced", len(replay) - min(behind, len(replay)), len(replay))
        if behind == 0:
            break
        if time.monotonic() > deadline:
            print()
            raise CliError(f"the worker has not caught up after {args.timeout}s; run the reset again (safe)")
        time.sleep(1)
    print()
    send_command(env, "hook_rebuilt", args.hook_id)
    _wait_for(env, args.hook_id, lambda hook: not hook.get("rebuilding"), "the rebuild to be closed")
    print(f"hook {args.hook_id} rebuilt from {len(replay)} event(s); existing GLPI objects were adopted, not copied")
    return 0


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


async def end_offsets_for(env: WorkerSettings, records: list[Any]) -> dict[int, int]:
    from app.kafka_io import end_offsets

    partitions = sorted({r.partition for r in records})
    return await end_offsets(env.kafka_bootstrap_servers, env.topic, partitions)


def _progress(label: str, done: int, total: int) -> None:
    width = 30
    filled = int(width * done / total) if total else width
    sys.stdout.write(f"\r{label:>9} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    sys.stdout.flush()


def _wait_for(env: WorkerSettings, hook_id: int, predicate: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = worker_get(env, f"/state/hook/{hook_id}")
        if status == 200 and predicate(body):
            return
        time.sleep(0.5)
    raise CliError(f"timed out waiting for {what}")


def cmd_doctor(args: argparse.Namespace, env: WorkerSettings) -> int:
    from app import doctor

    lines = asyncio.run(doctor.run(env, args.worker or env.worker_url, args.hook_id or None))
    if args.json:
        _print_json({"ok": all(line.level != "fail" for line in lines), "checks": doctor.as_json(lines)})
    else:
        for line in lines:
            print(line.render())
        failed = sum(line.level == "fail" for line in lines)
        print(f"{len(lines)} checks: {failed} failed" if failed else f"{len(lines)} checks: all good")
    return 1 if any(line.level == "fail" for line in lines) else 0


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
    for name, text in (
        ("enable", "sync this hook's events"),
        ("disable", "skip this hook's events"),
        ("pause", "park this hook's events until resumed"),
        ("resume", "resume a paused hook and sync its parked events in order"),
        ("skip", "move the parked event the hook is stuck on to the dead-letter topic"),
    ):
        sp = hook_sub.add_parser(name, help=text)
        sp.add_argument("--hook-id", type=int, required=True)
        if name in ("pause", "skip"):
            sp.add_argument("--reason", default="", help="recorded with the command")
        sp.set_defaults(func=cmd_hook_command)
    ht = hook_sub.add_parser("test", help="the health checklist for one hook, run by the worker that owns it")
    ht.add_argument("--hook-id", type=int, required=True)
    ht.add_argument("--worker", help="worker URL (default GLPI_SYNC_WORKER_URL)")
    ht.set_defaults(func=cmd_hook_test)

    doc = sub.add_parser("doctor", help="the whole health checklist: broker, topics, group, workers, hooks, GLPI")
    doc.add_argument("--hook-id", type=int, action="append", default=[], help="only these hooks (repeatable)")
    doc.add_argument("--worker", help="worker URL (default GLPI_SYNC_WORKER_URL)")
    doc.add_argument("--json", action="store_true")
    doc.set_defaults(func=cmd_doctor)

    insp = sub.add_parser("inspect", help="show the sync state of a hook, contact or conversation")
    insp.add_argument("kind", choices=["hook", "contact", "conversation"])
    insp.add_argument("id", type=int, nargs="?", help="Chatwoot contact id or conversation display id")
    insp.add_argument("--hook-id", type=int, required=True)
    insp.add_argument("--worker", help="worker URL (default GLPI_SYNC_WORKER_URL)")
    insp.set_defaults(func=cmd_inspect)

    rep = sub.add_parser("repair", help="point a contact or conversation at a GLPI id, or clear the mapping")
    rep.add_argument("kind", choices=["contact", "conversation"])
    rep.add_argument("id", type=int)
    rep.add_argument("--hook-id", type=int, required=True)
    rep.add_argument("--glpi-id", type=int)
    rep.add_argument("--itemtype", choices=["User", "Contact"])
    rep.add_argument("--clear", action="store_true")
    rep.set_defaults(func=cmd_repair)

    rs = sub.add_parser("resync", help="re-check GLPI and re-create what is missing, never duplicating")
    rs.add_argument("kind", choices=["contact", "conversation"])
    rs.add_argument("id", type=int)
    rs.add_argument("--hook-id", type=int, required=True)
    rs.set_defaults(func=cmd_resync)

    reset = sub.add_parser("reset", help="forget a hook's mappings and rebuild them by replaying the topic")
    reset.add_argument("target", choices=["hook"])
    reset.add_argument("--hook-id", type=int, required=True)
    reset.add_argument("--since", required=True, help="ISO-8601 time to replay from, e.g. 2025-11-01T00:00:00Z")
    reset.add_argument("--timeout", type=float, default=600)
    reset.add_argument("--dry-run", action="store_true")
    reset.set_defaults(func=cmd_reset)
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
