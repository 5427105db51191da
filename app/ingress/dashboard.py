"""The dashboard app behind each hook's key: the page Chatwoot embeds, and one conversation's view as JSON.

- ``GET /dashboard/{hook_id}?key=<key>``: the page (:mod:`app.dashboard.page`), framed only by the hook's
  Chatwoot (``Content-Security-Policy: frame-ancestors <its origin>``);
- ``GET /dashboard/{hook_id}/conversation/{conversation_id}`` with ``X-Dashboard-Key: <key>``: what the page shows,
  read from the worker that owns the hook (``/state/hook/…/agent``, with ``GLPI_SYNC_DASHBOARD_TOKEN``, which opens
  nothing else on the workers and stays here) and kept a few seconds.

Chatwoot gives the frame no authentication: the key in the URL is the only proof, and every agent of the account
can read it. So the key is a granted secret per hook (``GLPI_SYNC_DASHBOARD_KEY_<ID>`` or the file
``<ID>.dashboard`` in the webhook secrets directory; several, one per line, during a rotation), compared in
constant time; the views answer only about the hook's own account; a wrong key, an unknown hook or a hook without
a key all get the same 404; the JSON is cut down to what the page shows (no internal URL, no token, no error
text from GLPI) and nothing is cached by the browser.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from urllib.parse import urlsplit

import aiohttp
import orjson
from aiohttp import web

from app.dashboard.page import render_page
from app.ingress.secrets import WebhookSecrets
from app.settings import IngressSettings

log = logging.getLogger("cwglpi.ingress")
#: Seconds a conversation's view and a hook's Chatwoot origin are reused.
VIEW_SECONDS = 5.0
ORIGIN_SECONDS = 60.0
WORKER_TIMEOUT = aiohttp.ClientTimeout(total=15)
#: What of the worker's view reaches the browser.
SHOWN = ("conversation_id", "ticket", "requester", "timeline", "glpi", "sync")
NOT_FOUND = "not found\n"


def origin_of(url: str | None) -> str | None:
    """``scheme://host[:port]`` of an http(s) URL; None for anything else."""
    parts = urlsplit(url or "")
    if parts.scheme not in ("http", "https") or not parts.netloc or "@" in parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}"


class Dashboard:
    """The dashboard's routes of one ingress process."""

    def __init__(self, settings: IngressSettings, secrets: WebhookSecrets) -> None:
        self.settings = settings
        self.secrets = secrets
        self._http: aiohttp.ClientSession | None = None
        self._views: dict[tuple[int, int], tuple[float, int, bytes]] = {}
        self._origins: dict[int, tuple[float, str | None]] = {}

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/dashboard/{hook_id}", self.page)
        app.router.add_get("/dashboard/{hook_id}/conversation/{conversation_id}", self.conversation)
        app.on_cleanup.append(self._close)

    async def _close(self, _: web.Application) -> None:
        if self._http is not None:
            await self._http.close()

    # ------------------------------------------------------------------------------------------- checks

    def _hook(self, request: web.Request, given: str | None) -> int | None:
        """The path's hook id when ``given`` is one of its keys; None otherwise (whatever the reason)."""
        text = request.match_info["hook_id"]
        if not text.isdigit() or len(text) > 12:
            return None
        hook_id = int(text)
        offered = (given or "").encode()
        matches = [hmac.compare_digest(offered, key.encode()) for key in self.secrets.dashboard_keys_for(hook_id)]
        return hook_id if any(matches) else None

    @staticmethod
    def _not_found() -> web.Response:
        headers = {"Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'", "Cache-Control": "no-store"}
        return web.Response(status=404, text=NOT_FOUND, headers=headers)

    # ------------------------------------------------------------------------------------------- worker

    async def _worker(self, path: str) -> tuple[int, bytes]:
        """GET ``path`` from the workers with the dashboard token; (502, b"") when none answers."""
        token = self.settings.dashboard_secret()
        if not token:
            return 502, b""
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=WORKER_TIMEOUT)
        try:
            async with self._http.get(
                f"{self.settings.worker_url.rstrip('/')}{path}",
                headers={"Authorization": f"Bearer {token}"},
                allow_redirects=False,
            ) as resp:
                return resp.status, await resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("dashboard: the workers did not answer %s: %s", path.split("/agent")[0], type(exc).__name__)
            return 502, b""

    async def _origin(self, hook_id: int) -> str | None:
        """The hook's Chatwoot origin (its ``chatwoot_url``, else ``GLPI_SYNC_CHATWOOT_URL`` of the ingress)."""
        now = time.monotonic()
        kept = self._origins.get(hook_id)
        if kept is not None and now - kept[0] < ORIGIN_SECONDS:
            return kept[1]
        status, body = await self._worker(f"/state/hook/{hook_id}/dashboard")
        url = None
        if status == 200:
            try:
                url = orjson.loads(body).get("chatwoot_url")
            except (orjson.JSONDecodeError, AttributeError):
                url = None
        origin = origin_of(url) or origin_of(self.settings.chatwoot_url)
        if status == 200:
            self._origins[hook_id] = (now, origin)
        return origin

    # ------------------------------------------------------------------------------------------- routes

    async def page(self, request: web.Request) -> web.Response:
        hook_id = self._hook(request, request.query.get("key"))
        if hook_id is None:
            return self._not_found()
        origin = await self._origin(hook_id)
        if origin is None:
            return web.Response(
                status=503,
                text="the hook's Chatwoot URL is not known here: give the hook a Chatwoot connection (hook set "
                "--chatwoot-url …) or set GLPI_SYNC_CHATWOOT_URL on the ingress\n",
                headers={"Content-Security-Policy": "default-src 'none'", "Cache-Control": "no-store"},
            )
        nonce = secrets.token_urlsafe(16)
        policy = (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; connect-src 'self'; "
            f"base-uri 'none'; form-action 'none'; frame-ancestors {origin}"
        )
        headers = {
            "Content-Security-Policy": policy,
            "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store",
        }
        return web.Response(text=render_page(nonce, origin), content_type="text/html", headers=headers)

    async def conversation(self, request: web.Request) -> web.Response:
        hook_id = self._hook(request, request.headers.get("X-Dashboard-Key"))
        text = request.match_info["conversation_id"]
        if hook_id is None or not text.isdigit() or len(text) > 12:
            return self._not_found()
        conversation_id = int(text)
        now = time.monotonic()
        kept = self._views.get((hook_id, conversation_id))
        if kept is None or now - kept[0] >= VIEW_SECONDS:
            status, body = await self._worker(f"/state/hook/{hook_id}/conversation/{conversation_id}/agent")
            if status == 200:
                try:
                    view = orjson.loads(body)
                    body = orjson.dumps({key: view.get(key) for key in SHOWN})
                except (orjson.JSONDecodeError, AttributeError):
                    status, body = 502, b""
            if len(self._views) >= 1000:
                self._views.pop(next(iter(self._views)))
            kept = self._views[(hook_id, conversation_id)] = (now, status, body)
        _, status, body = kept
        headers = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
        if status == 200:
            return web.Response(body=body, content_type="application/json", headers=headers)
        if status == 404:
            return self._not_found()
        return web.json_response({"error": "the sync service did not answer"}, status=502, headers=headers)
