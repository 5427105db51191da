"""Records onto the input topic: ``publish`` and ``backfill``.

``publish`` reads files of envelopes or raw webhook bodies; ``backfill`` reads Chatwoot's API, for what existed
before the hook.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import orjson

from app.cli.common import (
    EXIT_PROBLEMS,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    CliError,
    add_hook_id,
    kafka,
    parse_since,
    print_json,
    publish_to,
    run,
    worker_get,
)
from app.kafka_io import require_topic
from app.settings import ToolSettings


def load_records(path: str) -> list[Any]:
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


def cmd_publish(args: argparse.Namespace, env: ToolSettings) -> int:
    envelopes = to_envelopes(load_records(args.file), args.hook_id, args.account_id)
    topic = args.topic or env.topic
    count = publish_to(env, topic, "input", envelopes, batch=1 if env.embedded_broker else 2)
    print(f"published {count} event(s) to {topic}")
    return 0


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
    since = parse_since(args.since)
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
        print_json(summary.as_json())
    else:
        print(summary.line())
        for detail in summary.error_details[:20]:
            print(f"  error: {detail}")
        if path is not None and summary.errors:
            print(f"  run the same command again to retry them (checkpoint {path})")
    return EXIT_PROBLEMS if summary.errors else 0


def register_backfill(sub: Any) -> None:
    """The ``backfill`` command."""
    bf = sub.add_parser(
        "backfill",
        help="import conversations that existed before the hook (or were missed) through Chatwoot's API",
    )
    add_hook_id(bf)
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


def register_publish(sub: Any) -> None:
    """The ``publish`` command."""
    pub = sub.add_parser("publish", help="publish envelopes or raw Chatwoot webhook bodies to the input topic")
    pub.add_argument("file", help="JSON (object or array) or JSONL file; '-' reads stdin, e.g. events.jsonl")
    pub.add_argument("--hook-id", type=int, help="wrap raw Chatwoot bodies for this hook, e.g. --hook-id 7")
    pub.add_argument("--account-id", type=int, help="account of raw bodies (default: the body's account.id)")
    pub.add_argument("--topic", help="override GLPI_SYNC_TOPIC, e.g. --topic chatwoot.events")
    pub.set_defaults(func=cmd_publish)
