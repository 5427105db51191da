"""GLPI clients per hook: tokens resolved where the worker runs, one reused session each, probes cached.

A hook's token references are resolved here only (``{"env": NAME}`` reads the worker's environment, ``{"file":
PATH}`` a mounted file). A client is rebuilt when the hook's URL or tokens change; the old session is killed.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from app import logs
from app.events import TokenFromEnv, TokenFromFile
from app.execute import HookUnavailable, probe_hook
from app.glpi import GlpiClient
from app.metrics import Metrics
from app.sync.state import HookRecord

#: A probe's answer is reused this long (many events may fail at once; GLPI is asked once).
PROBE_TTL = 30.0


class HookConfigError(Exception):
    """A hook's token reference cannot be resolved (missing env variable or unreadable file)."""


def resolve_token(ref: str | TokenFromEnv | TokenFromFile | None) -> str | None:
    """The token value behind an inline string or an ``{"env": …}`` / ``{"file": …}`` reference."""
    if ref is None or isinstance(ref, str):
        return ref
    if isinstance(ref, TokenFromEnv):
        value = os.environ.get(ref.env)
        if not value:
            raise HookConfigError(f"token environment variable {ref.env} is not set")
        return value.strip()
    try:
        return Path(ref.file).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise HookConfigError(f"token file {ref.file} cannot be read: {exc.strerror}") from None


@dataclass
class _HookClient:
    fingerprint: str
    client: GlpiClient
    probed_at: float = 0.0
    probe: HookUnavailable | None = None


class HookClients:
    def __init__(self, timeout: float, metrics: Metrics) -> None:
        self.timeout = timeout
        self.metrics = metrics
        self._http: aiohttp.ClientSession | None = None
        self._clients: dict[int, _HookClient] = {}
        self._background: set[asyncio.Future[None]] = set()

    def _http_session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
        return self._http

    def _entry(self, hook: HookRecord) -> _HookClient:
        settings = hook.settings
        app_token = resolve_token(settings.app_token)
        user_token = resolve_token(settings.user_token)
        assert user_token is not None  # HookSettings requires it
        logs.register_secret(app_token)
        logs.register_secret(user_token)
        fingerprint = hashlib.sha256(f"{settings.api_url}\0{app_token}\0{user_token}".encode()).hexdigest()
        current = self._clients.get(hook.hook_id)
        if current is not None and current.fingerprint == fingerprint:
            return current
        if current is not None:
            self.forget(hook.hook_id)
        client = GlpiClient(
            settings.api_url,
            app_token=app_token,
            user_token=user_token,
            http=self._http_session(),
            timeout=self.timeout,
            observer=self.metrics.observe_glpi_request,
            on_session_opened=self.metrics.sessions_opened.inc,
        )
        entry = _HookClient(fingerprint, client)
        self._clients[hook.hook_id] = entry
        return entry

    def client_for(self, hook: HookRecord) -> GlpiClient:
        """The hook's client, reused across events; rebuilt when its URL or tokens change.

        Raises:
            HookConfigError: a token reference cannot be resolved.
        """
        return self._entry(hook).client

    async def probe(self, hook: HookRecord) -> HookUnavailable | None:
        """Whether the hook as a whole works (cached for :data:`PROBE_TTL` seconds)."""
        try:
            entry = self._entry(hook)
        except HookConfigError as exc:
            return HookUnavailable("auth", str(exc))
        now = time.monotonic()
        if now - entry.probed_at > PROBE_TTL:
            entry.probe = await probe_hook(entry.client, hook.settings)
            entry.probed_at = time.monotonic()
        return entry.probe

    def forget(self, hook_id: int) -> None:
        """Drop the hook's client and kill its session in the background."""
        current = self._clients.pop(hook_id, None)
        if current is not None:
            closing = asyncio.ensure_future(current.client.close())
            self._background.add(closing)
            closing.add_done_callback(self._background.discard)

    def sessions(self) -> dict[int, bool]:
        return {hook_id: entry.client.has_session for hook_id, entry in self._clients.items()}

    async def aclose(self) -> None:
        """Kill every GLPI session (best effort) and close the HTTP pool."""
        await asyncio.gather(*(entry.client.close() for entry in self._clients.values()), return_exceptions=True)
        self._clients.clear()
        if self._http is not None:
            await self._http.close()
