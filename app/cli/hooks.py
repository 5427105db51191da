"""``glpi-sync hook``: configure a hook (tested against GLPI first), control it, test it, list hooks."""

from __future__ import annotations

import argparse
import asyncio
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import ValidationError

from app.cli.common import (
    EXIT_PROBLEMS,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    CliError,
    add_hook_id,
    add_wait_flags,
    add_worker_url,
    print_json,
    print_table,
    publish_to,
    render_checks,
    report_command,
    send_command,
    worker_get,
)
from app.events import HookSettings
from app.settings import ToolSettings
from app.sync.hook_config import validate_hook_settings


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
    """The Chatwoot token works (``/api/v1/profile``) and belongs to a member of the hook's account.

    Then write-back's attribute definitions are created where missing (the operators' own are never touched).
    """
    from app.chatwoot.api import ChatwootClient, ChatwootError, ChatwootRefusedError, define_missing
    from app.secrets import HookConfigError, hook_policy, resolve_token
    from app.twoway.attributes import DEFINITIONS

    try:
        token = resolve_token(settings.chatwoot_token, "chatwoot_token", hook_policy(env))
    except HookConfigError as exc:
        raise CliError(f"{exc} (here, where the hook is tested; --no-test skips the test)") from None
    url = settings.chatwoot_url or ""
    if not token:
        raise CliError("a Chatwoot connection needs a token (--chatwoot-token-env or --chatwoot-token-file)")

    async def go() -> tuple[dict[str, Any], list[str] | None]:
        async with ChatwootClient(url, account_id, token) as client:
            profile = await client.profile()
            accounts = [a.get("id") for a in profile.get("accounts", []) if isinstance(a, dict)]
            if account_id not in accounts:
                return profile, None
            return profile, (await define_missing(client, DEFINITIONS) if settings.writes_back else [])

    try:
        profile, defined = asyncio.run(go())
    except ChatwootRefusedError as exc:
        raise CliError(f"Chatwoot: {exc}", EXIT_REFUSED) from None
    except (ChatwootError, aiohttp.ClientError, OSError) as exc:
        raise CliError(f"Chatwoot at {settings.chatwoot_url} cannot be reached ({exc})", EXIT_UNREACHABLE) from None
    if defined is None:
        raise CliError(
            f"Chatwoot: the token's user ({profile.get('name')}) is not a member of account {account_id}",
            EXIT_REFUSED,
        )
    print(f"Chatwoot token valid: {profile.get('name')}, member of account {account_id}")
    if defined:
        print(f"Chatwoot attributes defined: {', '.join(defined)}")


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
        "write_back": args.write_back,
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
        if settings.writes_back or settings.two_way:
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
    return report_command(env, args, args.hook_id, event_id, f"hook {args.hook_id} configuration sent ({args.status})")


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
    return report_command(env, args, args.hook_id, event_id, f"{event} sent for hook {args.hook_id}")


def cmd_hook_test(args: argparse.Namespace, env: ToolSettings) -> int:
    status, body = worker_get(env, f"/state/hook/{args.hook_id}/test", args.worker)
    if status != 200:
        raise CliError(str(body.get("error", body)), EXIT_PROBLEMS)
    if args.json:
        print_json(body)
        return 1 if any(not c["ok"] for c in body["checks"]) else 0
    return 1 if render_checks(body["checks"]) else 0


def cmd_hook_list(args: argparse.Namespace, env: ToolSettings) -> int:
    status, body = worker_get(env, "/state/hooks?all=1", args.worker)
    hooks = body.get("hooks", []) if status == 200 else []
    if args.json:
        print_json(hooks)
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
    print_table(rows, ["HOOK", "ACCOUNT", "STATE", "PARKED", "SET ASIDE", "GLPI", "WORKER"])
    return 0


def register(sub: Any) -> None:
    """The ``hook`` command and its subcommands."""
    hook = sub.add_parser("hook", help="configure, control and test hooks")
    hook_sub = hook.add_subparsers(dest="hook_command", required=True, metavar="COMMAND")
    hs = hook_sub.add_parser("set", help="check a hook's GLPI settings against GLPI, then configure the hook")
    add_hook_id(hs)
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
    hs.add_argument(
        "--chatwoot-url",
        help="Chatwoot's base URL, e.g. https://chat.example.com: with a token, the ticket's number, status and "
        "technician are written on the conversation (write-back); --two-way uses the same connection",
    )
    hs.add_argument("--chatwoot-token-env", metavar="VAR", help="variable with an agent's api_access_token")
    hs.add_argument("--chatwoot-token-file", metavar="PATH", help="file with the agent's api_access_token")
    hs.add_argument("--chatwoot-token", help="the api_access_token itself (stored in Kafka: prefer -env or -file)")
    hs.add_argument(
        "--private-followups", choices=["skip", "note"], default="skip", help="two-way: private GLPI followups"
    )
    hs.add_argument(
        "--resolve-on-solution",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="two-way: a GLPI solution resolves the conversation, e.g. --no-resolve-on-solution",
    )
    hs.add_argument(
        "--write-back",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with a Chatwoot connection, write the GLPI ticket on the conversation (default), e.g. --no-write-back",
    )
    hs.add_argument("--status", choices=["enabled", "disabled"], default="enabled", help="e.g. --status disabled")
    hs.add_argument("--features", default="crm_integration", help="account features, e.g. --features crm_integration")
    hs.add_argument("--allow-http", action="store_true", help="accept a plain-http api_url (a local GLPI only)")
    hs.add_argument("--no-test", action="store_true", help="publish without testing the tokens against GLPI")
    add_wait_flags(hs)
    hs.set_defaults(func=cmd_hook_set)
    for name, text in (
        ("enable", "sync this hook's events again (and drain the parked ones)"),
        ("disable", "set this hook's new events aside (dead-lettered with the reason)"),
        ("pause", "park this hook's events until resumed"),
        ("resume", "resume a paused hook and sync its parked events in order"),
        ("skip", "move the parked event the hook is stuck on to the dead-letter topic"),
    ):
        sp = hook_sub.add_parser(name, help=text)
        add_hook_id(sp)
        if name in ("pause", "skip"):
            example = "GLPI upgrade" if name == "pause" else "ticket deleted in GLPI by hand"
            sp.add_argument("--reason", default="", help=f'recorded with the command, e.g. --reason "{example}"')
        add_wait_flags(sp)
        sp.set_defaults(func=cmd_hook_command)
    ht = hook_sub.add_parser("test", help="the health checklist for one hook, run by the worker that owns it")
    add_hook_id(ht)
    add_worker_url(ht)
    ht.add_argument("--json", action="store_true", help="machine-readable output")
    ht.set_defaults(func=cmd_hook_test)
    hl = hook_sub.add_parser("list", help="every hook the workers know, with its state")
    add_worker_url(hl)
    hl.add_argument("--json", action="store_true", help="machine-readable output")
    hl.set_defaults(func=cmd_hook_list)
