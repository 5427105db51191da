"""GLPI REST API adapter: :class:`GlpiClient` and the error tree of :mod:`app.glpi.errors`."""

from app.glpi.client import Criterion, GlpiClient, RequestObserver
from app.glpi.errors import (
    GlpiAuthError,
    GlpiError,
    GlpiNotFoundError,
    GlpiRejectedError,
    GlpiRetryableError,
    GlpiSessionInvalidError,
    error_for_response,
)

__all__ = [
    "Criterion",
    "GlpiAuthError",
    "GlpiClient",
    "GlpiError",
    "GlpiNotFoundError",
    "GlpiRejectedError",
    "GlpiRetryableError",
    "GlpiSessionInvalidError",
    "RequestObserver",
    "error_for_response",
]
