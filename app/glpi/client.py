"""A small client for GLPI's legacy REST API (``apirest.php``), knowing nothing of Chatwoot.

Contract:
- one GLPI session per client, opened lazily and reused by every call; when GLPI no longer knows the session (10.x:
  401 ``ERROR_SESSION_TOKEN_INVALID``; 11.x also 400 ``ERROR_SESSION_TOKEN_MISSING`` for a token it cannot decode)
  the client re-inits once and replays the request once (a second failure raises :class:`GlpiSessionInvalidError`);
- rows are always read with ids (never ``expand_dropdowns``, which turns ``items_id`` into the parent's *name*);
- URLs are built by joining strings onto the base, never by RFC 3986 resolution (which would drop
  ``apirest.php``); ``Location`` headers are never followed;
- every failure is raised as a :mod:`app.glpi.errors` class; transport errors and timeouts become
  :class:`GlpiRetryableError` (``uncertain`` unless the connection was never made);
- an answer whose shape is not GLPI's (a proxy or SSO page with status 200, a list where an object belongs) is a
  :class:`GlpiUnexpectedResponseError`, never read as "no results": a lookup that finds nothing must mean GLPI
  found nothing, or a create would duplicate;
- with a :class:`~app.glpi.limiter.RequestLimiter`, at most its current limit of requests run at once, whoever
  calls (sessions, lookups, creates); the slot is held for the HTTP exchange only, never across a retry's wait;
- tokens are sent only in headers and never appear in exceptions or in :meth:`__repr__`.
"""

from __future__ import annotations

import asyncio
import html
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import IO, Any, TypeVar

import aiohttp
import orjson

from app.glpi.errors import (
    GlpiError,
    GlpiRetryableError,
    GlpiSessionInvalidError,
    GlpiUnexpectedResponseError,
    describe_answer,
    error_for_response,
)
from app.glpi.limiter import OVERLOAD_STATUSES, RequestLimiter

T = TypeVar("T")
#: Called after every HTTP exchange: (operation, method, http status or 0 on transport error, seconds, glpi code).
RequestObserver = Callable[[str, str, int, float, str | None], None]


#: How long the server's version is trusted, and how soon an unanswered question is asked again.
SERVER_INFO_SECONDS = 3600.0
SERVER_INFO_RETRY_SECONDS = 60.0


@dataclass(frozen=True)
class GlpiServerInfo:
    """What the product needs to know of the GLPI it talks to."""

    version: str = ""
    #: ``document_max_size`` in MiB (GLPI's own unit), None when not told.
    document_max_size_mb: int | None = None

    @property
    def major(self) -> int:
        head = self.version.split(".", 1)[0]
        return int(head) if head.isdigit() else 10

    @property
    def encodes_text(self) -> bool:
        """GLPI 10 stores ``&<>`` as ``&#38;&#60;&#62;`` and cuts varchars after encoding; 11 stores raw text."""
        return self.major < 11

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> GlpiServerInfo:
        version = config.get("version")
        size = config.get("document_max_size")
        size_mb = int(size) if isinstance(size, int | str) and str(size).isdigit() else None
        return cls(version if isinstance(version, str) else "", size_mb)


UNKNOWN_SERVER = GlpiServerInfo()


@dataclass(frozen=True)
class Criterion:
    field: int
    searchtype: str
    value: str
    link: str = "OR"


def _decode(value: Any) -> Any:
    """Undo GLPI 10's storage encoding of ``&<>`` in search output (item reads use the decode header)."""
    if isinstance(value, str):
        return html.unescape(value)
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


