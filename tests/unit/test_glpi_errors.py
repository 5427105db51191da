"""Every GLPI status and code maps to exactly one error class (the mapping is total)."""

from __future__ import annotations

import pytest

from app.glpi.errors import (
    GlpiAuthError,
    GlpiError,
    GlpiNotFoundError,
    GlpiRejectedError,
    GlpiRetryableError,
    GlpiSessionInvalidError,
    error_for_response,
    parse_error_body,
)

CASES = [
    (401, ["ERROR_SESSION_TOKEN_INVALID", "session_token seems invalid"], GlpiSessionInvalidError),
    (401, ["ERROR_GLPI_LOGIN_USER_TOKEN", "parameter user_token seems invalid"], GlpiAuthError),
    (400, ["ERROR_WRONG_APP_TOKEN_PARAMETER", "parameter app_token seems wrong"], GlpiAuthError),
    (400, ["ERROR_APP_TOKEN_PARAMETERS_MISSING", "missing parameter app_token"], GlpiAuthError),
    (400, ["ERROR_NOT_ALLOWED_IP", "There isn't an active API client"], GlpiAuthError),
    (400, ["ERROR_LOGIN_PARAMETERS_MISSING", "parameter(s) login"], GlpiAuthError),
    (400, ["ERROR", "API disabled"], GlpiAuthError),
    (403, ["ERROR_RIGHT_MISSING", "You don't have permission to perform this action."], GlpiAuthError),
    (400, ["ERROR_GLPI_ADD", "You don't have permission to perform this action."], GlpiAuthError),
    (404, ["ERROR_ITEM_NOT_FOUND", "Item not found"], GlpiNotFoundError),
    (400, ["ERROR_GLPI_UPDATE", None], GlpiNotFoundError),
    (400, ["ERROR_GLPI_ADD", "Unable to add. The user already exists."], GlpiRejectedError),
    (400, ["ERROR_GLPI_ADD", ""], GlpiRejectedError),
    (400, ["ERROR_BAD_ARRAY", "input parameter must be an array of objects"], GlpiRejectedError),
    (400, ["ERROR", "Bad field ID in search criteria"], GlpiRejectedError),
    (400, ["ERROR_JSON_PAYLOAD_INVALID", "JSON payload seems not valid"], GlpiRejectedError),
    (500, ["ERROR_SQL", "Unexpected SQL Error"], GlpiRetryableError),
    (502, "<html>bad gateway</html>", GlpiRetryableError),
    (503, None, GlpiRetryableError),
    (429, ["ERROR", "Too Many Requests"], GlpiRetryableError),
    (408, None, GlpiRetryableError),
    (400, "<html>odd</html>", GlpiRejectedError),
    (405, ["ERROR_METHOD_NOT_ALLOWED", "Method Not Allowed"], GlpiRejectedError),
]


@pytest.mark.parametrize(("status", "body", "cls"), CASES)
def test_classification(status: int, body: object, cls: type[GlpiError]) -> None:
    error = error_for_response(status, body)
    assert type(error) is cls


def test_retry_after_is_carried() -> None:
    error = error_for_response(429, ["ERROR", "slow down"], {"Retry-After": "7"})
    assert isinstance(error, GlpiRetryableError)
    assert error.retry_after == 7.0


@pytest.mark.parametrize("status", range(300, 600))
def test_every_error_status_maps_to_one_actionable_class(status: int) -> None:
    for body in (None, "text", ["SOME_CODE", "msg"], ["ERROR_GLPI_UPDATE", None], {"odd": 1}, []):
        error = error_for_response(status, body)
        assert isinstance(error, GlpiRetryableError | GlpiAuthError | GlpiRejectedError)


def test_error_body_parsing() -> None:
    assert parse_error_body(["CODE", "m"]) == ("CODE", "m")
    assert parse_error_body(["CODE", None]) == ("CODE", "")
    assert parse_error_body({"0": "CODE"}) == (None, "")
