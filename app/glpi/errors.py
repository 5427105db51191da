"""GLPI errors, classified by what the caller must do. Every GLPI or transport failure becomes one of these.

    GlpiError                       base; carries http status, GLPI code and message
    ├── GlpiRetryableError          retry later (network, timeout, 408/425/429, 5xx); ``retry_after`` seconds
    ├── GlpiAuthError               the hook's credentials or rights are broken: pause the hook, alert
    │   └── GlpiSessionInvalidError 401 ERROR_SESSION_TOKEN_INVALID (the client re-inits once before raising)
    └── GlpiRejectedError           GLPI refused this request: dead-letter the event, carry on
        └── GlpiNotFoundError       the target item does not exist (404, or ERROR_GLPI_UPDATE with null)

``error_for_response`` is the single translation point from an HTTP response; the client translates transport
exceptions (aiohttp, timeouts) into :class:`GlpiRetryableError` itself. Messages never contain tokens.
"""

from __future__ import annotations

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
RETRYABLE_STATUSES = frozenset({408, 425, 429})
PERMISSION_MESSAGE = "You don't have permission to perform this action."


class GlpiError(Exception):
    """Base of every GLPI failure.

    Attributes:
        status: HTTP status, or None for transport failures.
        code: GLPI error code (element 0 of the error body), or a synthetic code such as ``HTTP_503``.
        message: GLPI's message (element 1), possibly empty.
    """

    def __init__(self, code: str, message: str = "", status: int | None = None) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.status = status


class GlpiRetryableError(GlpiError):
    """Transient: retry with backoff. ``retry_after`` is the server's hint in seconds, when it gave one."""

    def __init__(self, code: str, message: str = "", status: int | None = None, retry_after: float | None = None):
        super().__init__(code, message, status)
        self.retry_after = retry_after


class GlpiAuthError(GlpiError):
    """Operator action: fix the hook's app token, user token, API switch, IP allow-list or profile rights."""


class GlpiSessionInvalidError(GlpiAuthError):
    """The session token expired or was killed; the client re-inits once and replays before raising this."""


class GlpiRejectedError(GlpiError):
    """GLPI refused this request for this data; retrying the same request cannot succeed."""


class GlpiNotFoundError(GlpiRejectedError):
    """The item the request targets does not exist (deleted or purged in GLPI)."""


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def parse_error_body(body: Any) -> tuple[str | None, str]:
    """``(code, message)`` from GLPI's ``["CODE", message]`` body; ``(None, "")`` for anything else."""
    if isinstance(body, list) and body and isinstance(body[0], str):
        raw = body[1] if len(body) > 1 else ""
        message = raw if isinstance(raw, str) else ("" if raw is None else str(raw)[:500])
        return body[0], message
    return None, ""


def error_for_response(status: int, body: Any, headers: Mapping[str, str] | None = None) -> GlpiError:
    """Classify a non-success response. Total: every status and body maps to exactly one class."""
    headers = headers or {}
    code, message = parse_error_body(body)
    if status in RETRYABLE_STATUSES or status >= 500:
        return GlpiRetryableError(code or f"HTTP_{status}", message, status, _retry_after(headers))
    if code is None:
        text = body if isinstance(body, str) else ""
        return GlpiRejectedError(f"HTTP_{status}", text[:200], status)
    if code == "ERROR_SESSION_TOKEN_INVALID":
        return GlpiSessionInvalidError(code, message, status)
    if code in AUTH_CODES or (code == "ERROR" and message.startswith("API disabled")):
        return GlpiAuthError(code, message, status)
    if code.startswith("ERROR_GLPI_") and message.startswith(PERMISSION_MESSAGE):
        return GlpiAuthError(code, message, status)
    if (
        status == 404
        or code == "ERROR_ITEM_NOT_FOUND"
        or (code == "ERROR_GLPI_UPDATE" and len(body) > 1 and body[1] is None)
    ):
        return GlpiNotFoundError(code, message, status)
    if status in (401, 403):
        return GlpiAuthError(code, message, status)
    return GlpiRejectedError(code, message, status)
