"""Hook configuration, decided without I/O.

Which settings are valid and granted by the operators, and how a ``hook_configured`` or ``hook_removed`` changes a
hook's record.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from urllib.parse import urlsplit

from app.events import (
    TOKEN_FIELDS,
    HookConfigured,
    HookRemoved,
    HookSettings,
    TokenFromEnv,
    TokenFromFile,
    TokenRef,
)
from app.sync import mapping
from app.sync.state import AnyHook, HookPolicy, HookRecord, SyncContext, UnconfiguredHook


def token_reference_problem(ref: TokenRef | None, name: str, policy: HookPolicy) -> str | None:
    """Why ``ref`` may not be used (None when granted). Never echoes an inline token's value."""
    if ref is None:
        return None
    if isinstance(ref, str):
        if policy.refuse_inline_tokens:
            return f"{name} is given inline, and inline tokens are refused here: use an env or file reference"
        return None
    if isinstance(ref, TokenFromEnv):
        if not ref.env.startswith(policy.env_prefix) or ref.env == policy.env_prefix:
            granted = f"only variables named {policy.env_prefix}* are granted to hooks"
            return f"{name} names the environment variable {ref.env!r}: {granted}"
        return None
    if isinstance(ref, TokenFromFile):
        path = PurePosixPath(ref.file)
        root = PurePosixPath(policy.secrets_dir)
        if not path.is_absolute() or ".." in path.parts or not path.is_relative_to(root) or path == root:
            return f"{name} names the file {ref.file!r}: only files under {policy.secrets_dir}/ are granted to hooks"
        return None
    # {"encrypted": ...} is how the worker stores inline tokens in its own table; a producer sending one could make
    # the worker decrypt a token it copied from a changelog and send it to a server of its choosing.
    return f"{name} is an encrypted reference: send the token inline or by env/file reference"


def host_problem(api_url: str, policy: HookPolicy) -> str | None:
    """Why ``api_url``'s host may not receive a hook's tokens (None when allowed)."""
    return _host_problem("api_url", api_url, policy.allowed_hosts, "GLPI_SYNC_ALLOWED_GLPI_HOSTS")


def _host_problem(name: str, url: str, allowed: frozenset[str], variable: str) -> str | None:
    host = (urlsplit(url).hostname or "").lower()
    try:
        port = urlsplit(url).port
    except ValueError:
        port = None
    if not allowed or host in allowed or f"{host}:{port}" in allowed:
        return None
    return f"{name} host {host!r} is not one of {variable} ({', '.join(sorted(allowed))})"


def grant_problems(settings: HookSettings, policy: HookPolicy) -> list[str]:
    """What ``settings`` ask for that the operators did not grant (token references, the GLPI host)."""
    found = [host_problem(settings.api_url, policy)]
    if settings.chatwoot_url:
        found.append(
            _host_problem(
                "chatwoot_url", settings.chatwoot_url, policy.allowed_chatwoot_hosts, "GLPI_SYNC_ALLOWED_CHATWOOT_HOSTS"
            )
        )
    found += [token_reference_problem(getattr(settings, name), name, policy) for name in TOKEN_FIELDS]
    return [problem for problem in found if problem]


def validate_hook_settings(
    settings: HookSettings, *, allow_http: bool, policy: HookPolicy | None = None
) -> tuple[HookSettings, list[str]]:
    """Normalise ``api_url`` and list what is wrong with the settings (empty list = usable).

    Catches the guide's classic mistakes (missing ``/apirest.php``, plain http, a trailing slash, which is removed)
    and, given a ``policy``, anything the operators did not grant: token references and GLPI hosts (settings the
    worker stored itself, with encrypted tokens, are checked without one).
    """
    problems: list[str] = []
    url = settings.api_url.strip().rstrip("/")
    parts = urlsplit(url)
    absolute = parts.scheme in ("http", "https") and bool(parts.netloc)
    if not absolute:
        problems.append(
            f"api_url must be an absolute http(s) URL, got {url!r}, e.g. https://glpi.example.com/apirest.php"
        )
    elif parts.scheme == "http" and not allow_http:
        problems.append(
            "api_url uses plain http; use https (for a local GLPI: --allow-http on hook set, "
            "GLPI_SYNC_ALLOW_HTTP=true on the worker)"
        )
    if absolute and not (url.endswith("/apirest.php") or url.endswith("/api.php/v1")):
        problems.append(
            f"api_url must end with /apirest.php: did you mean {url.split('?')[0].rstrip('/')}/apirest.php ?"
        )
    if parts.query or parts.fragment:
        problems.append("api_url must not have a query string or fragment")
    if settings.two_way or settings.chatwoot_url or settings.chatwoot_token is not None:
        needs = "two_way needs" if settings.two_way else "a Chatwoot connection (write-back) needs"
        chatwoot = urlsplit(settings.chatwoot_url or "")
        if chatwoot.scheme not in ("http", "https") or not chatwoot.netloc:
            problems.append(f"{needs} chatwoot_url, Chatwoot's base URL (e.g. https://chat.example.com)")
        elif chatwoot.scheme == "http" and not allow_http:
            problems.append("chatwoot_url uses plain http; use https (the agent's token travels with every call)")
        if settings.chatwoot_token is None:
            problems.append(f"{needs} chatwoot_token, an agent's or agent bot's api_access_token reference")
    if policy is not None:
        problems += grant_problems(settings, policy)
    try:
        mapping.glpi_datetime(mapping.EPOCH, settings.timezone)
    except (KeyError, ValueError):
        problems.append(f"timezone {settings.timezone!r} is not an IANA time zone name")
    return settings.model_copy(update={"api_url": url}), problems


def apply_hook_event(
    current: AnyHook | None, event: HookConfigured | HookRemoved, ctx: SyncContext
) -> tuple[AnyHook | None, list[str]]:
    """The hook's slot after a control event, and the problems that made it refuse the change.

    A refused ``hook_configured`` leaves the current slot untouched. ``hook_removed`` keeps a ``removed`` slot (its
    partition and queue counters) so later events of the hook are set aside with that reason, not lost.
    """
    if isinstance(event, HookRemoved):
        if current is None:
            return None, []
        return (
            UnconfiguredHook(
                hook_id=current.hook_id,
                partition=current.partition,
                parked_first=current.parked_first,
                parked_next=current.parked_next,
                status="removed",
            ),
            [],
        )
    settings, problems = validate_hook_settings(
        event.payload.settings, allow_http=ctx.allow_http, policy=ctx.hook_policy
    )
    if problems:
        return current, problems
    configured = current if isinstance(current, HookRecord) else None
    # A new configuration is the operator's fix for a transient or credentials pause; an operator pause stays.
    keep_pause = configured.pause if configured and configured.pause and configured.pause.kind == "operator" else None
    return (
        HookRecord(
            hook_id=event.hook_id,
            account_id=event.account_id,
            status=event.payload.status,
            account_features=tuple(event.payload.account_features),
            settings=settings,
            pause=keep_pause,
            parked_first=current.parked_first if current else 0,
            parked_next=current.parked_next if current else 0,
            partition=current.partition if current else None,
            rebuilding=configured.rebuilding if configured else False,
            glpi_cursors=configured.glpi_cursors if configured else {},
            set_aside=configured.set_aside if configured else 0,
        ),
        [],
    )