class GlpiClient:
    """One GLPI target (API URL + app token + user token) with a reused session."""

    def __init__(
        self,
        api_url: str,
        *,
        user_token: str,
        app_token: str | None = None,
        http: aiohttp.ClientSession,
        timeout: float = 15.0,
        observer: RequestObserver | None = None,
        on_session_opened: Callable[[], None] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        limiter: RequestLimiter | None = None,
    ) -> None:
        self.base = api_url.rstrip("/")
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._user_token = user_token
        self._app_token = app_token
        self._http = http
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._observer = observer
        self._on_session_opened = on_session_opened
        self._session_token: str | None = None
        self._init_lock = asyncio.Lock()
        self._server: GlpiServerInfo | None = None
        self._server_until = 0.0
        self.sessions_opened = 0
        #: Requests to this GLPI at once (shared by every concurrent call of the client); None: unbounded.
        self.limiter = limiter

    def __repr__(self) -> str:
        return f"GlpiClient({self.base!r}, session={'open' if self._session_token else 'none'})"

    @property
    def has_session(self) -> bool:
        return self._session_token is not None

    # ------------------------------------------------------------------------------------------------ transport

    def _headers(self, *, with_session: bool) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "X-GLPI-Sanitized-Content": "false"}
        if self._app_token:
            headers["App-Token"] = self._app_token
        if with_session:
            if self._session_token is None:  # pragma: no cover - _call always opens a session first
                raise GlpiSessionInvalidError("ERROR_SESSION_TOKEN_MISSING", "no session")
            headers["Session-Token"] = self._session_token
        else:
            headers["Authorization"] = f"user_token {self._user_token}"
        return headers

    async def _exchange(
        self,
        op: str,
        method: str,
        path: str,
        *,
        params: Sequence[tuple[str, str]] | None = None,
        body: Any = None,
        with_session: bool = True,
        form: aiohttp.FormData | None = None,
        seconds: float | None = None,
    ) -> tuple[int, Any, dict[str, str]]:
        url = f"{self.base}/{path.lstrip('/')}"
        data: Any = form if form is not None else orjson.dumps(body) if body is not None else None
        headers = self._headers(with_session=with_session)
        if form is not None:
            del headers["Content-Type"]  # aiohttp sets multipart/form-data with its boundary
        request_timeout = aiohttp.ClientTimeout(total=seconds) if seconds is not None else self._timeout
        taken_at = await self.limiter.acquire() if self.limiter is not None else 0.0
        started = time.monotonic()
        status = 0
        code: str | None = None
        timed_out = False
        try:
            async with self._http.request(
                method,
                url,
                params=list(params or ()),
                data=data,
                headers=headers,
                timeout=request_timeout,
                allow_redirects=False,
                ssl=self._ssl,
            ) as resp:
                status = resp.status
                raw = await resp.read()
                headers = dict(resp.headers.items())
        except TimeoutError:
            timed_out = True
            seconds = request_timeout.total
            raise GlpiRetryableError("TIMEOUT", f"{method} {op}: no answer within {seconds:g} s") from None
        except aiohttp.ClientConnectorCertificateError as exc:
            cert = exc.certificate_error
            reason = getattr(cert, "verify_message", None) or str(cert)
            detail = f"the TLS certificate of {exc.host}:{exc.port} was refused: {reason}"
            raise GlpiRetryableError("TLS_CERTIFICATE", detail, uncertain=False) from None
        except aiohttp.ClientConnectorError as exc:
            # The connection was never made, so the request cannot have taken effect.
            reason = exc.os_error.strerror or str(exc.os_error) or type(exc).__name__
            detail = f"cannot connect to {exc.host}:{exc.port} ({reason})"
            raise GlpiRetryableError("CONNECTION", detail, uncertain=False) from None
        except aiohttp.ClientError as exc:
            detail = f"{method} {op}: the connection broke ({type(exc).__name__}: {str(exc)[:120]})"
            raise GlpiRetryableError("CONNECTION", detail) from None
        finally:
            if self.limiter is not None:
                overloaded = timed_out or status in OVERLOAD_STATUSES
                self.limiter.release(taken_at, overloaded=overloaded, answered=status != 0)
            if self._observer is not None and status == 0:
                self._observer(op, method, 0, time.monotonic() - started, None)
        parsed: Any
        if "json" in headers.get("Content-Type", "").lower() or raw[:1] in (b"[", b"{"):
            try:
                parsed = orjson.loads(raw) if raw else None
            except orjson.JSONDecodeError:
                parsed = raw[:2000].decode("utf-8", "replace")
        else:
            parsed = raw[:2000].decode("utf-8", "replace") if raw else None
        if status >= 300:
            code = error_for_response(status, parsed, headers, self._where(method, path)).code
        if self._observer is not None:
            self._observer(op, method, status, time.monotonic() - started, code)
        return status, parsed, headers

    def _where(self, method: str, path: str) -> str:
        return f"{method} {self.base}/{path.lstrip('/')}"

    def _unexpected(self, status: int, body: Any, headers: dict[str, str], method: str, path: str) -> GlpiError:
        code = "HTTP_200_NOT_GLPI" if status < 300 else f"HTTP_{status}"
        return GlpiUnexpectedResponseError(
            code, describe_answer(status, body, headers, self._where(method, path)), status
        )

    async def _init_session(self, stale: str | None) -> None:
        async with self._init_lock:
            if self._session_token is not None and self._session_token != stale:
                return  # another task already re-initialised
            status, body, headers = await self._exchange("initSession", "GET", "initSession", with_session=False)
            if status >= 300:
                raise error_for_response(status, body, headers, self._where("GET", "initSession"))
            if not isinstance(body, dict) or not isinstance(body.get("session_token"), str):
                raise self._unexpected(status, body, headers, "GET", "initSession")
            self._session_token = body["session_token"]
            self.sessions_opened += 1
            if self._on_session_opened is not None:
                self._on_session_opened()

    async def _in_session(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run ``attempt`` with the shared session; when GLPI no longer knows it, re-init once and run it again."""
        for n in (1, 2):
            if self._session_token is None:
                await self._init_session(None)
            used = self._session_token
            try:
                return await attempt()
            except GlpiSessionInvalidError:
                if n == 2:
                    raise
                await self._init_session(used)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _call(
        self,
        op: str,
        method: str,
        path: str,
        *,
        params: Sequence[tuple[str, str]] | None = None,
        body: Any = None,
        form: Callable[[], aiohttp.FormData] | None = None,
        seconds: float | None = None,
    ) -> tuple[int, Any, dict[str, str]]:
        """Run one API call with the shared session (``form`` builds a multipart body, one per attempt)."""

        async def attempt() -> tuple[int, Any, dict[str, str]]:
            built = form() if form is not None else None
            status, parsed, headers = await self._exchange(
                op, method, path, params=params, body=body, form=built, seconds=seconds
            )
            if status >= 300:
                raise error_for_response(status, parsed, headers, self._where(method, path))
            return status, parsed, headers

        return await self._in_session(attempt)

    def _new_id(self, status: int, body: Any, headers: dict[str, str], path: str) -> int:
        """The id a create answered; anything else leaves the create's outcome unknown (the caller looks first)."""
        new_id = body.get("id") if isinstance(body, dict) else None
        if not isinstance(new_id, int) or isinstance(new_id, bool):
            raise GlpiRetryableError(
                "BAD_RESPONSE", describe_answer(status, body, headers, self._where("POST", path)), status
            )
        return new_id

    # ------------------------------------------------------------------------------------------------ sessions

    async def open(self) -> None:
        """Open the session now (``initSession``); raises the classified error when credentials are wrong."""
        await self._init_session(self._session_token)

    async def close(self) -> None:
        """Best-effort ``killSession``; errors are ignored (the session expires on its own anyway)."""
        token, self._session_token = self._session_token, None
        if token is None:
            return
        self._session_token = token
        try:
            await self._exchange("killSession", "GET", "killSession")
        except GlpiError:
            pass
        finally:
            self._session_token = None

    async def _object(self, op: str, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """A call whose answer must be a JSON object."""
        status, body, headers = await self._call(op, method, path, **kwargs)
        if not isinstance(body, dict):
            raise self._unexpected(status, body, headers, method, path)
        return body

    async def _array(self, op: str, method: str, path: str, **kwargs: Any) -> tuple[int, list[Any], dict[str, str]]:
        """A call whose answer must be a JSON array."""
        status, body, headers = await self._call(op, method, path, **kwargs)
        if not isinstance(body, list):
            raise self._unexpected(status, body, headers, method, path)
        return status, body, headers

    async def get_active_profile(self) -> dict[str, Any]:
        body = await self._object("getActiveProfile", "GET", "getActiveProfile")
        profile = body.get("active_profile", body)
        return profile if isinstance(profile, dict) else {}

    async def get_my_entities(self) -> list[dict[str, Any]]:
        """The entities the session may work in, sub-entities included (``getMyEntities?is_recursive=true``)."""
        body = await self._object("getMyEntities", "GET", "getMyEntities", params=[("is_recursive", "true")])
        entities = body.get("myentities", [])
        return [e for e in entities if isinstance(e, dict)] if isinstance(entities, list) else []

    # ------------------------------------------------------------------------------------------------ items

    async def search(
        self,
        itemtype: str,
        criteria: Sequence[Criterion],
        *,
        forcedisplay: Sequence[int] = (2,),
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        """Rows of ``GET /search/{itemtype}`` keyed by option id, values HTML-decoded; [] when empty."""
        params: list[tuple[str, str]] = []
        for i, crit in enumerate(criteria):
            if i:
                params.append((f"criteria[{i}][link]", crit.link))
            params += [
                (f"criteria[{i}][field]", str(crit.field)),
                (f"criteria[{i}][searchtype]", crit.searchtype),
                (f"criteria[{i}][value]", crit.value),
            ]
        params += [(f"forcedisplay[{n}]", str(opt)) for n, opt in enumerate(forcedisplay)]
        params.append(("range", f"0-{limit - 1}"))
        body = await self._object(f"search/{itemtype}", "GET", f"search/{itemtype}", params=params)
        if "totalcount" not in body:
            raise self._unexpected(200, body, {}, "GET", f"search/{itemtype}")
        rows = body.get("data", [])  # an empty result has no "data" key at all
        if not isinstance(rows, list):
            raise self._unexpected(200, body, {}, "GET", f"search/{itemtype}")
        return [{k: _decode(v) for k, v in row.items()} for row in rows if isinstance(row, dict)]

    async def search_ids(self, itemtype: str, criteria: Sequence[Criterion]) -> list[int]:
        """Ids (option 2) of the rows matching ``criteria``, ascending."""
        ids = []
        for row in await self.search(itemtype, criteria):
            value = row.get("2")
            if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
                ids.append(int(value))
        return sorted(ids)

    async def get_item(self, itemtype: str, item_id: int) -> dict[str, Any]:
        return await self._object(f"{itemtype}/{{id}}", "GET", f"{itemtype}/{item_id}")

    async def get_subitems(
        self, itemtype: str, item_id: int, sub_itemtype: str, *, page_size: int = 500
    ) -> list[dict[str, Any]]:
        """Every child row (follows 206 pages with explicit ranges)."""
        rows: list[dict[str, Any]] = []
        start = 0
        while True:
            status, body, headers = await self._array(
                f"{itemtype}/{{id}}/{sub_itemtype}",
                "GET",
                f"{itemtype}/{item_id}/{sub_itemtype}",
                params=[("range", f"{start}-{start + page_size - 1}")],
            )
            page = [row for row in body if isinstance(row, dict)]
            rows += page
            total = _content_range_total(headers.get("Content-Range"))
            if status != 206 or not page or total is None or len(rows) >= total:
                return rows
            start += len(page)

    async def recent_items(self, itemtype: str, *, start: int = 0, limit: int = 50) -> list[dict[str, Any]]:
        """Rows of ``GET /{itemtype}`` by ``date_mod``, newest first, from ``start``; foreign keys are ids.

        Never with ``expand_dropdowns``: GLPI 10 and 11 then give ``items_id`` as the parent ticket's name and
        ``users_id`` as a login, so a row could no longer be told apart from another ticket's.
        """
        _, body, _ = await self._array(
            itemtype,
            "GET",
            itemtype,
            params=[("sort", "date_mod"), ("order", "DESC"), ("range", f"{start}-{start + limit - 1}")],
        )
        return [row for row in body if isinstance(row, dict)]

    async def server_info(self) -> GlpiServerInfo:
        """The GLPI version and document size limit (``getGlpiConfig``), read once and kept for an hour.

        Never raises: when GLPI does not tell (an error, a proxy, a trimmed configuration), the answer is
        :data:`UNKNOWN_SERVER` (GLPI 10's rules, the cautious ones) and it is asked again a minute later.
        """
        now = time.monotonic()
        if self._server is not None and now < self._server_until:
            return self._server
        try:
            body = await self._object("getGlpiConfig", "GET", "getGlpiConfig")
            config = body.get("cfg_glpi")
            info = GlpiServerInfo.from_config(config if isinstance(config, dict) else {})
            self._server_until = now + SERVER_INFO_SECONDS
        except GlpiError:
            info = UNKNOWN_SERVER
            self._server_until = now + SERVER_INFO_RETRY_SECONDS
        self._server = info
        return info

    async def create(self, itemtype: str, fields: dict[str, Any]) -> int:
        """``POST /{itemtype}``: the new id (the ``Location`` header is ignored)."""
        status, body, headers = await self._call(itemtype, "POST", itemtype, body={"input": fields})
        return self._new_id(status, body, headers, itemtype)

    async def upload_document(
        self, filename: str, content: IO[bytes], mime: str | None, fields: dict[str, Any], *, seconds: float
    ) -> tuple[int, dict[str, Any]]:
        """``POST /Document`` as multipart (``uploadManifest`` + the file): the new id and GLPI's ``upload_result``.

        GLPI answers 201 even when it kept no file (a type its document types refuse, a file over PHP's upload
        limit): the Document then has no ``sha1sum``; the caller reads it back to know.
        """

        def form() -> aiohttp.FormData:
            content.seek(0)
            built = aiohttp.FormData()
            built.add_field("uploadManifest", orjson.dumps({"input": fields}).decode())
            built.add_field("filename[0]", content, filename=filename, content_type=mime or "application/octet-stream")
            return built

        status, body, headers = await self._call("Document", "POST", "Document", form=form, seconds=seconds)
        result = body.get("upload_result") if isinstance(body, dict) else None
        return self._new_id(status, body, headers, "Document"), result if isinstance(result, dict) else {}

    async def download_document(
        self, document_id: int, sink: Callable[[bytes], object], cap: int, *, seconds: float
    ) -> int:
        """Stream a Document's file (``Accept: application/octet-stream``) into ``sink``; the bytes read.

        Stops reading past ``cap`` bytes (the answer is then ``cap + 1``: too large). Errors as for any call.
        """
        return await self._in_session(lambda: self._download(document_id, sink, cap, seconds))

    async def _download(self, document_id: int, sink: Callable[[bytes], object], cap: int, seconds: float) -> int:
        url = f"{self.base}/Document/{document_id}"
        headers = {**self._headers(with_session=True), "Accept": "application/octet-stream"}
        taken_at = await self.limiter.acquire() if self.limiter is not None else 0.0
        status, total = 0, 0
        try:
            async with self._http.get(
                url,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=seconds),
                allow_redirects=False,
                ssl=self._ssl,
            ) as resp:
                status = resp.status
                if status >= 300:
                    raw = await resp.content.read(2000)
                    try:
                        parsed: Any = orjson.loads(raw)
                    except orjson.JSONDecodeError:
                        parsed = raw.decode("utf-8", "replace")
                    raise error_for_response(
                        status, parsed, dict(resp.headers), self._where("GET", f"Document/{document_id}")
                    )
                async for chunk in resp.content.iter_chunked(64 * 1024):
                    total += len(chunk)
                    if total > cap:
                        return cap + 1
                    sink(chunk)
        except TimeoutError:
            raise GlpiRetryableError("TIMEOUT", f"GET Document/{document_id}: no answer within {seconds:g} s") from None
        except aiohttp.ClientError as exc:
            detail = f"GET Document/{document_id}: the connection broke ({type(exc).__name__})"
            raise GlpiRetryableError("CONNECTION", detail, uncertain=False) from None
        finally:
            if self.limiter is not None:
                self.limiter.release(taken_at, overloaded=status in OVERLOAD_STATUSES, answered=status != 0)
        return total

    async def update(self, itemtype: str, item_id: int, fields: dict[str, Any]) -> None:
        """``PUT /{itemtype}/{id}`` with the desired values (safe to repeat)."""
        await self._call(f"{itemtype}/{{id}}", "PUT", f"{itemtype}/{item_id}", body={"input": fields})

    async def delete(self, itemtype: str, item_id: int, *, purge: bool = False) -> None:
        """``DELETE /{itemtype}/{id}``: to the trash for Tickets, Users and Contacts unless ``purge``."""
        params = [("force_purge", "true")] if purge else []
        await self._call(f"{itemtype}/{{id}}", "DELETE", f"{itemtype}/{item_id}", params=params)


def _content_range_total(value: str | None) -> int | None:
    if not value or "/" not in value:
        return None
    total = value.rsplit("/", 1)[1]
    return int(total) if total.isdigit() else None
