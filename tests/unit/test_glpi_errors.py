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
    GlpiUnexpectedResponseError,
    error_for_response,
    parse_error_body,
    retry_after_seconds,
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
    (405, ["ERROR_METHOD_NOT_ALLOWED", "Method Not Allowed"], GlpiRejectedError),
    # Not GLPI speaking: a redirect to an SSO, a proxy's HTML 401/403, a 404 for the whole API path.
    (302, None, GlpiUnexpectedResponseError),
    (401, "<html><title>Sign in</title></html>", GlpiUnexpectedResponseError),
    (403, "<html><title>Access denied</title></html>", GlpiUnexpectedResponseError),
    (404, "<html><title>404 Not Found</title></html>", GlpiUnexpectedResponseError),
    (400, "<html>odd</html>", GlpiUnexpectedResponseError),
    (404, {"message": "no route"}, GlpiUnexpectedResponseError),
    (400, ["not", "glpi"], GlpiUnexpectedResponseError),
]


@pytest.mark.parametrize(("status", "body", "cls"), CASES)
def test_classification(status: int, body: object, cls: type[GlpiError]) -> None:
    error = error_for_response(status, body)
    assert type(error) is cls


def test_retry_after_is_carried() -> None:
    error = error_for_response(429, ["ERROR", "slow down"], {"Retry-After": "7"})
    assert isinstance(error, GlpiRetryableError)
    assert error.retry_after == 7.0


def test_retry_after_as_an_http_date_is_honoured() -> None:
    now = 1_700_000_000.0
    assert retry_after_seconds("Tue, 14 Nov 2023 22:13:40 GMT", now=now) == 20.0
    assert retry_after_seconds("Tue, 14 Nov 2023 22:00:00 GMT", now=now) == 0.0  # in the past: at once
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None


@pytest.mark.parametrize("status", range(300, 600))
def test_every_error_status_maps_to_one_actionable_class(status: int) -> None:
    actionable = GlpiRetryableError | GlpiAuthError | GlpiRejectedError | GlpiUnexpectedResponseError
    for body in (None, "text", ["SOME_CODE", "msg"], ["ERROR_GLPI_UPDATE", None], {"odd": 1}, []):
        error = error_for_response(status, body)
        assert isinstance(error, actionable)


def test_what_answered_is_described_with_status_url_and_page() -> None:
    error = error_for_response(
        302, None, {"Location": "https://sso.example/login?next=/glpi"}, "POST https://glpi.example/apirest.php/Ticket"
    )
    assert error.message.startswith("HTTP 302 from POST https://glpi.example/apirest.php/Ticket")
    assert "redirecting to https://sso.example/login" in error.message
    page = error_for_response(403, "<html><head><title> Request  blocked </title></head></html>", {}, "GET x")
    assert "an HTML page titled 'Request blocked'" in page.message


def test_uncertainty_follows_who_answered() -> None:
    """A 429 was never processed; GLPI's own 500 finished; a proxy's 504 may still be running in PHP."""
    throttled = error_for_response(429, ["ERROR", "slow"])
    sql = error_for_response(500, ["ERROR_SQL", "Unexpected SQL Error"])
    proxy = error_for_response(504, "<html>gateway timeout</html>")
    assert isinstance(throttled, GlpiRetryableError) and not throttled.uncertain
    assert isinstance(sql, GlpiRetryableError) and sql.uncertain and not sql.still_running
    assert isinstance(proxy, GlpiRetryableError) and proxy.uncertain and proxy.still_running


def test_error_body_parsing() -> None:
    assert parse_error_body(["ERROR_X", "m"]) == ("ERROR_X", "m")
    assert parse_error_body(["ERROR_X", None]) == ("ERROR_X", "")
    assert parse_error_body(["SOME_CODE", "m"]) == (None, "")  # GLPI codes all start with ERROR
    assert parse_error_body({"0": "CODE"}) == (None, "")
