"""GLPI clients per hook: tokens resolved where the worker runs, one reused session each, probes cached.

A hook's tokens are resolved here only, through :func:`app.secrets.resolve_token` (granted references only, files
with their links resolved, inline tokens decrypted), and only for a GLPI host the operators allow: nothing is sent
before both checks pass. A client is rebuilt when the hook's URL or tokens change; the old session is killed.
Each hook's client runs at most ``max_requests`` GLPI requests at once, fewer while its GLPI's latency says
requests queue (:mod:`app.glpi.limiter`).
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from app import logs
from app.execute import HookUnavailable, probe_hook
from app.glpi import GlpiClient
from app.glpi.limiter import AdaptiveLimit, RequestLimiter
from app.metrics import Metrics
from app.secrets import HookConfigError, TokenVault, resolve_token
from app.sync.hook_config import host_problem
from app.sync.state import HookPolicy, HookRecord

#: A probe's answer is reused this long (many events may fail at once; GLPI is asked once).
PROBE_TTL = 30.0


def glpi_ssl_context(ca_file: Path | None) -> ssl.SSLContext | None:
    """Verification against ``ca_file`` (a private CA) on top of nothing else; None: the system's trust store."""
    if ca_file is None:
        return None
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise HookConfigError(f"the GLPI CA bundle {ca_file} cannot be used: {exc}") from None


@dataclass
class _HookClient:
    fingerprint: str
    client: GlpiClient
    probed_at: float = 0.0
    probe: HookUnavailable | None = None


class HookClients:
    def __init__(
        self,
        timeout: float,
        metrics: Metrics,
        policy: HookPolicy | None = None,
        vault: TokenVault | None = None,
        ca_file: Path | None = None,
        max_requests: int = 32,
    ) -> None:
        self.timeout = timeout
        self.metrics = metrics
        self.policy = policy or HookPolicy()
        self.vault = vault
        self.ca_file = ca_file
        self.max_requests = max_requests
        self._http: aiohttp.ClientSession | None = None
        self._clients: dict[int, _HookClient] = {}
        self._background: set[asyncio.Future[None]] = set()

    def _http_session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
        return self._http

    def _entry(self, hook: HookRecord) -> _HookClient:
        settings = hook.settings
        refused = host_problem(settings.api_url, self.policy)
        if refused:  # the allow-list may have changed since the hook was configured
            raise HookConfigError(refused)
        app_token = resolve_token(settings.app_token, "app_token", self.policy, self.vault)
        user_token = resolve_token(settings.user_token, "user_token", self.policy, self.vault)
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
            ssl_context=glpi_ssl_context(self.ca_file),
            limiter=RequestLimiter(AdaptiveLimit(maximum=self.max_requests, initial=8)),
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

    async def probe(self, hook: HookRecord, fresh: bool = False) -> HookUnavailable | None:
        """Whether the hook as a whole works (cached for :data:`PROBE_TTL` seconds unless ``fresh``)."""
        try:
            entry = self._entry(hook)
        except HookConfigError as exc:
            return HookUnavailable("auth", str(exc))
        now = time.monotonic()
        if fresh or now - entry.probed_at > PROBE_TTL:
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

    def request_limits(self) -> dict[int, dict[str, float | int | None]]:
        """Per hook: GLPI requests allowed at once now, running now, and the latency floor (ms) the limit uses."""
        limits: dict[int, dict[str, float | int | None]] = {}
        for hook_id, entry in self._clients.items():
            limiter = entry.client.limiter
            if limiter is not None:
                floor = limiter.limit.floor
                limits[hook_id] = {
                    "limit": limiter.limit.current,
                    "maximum": limiter.limit.maximum,
                    "inflight": limiter.inflight,
                    "latency_floor_ms": round(floor * 1000, 1) if floor is not None else None,
                }
        return limits

    async def aclose(self) -> None:
        """Kill every GLPI session (best effort) and close the HTTP pool."""
        await asyncio.gather(*(entry.client.close() for entry in self._clients.values()), return_exceptions=True)
        self._clients.clear()
        if self._http is not None:
            await self._http.close()
