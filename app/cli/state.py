"""Reading and mending one hook's sync state: ``inspect``, ``trace``, ``repair``, ``resync``, ``reset``."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

from app.cli.common import (
    EXIT_PROBLEMS,
    CliError,
    add_hook_id,
    add_wait_flags,
    add_worker_url,
    kafka,
    parse_since,
    print_json,
    print_table,
    report_command,
    run,
    send_command,
    worker_get,
)
from app.settings import ToolSettings


def cmd_inspect(args: argparse.Namespace, env: ToolSettings) -> int:
    paths = {
        "hook": f"/state/hook/{args.hook_id}",
        "contact": f"/state/hook/{args.hook_id}/contact/{args.id}",
        "conversation": f"/state/hook/{args.hook_id}/conversation/{args.id}",
    }
    if args.kind != "hook" and args.id is None:
        raise CliError(f"inspect {args.kind} needs the Chatwoot {args.kind} id")
    status, body = worker_get(env, paths[args.kind], args.worker)
    print_json(body)
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
        print_json({**body, "ticket_link": link})
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
    print_table(rows, ["TIME", "EVENT", "FROM", "OUTCOME", "GLPI", "REASON"])
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
    return report_command(env, args, args.hook_id, event_id, f"mapping change for {args.kind} {args.id} sent")


def cmd_resync(args: argparse.Namespace, env: ToolSettings) -> int:
    field = "contact_id" if args.kind == "contact" else "conversation_id"
    event_id = send_command(env, f"resync_{args.kind}", args.hook_id, **{field: args.id})
    return report_command(env, args, args.hook_id, event_id, f"resync of {args.kind} {args.id} requested")


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

    since = parse_since(args.since)
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
    wait_for(env, args.hook_id, lambda hook: bool(hook.get("rebuilding")), "the reset to be applied")
    replay = [(r.key, r.value, [(REPLAYED_BY_RESET, b"hook-reset")]) for r in records]
    for start in range(0, len(replay), 100):
        chunk = replay[start : start + 100]
        run(publish_raw(conn, env.topic, chunk))
        show_progress("published", start + len(chunk), len(replay))
    print()
    ends = run(end_offsets(conn, env.topic, sorted({r.partition for r in records})))
    deadline = time.monotonic() + args.timeout
    while True:
        done = run(committed_offsets(conn, env.app_id, env.topic))
        behind = sum(max(0, end - done.get(p, 0)) for p, end in ends.items())
        show_progress("synced", len(replay) - min(behind, len(replay)), len(replay))
        if behind == 0:
            break
        if time.monotonic() > deadline:
            print()
            raise CliError(f"the worker has not caught up after {args.timeout}s; run the reset again (safe)", 1)
        time.sleep(1)
    print()
    send_command(env, "hook_rebuilt", args.hook_id)
    wait_for(env, args.hook_id, lambda hook: not hook.get("rebuilding"), "the rebuild to be closed")
    print(f"hook {args.hook_id} rebuilt from {len(replay)} event(s); existing GLPI objects were adopted, not copied")
    return 0


def show_progress(label: str, done: int, total: int) -> None:
    if not sys.stdout.isatty():
        if done == total:
            print(f"{label:>9} {done}/{total}", end="")
        return
    width = 30
    filled = int(width * done / total) if total else width
    sys.stdout.write(f"\r{label:>9} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    sys.stdout.flush()


def wait_for(env: ToolSettings, hook_id: int, predicate: Callable[[Any], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = worker_get(env, f"/state/hook/{hook_id}")
        if status == 200 and predicate(body):
            return
        time.sleep(0.5)
    raise CliError(f"timed out waiting for {what}", EXIT_PROBLEMS)


def register(sub: Any) -> None:
    """``inspect``, ``trace``, ``repair``, ``resync`` and ``reset``."""
    insp = sub.add_parser("inspect", help="show the sync state of a hook, contact or conversation (JSON)")
    insp.add_argument("kind", choices=["hook", "contact", "conversation"])
    insp.add_argument("id", type=int, nargs="?", help="Chatwoot contact id or conversation display id, e.g. 57")
    add_hook_id(insp)
    add_worker_url(insp)
    insp.set_defaults(func=cmd_inspect)

    tr = sub.add_parser("trace", help="a conversation's history: each event, how it ended, the GLPI ticket's link")
    tr.add_argument("kind", choices=["conversation"])
    tr.add_argument("id", type=int, help="Chatwoot conversation display id, e.g. 57")
    add_hook_id(tr)
    add_worker_url(tr)
    tr.add_argument("--json", action="store_true", help="machine-readable output")
    tr.set_defaults(func=cmd_trace)

    rep = sub.add_parser("repair", help="point a contact or conversation at a GLPI id, or clear the mapping")
    rep.add_argument("kind", choices=["contact", "conversation"])
    rep.add_argument("id", type=int, help="Chatwoot contact id or conversation display id, e.g. 318")
    add_hook_id(rep)
    rep.add_argument("--glpi-id", type=int, help="the GLPI User, Contact or Ticket id, e.g. --glpi-id 42")
    rep.add_argument("--itemtype", choices=["User", "Contact"], help="for contacts: what the id is")
    rep.add_argument("--clear", action="store_true", help="forget the mapping")
    add_wait_flags(rep)
    rep.set_defaults(func=cmd_repair)

    rs = sub.add_parser("resync", help="re-check GLPI and re-create what is missing, never duplicating")
    rs.add_argument("kind", choices=["contact", "conversation"])
    rs.add_argument("id", type=int, help="Chatwoot contact id or conversation display id, e.g. 57")
    add_hook_id(rs)
    add_wait_flags(rs)
    rs.set_defaults(func=cmd_resync)

    reset = sub.add_parser("reset", help="forget a hook's mappings and rebuild them by replaying the topic")
    reset.add_argument("target", choices=["hook"])
    add_hook_id(reset)
    reset.add_argument("--since", required=True, help="replay from this time, e.g. --since 2025-11-01T00:00:00Z")
    reset.add_argument("--timeout", type=float, default=600, help="seconds to wait for the replay, e.g. 1200")
    reset.add_argument("--dry-run", action="store_true", help="say what would be replayed")
    reset.set_defaults(func=cmd_reset)
