"""Where the ingress finds each hook's webhook secret and, for unsigned deliveries, its URL token.

A hook's secret comes from ``GLPI_SYNC_WEBHOOK_SECRET_<HOOK_ID>`` or the file ``<secrets dir>/<HOOK_ID>``; a URL
token (for a Chatwoot older than v4.11.2, which cannot sign) from ``GLPI_SYNC_WEBHOOK_URL_TOKEN_<HOOK_ID>`` or
``<secrets dir>/<HOOK_ID>.url-token``. Several secrets may be given at once (comma- or newline-separated) so that a
rotation needs no downtime: any one of them verifies. Files are re-read every few seconds (a rotated Kubernetes
Secret takes effect without a restart). Every value is registered for log redaction.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path

from app.logs import register_secret

SECRET_PREFIX = "GLPI_SYNC_WEBHOOK_SECRET_"
URL_TOKEN_PREFIX = "GLPI_SYNC_WEBHOOK_URL_TOKEN_"
GLPI_SECRET_PREFIX = "GLPI_SYNC_GLPI_WEBHOOK_SECRET_"
DASHBOARD_KEY_PREFIX = "GLPI_SYNC_DASHBOARD_KEY_"
#: A URL token shorter than this is refused at start-up: it is the only thing standing between the internet and
#: the topic.
MIN_URL_TOKEN_CHARS = 32
FILE_TTL_SECONDS = 5.0


def _values(text: str | None) -> list[str]:
    return [v.strip() for v in (text or "").replace("\n", ",").split(",") if v.strip()]


class WebhookSecrets:
    """Per-hook secrets and URL tokens, from the ingress's environment and its secrets directory."""

    def __init__(self, environ: Mapping[str, str] | None = None, directory: Path | None = None) -> None:
        self.environ = dict(os.environ if environ is None else environ)
        self.directory = directory
        self._files: dict[str, tuple[float, list[str]]] = {}

    def _file(self, name: str) -> list[str]:
        if self.directory is None:
            return []
        cached = self._files.get(name)
        now = time.monotonic()
        if cached is not None and now - cached[0] < FILE_TTL_SECONDS:
            return cached[1]
        path = self.directory / name
        try:
            values = _values(path.read_text(encoding="utf-8")) if path.is_file() else []
        except OSError:
            values = []
        for value in values:
            register_secret(value)
        self._files[name] = (now, values)
        return values

    def secrets_for(self, hook_id: int) -> list[str]:
        """The hook's signing secrets (empty: the hook takes no signed deliveries)."""
        values = _values(self.environ.get(f"{SECRET_PREFIX}{hook_id}")) or self._file(str(hook_id))
        for value in values:
            register_secret(value)
        return values

    def glpi_secrets_for(self, hook_id: int) -> list[str]:
        """The secrets of the hook's GLPI 11 webhook (two-way).

        From ``GLPI_SYNC_GLPI_WEBHOOK_SECRET_<ID>`` or the file ``<hook id>.glpi``.
        """
        values = _values(self.environ.get(f"{GLPI_SECRET_PREFIX}{hook_id}")) or self._file(f"{hook_id}.glpi")
        for value in values:
            register_secret(value)
        return values

    def dashboard_keys_for(self, hook_id: int) -> list[str]:
        """The keys that open the hook's dashboard app (``GLPI_SYNC_DASHBOARD_KEY_<ID>`` or ``<ID>.dashboard``).

        Keys shorter than :data:`MIN_URL_TOKEN_CHARS` are never accepted: every agent of the account sees the key,
        but nobody else may guess it.
        """
        values = _values(self.environ.get(f"{DASHBOARD_KEY_PREFIX}{hook_id}")) or self._file(f"{hook_id}.dashboard")
        for value in values:
            register_secret(value)
        return [value for value in values if len(value) >= MIN_URL_TOKEN_CHARS]

    def url_token_for(self, hook_id: int) -> str | None:
        """The hook's URL token for unsigned deliveries, if it has one."""
        values = _values(self.environ.get(f"{URL_TOKEN_PREFIX}{hook_id}")) or self._file(f"{hook_id}.url-token")
        if values:
            register_secret(values[0])
        return values[0] if values else None

    def any_configured(self) -> bool:
        """Whether any hook has a secret or URL token (without one, every delivery is answered 404)."""
        prefixes = (SECRET_PREFIX, URL_TOKEN_PREFIX, GLPI_SECRET_PREFIX)
        if any(name.startswith(prefixes) for name in self.environ):
            return True
        try:
            return self.directory is not None and any(p.is_file() for p in self.directory.iterdir())
        except OSError:  # missing or unreadable: nothing configured there
            return False

    def problems(self) -> list[str]:
        """Configuration mistakes to refuse at start-up (URL tokens too short to be secret, names without an id)."""
        found = []
        for name, value in self.environ.items():
            for prefix in (SECRET_PREFIX, URL_TOKEN_PREFIX, GLPI_SECRET_PREFIX, DASHBOARD_KEY_PREFIX):
                if name.startswith(prefix):
                    suffix = name.removeprefix(prefix)
                    if not suffix.isdigit():
                        found.append(f"{name}: the name must end in the hook id (for example {prefix}7)")
                    elif prefix in (URL_TOKEN_PREFIX, DASHBOARD_KEY_PREFIX) and any(
                        len(v) < MIN_URL_TOKEN_CHARS for v in _values(value)
                    ):
                        found.append(
                            f"{name}: a {'URL token' if prefix == URL_TOKEN_PREFIX else 'dashboard key'} needs at "
                            f"least {MIN_URL_TOKEN_CHARS} random characters "
                            "(for example: python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
                        )
        return found
