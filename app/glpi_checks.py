"""The GLPI half of the health checklist for one hook, shared by ``hook set`` (before publishing) and ``hook test``.

Each :class:`Check` is ``ok``, ``fail`` or ``skip`` (not applicable: TLS on a plain-http URL) with a concrete detail
(host, port, the GLPI code, the right by name) and, when it fails, a fix naming the real hook, URL and setting. The
checks stop at the first line that makes the next ones meaningless (no answer, no session).
"""

from __future__ import annotations

import html
import ssl
import time
from dataclasses import asdict, dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp

from app.events import HookSettings
from app.glpi import (
    GlpiAuthError,
    GlpiClient,
    GlpiError,
    GlpiNotFoundError,
    GlpiRetryableError,
    GlpiUnexpectedResponseError,
    missing_rights,
)
from app.glpi.rights import needed_rights

Status = Literal["ok", "fail", "skip", "warn"]


@dataclass(frozen=True)
class Check:
    check: str
    status: Status
    detail: str
    fix: str = ""

    @property
    def ok(self) -> bool:
        return self.status != "fail"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok, "fix": "" if self.ok else self.fix}


def _pass(name: str, detail: str) -> Check:
    return Check(name, "ok", detail)


def _fail(name: str, detail: str, fix: str) -> Check:
    return Check(name, "fail", detail, fix)


#: GLPI codes that mean one token, and how to fix it.
_TOKEN_CODES = {
    "ERROR_WRONG_APP_TOKEN_PARAMETER": ("app token", "copy the API client's app token (Setup > General > API)"),
    "ERROR_APP_TOKEN_PARAMETERS_MISSING": ("app token", "this GLPI's API client needs an app token: give one"),
    "ERROR_GLPI_LOGIN_USER_TOKEN": (
        "user token",
        "regenerate the user's API token (user preferences > Remote access keys)",
    ),
    "ERROR_GLPI_LOGIN": ("user token", "the user is inactive, or the token belongs to a duplicate login"),
}


def _reach_failure(exc: GlpiError, url: str) -> list[Check]:
    """What a failed ``initSession`` says about reaching GLPI."""
    parts = urlsplit(url)
    where = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
    if isinstance(exc, GlpiUnexpectedResponseError):
        return [
            _fail(
                "GLPI reachable",
                f"no GLPI API at this URL: {exc.message}",
                f"check the URL: it must be your GLPI's API, ending with /apirest.php (now {url})",
            )
        ]
    if exc.code == "TLS_CERTIFICATE":
        return [
            _pass("GLPI reachable", f"{where} answered"),
            _fail(
                "TLS certificate valid",
                exc.message,
                "set GLPI_SYNC_GLPI_CA_FILE to the CA bundle that signed GLPI's certificate, or install a valid one",
            ),
        ]
    if exc.code == "TIMEOUT":
        return [_fail("GLPI reachable", exc.message, f"GLPI at {where} is too slow or a firewall drops packets")]
    return [
        _fail(
            "GLPI reachable",
            exc.message or exc.code,
            f"check that GLPI runs at {where} and that this host may reach it (DNS, firewall, network policy)",
        )
    ]


def _auth_failure(exc: GlpiAuthError, hook_hint: str) -> Check:
    if exc.code in _TOKEN_CODES:
        which, fix = _TOKEN_CODES[exc.code]
        return _fail(f"{which} valid", f"{exc.code}: {exc.message}", f"{fix}, then {hook_hint}")
    if exc.code == "ERROR" and exc.message.startswith("API disabled"):
        return _fail(
            "REST API enabled",
            "GLPI answers: API disabled",
            f"enable it in GLPI (Setup > General > API: REST API and login with external token), then {hook_hint}",
        )
    if exc.code == "ERROR_NOT_ALLOWED_IP":
        return _fail(
            "API client allows this host",
            exc.message,
            "add this host's address to an API client (Setup > General > API > API clients)",
        )
    return _fail("credentials accepted", f"{exc.code}: {exc.message}", hook_hint)


async def glpi_checks(
    settings: HookSettings,
    app_token: str | None,
    user_token: str,
    *,
    hook_hint: str,
    timeout_s: float = 10.0,
    ssl_context: ssl.SSLContext | None = None,
    ca_label: str = "the system trust store",
) -> list[Check]:
    """Connect with the hook's tokens and check what every event needs; ``hook_hint`` is how to apply a fix."""
    checks: list[Check] = []
    url = settings.api_url
    https = urlsplit(url).scheme == "https"
    async with aiohttp.ClientSession() as http:
        client = GlpiClient(
            url, app_token=app_token, user_token=user_token, http=http, timeout=timeout_s, ssl_context=ssl_context
        )
        started = time.monotonic()
        try:
            await client.open()
        except GlpiAuthError as exc:
            return [_pass("GLPI reachable", "GLPI answered"), _auth_failure(exc, hook_hint)]
        except GlpiError as exc:
            return _reach_failure(exc, url)
        try:
            checks.append(_pass("GLPI reachable", f"initSession in {(time.monotonic() - started) * 1000:.0f} ms"))
            if https:
                checks.append(_pass("TLS certificate valid", f"verified against {ca_label}"))
            else:
                checks.append(Check("TLS certificate valid", "skip", "not applicable: plain http"))
            checks.append(_pass("app token valid", "accepted" if app_token else "none needed: accepted"))
            checks.append(_pass("user token valid", "accepted"))
            checks += await _profile_checks(client, settings, hook_hint)
        finally:
            await client.close()
    return checks


async def _profile_checks(client: GlpiClient, settings: HookSettings, hook_hint: str) -> list[Check]:
    checks: list[Check] = []
    try:
        profile = await client.get_active_profile()
        entities = await client.get_my_entities()
    except GlpiError as exc:
        return [_fail("profile readable", f"{exc.code}: {exc.message}", "check the API user's profile in GLPI")]
    name = html.unescape(str(profile.get("name", "?")))
    missing = missing_rights(profile, needed_rights(settings.sync_type))
    for right in needed_rights(settings.sync_type):
        if right in missing:
            checks.append(
                _fail(
                    f"profile may {right.name}",
                    f"profile {name}: not granted",
                    f"grant {right.name!r} to profile {name} (Administration > Profiles > {name}), then {hook_hint}",
                )
            )
        else:
            checks.append(_pass(f"profile may {right.name}", f"profile {name}: granted"))
    visible = {e.get("id"): html.unescape(str(e.get("name", ""))) for e in entities}
    if settings.entity_id in visible:
        checks.append(_pass("entity usable", f"entity {settings.entity_id} ({visible[settings.entity_id]})"))
    else:
        shown = ", ".join(f"{k} ({v})" for k, v in sorted(visible.items(), key=lambda kv: str(kv[0]))[:10]) or "none"
        checks.append(
            _fail(
                "entity usable",
                f"entity {settings.entity_id} does not exist or profile {name} cannot work in it (it can: {shown})",
                "use --entity-id of one of these, or give the API user an authorization in that entity",
            )
        )
    if settings.category_id:
        try:
            category = await client.get_item("ITILCategory", settings.category_id)
            label = html.unescape(str(category.get("completename") or category.get("name") or ""))
            checks.append(_pass("category exists", f"category {settings.category_id} ({label})"))
        except GlpiNotFoundError:
            checks.append(
                _fail(
                    "category exists",
                    f"ITIL category {settings.category_id} does not exist",
                    "use --category-id of an existing category (Setup > Dropdowns > ITIL categories), or none",
                )
            )
        except GlpiRetryableError as exc:
            checks.append(Check("category exists", "warn", f"not checked: {exc.message}"))
    return checks
