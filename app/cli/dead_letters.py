"""``glpi-sync dlq``: list, replay and purge the dead-letter topic."""

from __future__ import annotations

import argparse
from typing import Any

import orjson

from app.cli.common import (
    CliError,
    add_hook_filter,
    kafka,
    parse_since,
    print_json,
    run,
)
from app.settings import ToolSettings


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


def _dlq_records(env: ToolSettings) -> list[Any]:
    from app.kafka_io import read_topic

    return list(run(read_topic(kafka(env), env.dlq_topic)))


def cmd_dlq_list(args: argparse.Namespace, env: ToolSettings) -> int:
    entries = [_dlq_entry(r) for r in _dlq_records(env)]
    since = parse_since(args.since)
    if args.hook is not None:
        entries = [e for e in entries if e["hook_id"] == args.hook]
    if since is not None:
        entries = [e for e in entries if e["timestamp"] >= since.timestamp()]
    entries = entries[-args.limit :] if args.limit else entries
    if args.json:
        print_json(entries)
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

    before = parse_since(args.before)
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


def register(sub: Any) -> None:
    """The ``dlq`` command and its subcommands."""
    dlq = sub.add_parser("dlq", help="inspect, replay and purge the dead-letter topic")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="COMMAND")
    dl = dlq_sub.add_parser("list", help="what was dead-lettered, and why")
    add_hook_filter(dl, "only this hook's records")
    dl.add_argument("--since", help="only records since this time, e.g. --since 2026-11-01T00:00:00Z")
    dl.add_argument("--limit", type=int, default=0, help="only the last N records, e.g. --limit 20")
    dl.add_argument("--json", action="store_true", help="machine-readable output")
    dl.set_defaults(func=cmd_dlq_list)
    dr = dlq_sub.add_parser("replay", help="publish dead-lettered records back onto the input topic (safe to repeat)")
    dr.add_argument("--offset", type=int, action="append", default=[], help="DLQ offset (repeatable), e.g. --offset 12")
    add_hook_filter(dr, "replay this hook's records")
    dr.add_argument("--all", action="store_true", help="replay everything")
    dr.add_argument("--force", action="store_true", help="also replay records that failed to parse")
    dr.add_argument("--dry-run", action="store_true", help="say what would be replayed")
    dr.set_defaults(func=cmd_dlq_replay)
    dp = dlq_sub.add_parser("purge", help="delete dead letters older than a time")
    dp.add_argument("--before", required=True, help="delete records older than this, e.g. --before 2026-11-01")
    add_hook_filter(dp, "only this hook's (others are kept, moved to the end)")
    dp.add_argument("--dry-run", action="store_true", help="say what would be purged")
    dp.set_defaults(func=cmd_dlq_purge)
