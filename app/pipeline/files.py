"""The worker's file transfers: one HTTP session for downloads, each hook's byte rate, the file metrics."""

from __future__ import annotations

import aiohttp

from app.files.policy import MIB
from app.files.transfer import ByteRate, Fetched, fetch, session
from app.metrics import Metrics
from app.settings import WorkerSettings


class FileTransfers:
    """Downloads of Chatwoot attachments (no credentials, redirects to storage followed) and the hooks' pacing.

    The GLPI side goes through each hook's GLPI client (its session, TLS settings and request limit).
    """

    def __init__(self, settings: WorkerSettings, metrics: Metrics) -> None:
        self.max_bytes = settings.file_policy.max_bytes
        self.timeout = settings.file_timeout
        self.rate = ByteRate(int(settings.file_rate_mb * MIB))
        self.metrics = metrics
        self._http: aiohttp.ClientSession | None = None

    async def fetch(self, url: str, cap: int, hook_id: int) -> Fetched:
        """Download ``url`` paced by the hook's byte rate (raises :class:`~app.files.transfer.FetchError`)."""
        if self._http is None or self._http.closed:
            self._http = session()
        return await fetch(self._http, url, cap=cap, rate=self.rate, key=hook_id, seconds=self.timeout)

    async def pace(self, hook_id: int, size: int) -> None:
        """Wait until ``size`` more bytes of the hook fit in its rate (uploads, GLPI downloads)."""
        await self.rate.take(hook_id, size)

    def observe(self, direction: str, outcome: str, size: int = 0) -> None:
        self.metrics.files.labels(direction, outcome).inc()
        if size:
            self.metrics.file_bytes.labels(direction).inc(size)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    def __repr__(self) -> str:
        return f"FileTransfers(max_bytes={self.max_bytes}, rate={self.rate.per_second})"
