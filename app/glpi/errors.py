"""GLPI errors, classified by what the caller must do. Every GLPI or transport failure becomes one of these.

    GlpiError                         base; carries http status, GLPI code and message
    ├── GlpiRetryableError            retry later (network, timeout, 408/425/429, 5xx); ``retry_after`` seconds;
    │                                 ``uncertain``: the request may have taken effect (a create may still land)
    ├── GlpiAuthError                 credentials, API switch or rights refused (hook-wide, or for one item only:
    │   │                             the caller tells the two apart by probing a hook-wide capability)
    │   └── GlpiSessionInvalidError   the session is not (or no longer) GLPI's: 401 ERROR_SESSION_TOKEN_INVALID, or
    │                                 (GLPI 11, a token it cannot decode) 400 ERROR_SESSION_TOKEN_MISSING; the
    │                                 client re-inits once before raising
    ├── GlpiUnexpectedResponseError   the answer is not GLPI's (a redirect, a proxy or SSO page, a 404 for the whole
    │                                 API path, an HTML body): something else stands at the API URL
    └── GlpiRejectedError             GLPI refused this request: dead-letter the event, carry on
        └── GlpiNotFoundError         the target item does not exist (404, or ERROR_GLPI_UPDATE with null)

``error_for_response`` is the single translation point from an HTTP response; the client translates transport
exceptions (aiohttp, timeouts) into :class:`GlpiRetryableError` itself. Messages never contain tokens.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Mapping
from typing import Any

#: Configuration or credential failures: the hook cannot work until an operator acts.
AUTH_CODES = frozenset(
    {
        "ERROR_GLPI_LOGIN_USER_TOKEN",
        "ERROR_GLPI_LOGIN",
        "ERROR_WRONG_APP_TOKEN_PARAMETER",
        "ERROR_APP_TOKEN_PARAMETERS_MISSING",
        "ERROR_NOT_ALLOWED_IP",
        "ERROR_LOGIN_PARAMETERS_MISSING",
        "ERROR_LOGIN_WITH_CREDENTIALS_DISABLED",
        "ERROR_RIGHT_MISSING",
    }
)
#: The session token is unknown to GLPI. GLPI 11 answers a token it cannot decode (never issued, or made by another
#: instance) with ERROR_SESSION_TOKEN_MISSING, as if none were sent: both mean "open a new session".
SESSION_CODES = frozenset({"ERROR_SESSION_TOKEN_INVALID", "ERROR_SESSION_TOKEN_MISSING"})
#: Refused before GLPI did anything: a retry cannot duplicate.
NOT_PROCESSED_STATUSES = frozenset({408, 425, 429})
PERMISSION_MESSAGE = "You don't have permission to perform this action."
_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)


class GlpiError(Exception):
    """Base of every GLPI failure.

    Attributes:
        status: HTTP status, or None for transport failures.
        code: GLPI error code (element 0 of the error body), or a synthetic code such as ``HTTP_503``.
        message: GLPI's message (element 1), or a description of what answered; possibly empty.
    """

    def __init__(self, code: str, message: str = "", status: int | None = None) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.status = status


class GlpiRetryableError(GlpiError):
    """Transient: retry with backoff.

    Attributes:
        retry_after: the server's hint in seconds, when it gave one.
        uncertain: the request may have reached GLPI and taken effect (a timeout, a dropped connection, a 5xx);
            False when it certainly did not (connection refused, 429).
        still_running: GLPI may still be working on it and commit it *later* (no answer came from GLPI itself:
            a timeout, a dropped connection, a proxy's 502/503/504). False when GLPI answered with its own error.
    """

    def __init__(
        self,
        code: str,
        message: str = "",
        status: int | None = None,
        retry_after: float | None = None,
        *,
        uncertain: bool = True,
        still_running: bool | None = None,
    ) -> None:
        super().__init__(code, message, status)
        self.retry_after = retry_after
        self.uncertain = uncertain
        self.still_running = uncertain if still_running is None else still_running


class GlpiAuthError(GlpiError):
    """Operator action: fix the hook's app token, user token, API switch, IP allow-list or profile rights."""


class GlpiSessionInvalidError(GlpiAuthError):
    """The session token expired or was killed; the client re-inits once and replays before raising this."""


class GlpiUnexpectedResponseError(GlpiError):
    """Something that is not GLPI answered (a redirect, a proxy or SSO page, a 404 for the whole API path)."""


class GlpiRejectedError(GlpiError):
    """GLPI refused this request for this data; retrying the same request cannot succeed."""


class GlpiNotFoundError(GlpiRejectedError):
    """The item the request targets does not exist (deleted or purged in GLPI)."""


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds: a number of seconds or an HTTP date (RFC 9110); None when absent or unreadable."""
    if value is None:
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


def parse_error_body(body: Any) -> tuple[str | None, str]:
    """``(code, message)`` from GLPI's ``["CODE", message]`` body; ``(None, "")`` for anything else."""
    if isinstance(body, list) and body and isinstance(body[0], str) and body[0].startswith("ERROR"):
        raw = body[1] if len(body) > 1 else ""
        message = raw if isinstance(raw, str) else ("" if raw is None else str(raw)[:500])
        return body[0], message
    return None, ""


def describe_answer(status: int, body: Any, headers: Mapping[str, str], where: str) -> str:
    """What answered instead of GLPI, for the operator: status, URL, redirect target or page title."""
    parts = [f"HTTP {status} from {where}"]
    location = headers.get("Location") or headers.get("location")
    if location and 300 <= status < 400:
        parts.append(f"redirecting to {location[:200]}")
    content_type = (headers.get("Content-Type") or headers.get("content-type") or "").split(";")[0].strip()
    if isinstance(body, str) and body.strip():
        title = _TITLE.search(body)
        if title:
            parts.append(f"an HTML page titled {' '.join(title.group(1).split())[:120]!r}")
        else:
            parts.append(f"a {content_type or 'non-JSON'} body")
    elif body is None:
        parts.append("an empty body")
    else:
        parts.append("a JSON body that is not a GLPI error")
    return ", ".join(parts) + " (not GLPI's API)"


def error_for_response(status: int, body: Any, headers: Mapping[str, str] | None = None, where: str = "") -> GlpiError:
    """Classify a non-success response. Total: every status and body maps to exactly one class.

    ``where`` (``METHOD URL``, no query string) names the request in descriptions of non-GLPI answers.
    """
    headers = headers or {}
    code, message = parse_error_body(body)
    retry_after = retry_after_seconds(headers.get("Retry-After"))
    if status in NOT_PROCESSED_STATUSES:
        return GlpiRetryableError(code or f"HTTP_{status}", message, status, retry_after, uncertain=False)
    if status >= 500:
        if code is not None:  # GLPI itself answered: PHP has finished with this request
            return GlpiRetryableError(code, message, status, retry_after, still_running=False)
        text = describe_answer(status, body, headers, where)
        return GlpiRetryableError(f"HTTP_{status}", text, status, retry_after)
    if code is None:
        return GlpiUnexpectedResponseError(f"HTTP_{status}", describe_answer(status, body, headers, where), status)
    if code in SESSION_CODES:
        return GlpiSessionInvalidError(code, message, status)
    if code in AUTH_CODES or (code == "ERROR" and message.startswith("API disabled")):
        return GlpiAuthError(code, message, status)
    if code.startswith("ERROR_GLPI_") and message.startswith(PERMISSION_MESSAGE):
        return GlpiAuthError(code, message, status)
    if (
        status == 404
        or code == "ERROR_ITEM_NOT_FOUND"
        or (code == "ERROR_GLPI_UPDATE" and isinstance(body, list) and len(body) > 1 and body[1] is None)
    ):
        return GlpiNotFoundError(code, message, status)
    if status in (401, 403):
        return GlpiAuthError(code, message, status)
    return GlpiRejectedError(code, message, status)
