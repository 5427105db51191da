"""GLPI REST API adapter: :class:`GlpiClient`, the error tree of :mod:`app.glpi.errors`, profile rights."""

from app.glpi.client import UNKNOWN_SERVER, Criterion, GlpiClient, GlpiServerInfo, RequestObserver
from app.glpi.errors import (
    GlpiAuthError,
    GlpiError,
    GlpiNotFoundError,
    GlpiRejectedError,
    GlpiRetryableError,
    GlpiSessionInvalidError,
    GlpiUnexpectedResponseError,
    error_for_response,
    retry_after_seconds,
)
from app.glpi.rights import Right, missing_rights

__all__ = [
    "UNKNOWN_SERVER",
    "Criterion",
    "GlpiAuthError",
    "GlpiClient",
    "GlpiError",
    "GlpiNotFoundError",
    "GlpiRejectedError",
    "GlpiRetryableError",
    "GlpiServerInfo",
    "GlpiSessionInvalidError",
    "GlpiUnexpectedResponseError",
    "RequestObserver",
    "Right",
    "error_for_response",
    "missing_rights",
    "retry_after_seconds",
]
