"""Hook tokens: resolving references where the worker runs, and inline tokens encrypted at rest.

- :func:`resolve_token` turns a hook's token setting into the value to send to GLPI. References name only what
  operators granted (:class:`~app.sync.state.HookPolicy`): variables with the granted prefix, files under the
  granted directory *after resolving symlinks* (a link inside the directory pointing at the service-account token
  is refused). The pure check in ``app/sync/decide.py`` refused the rest before it was ever stored.
- :class:`TokenVault` encrypts inline tokens before they enter the hook table (and its changelog) and decrypts them
  when a hook is used: Fernet (AES-128-CBC + HMAC-SHA256), keys from ``GLPI_SYNC_TOKEN_KEYS`` or
  ``GLPI_SYNC_TOKEN_KEYS_FILE``, comma- or newline-separated, newest first. Rotation: put a new key first, keep the
  old ones after it until every hook was reconfigured (``glpi-sync hook set``), then drop them.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from app.events import TOKEN_FIELDS, HookSettings, TokenEncrypted, TokenFromEnv, TokenFromFile, TokenRef
from app.settings import ToolSettings, WorkerSettings
from app.sync.hook_config import token_reference_problem
from app.sync.state import HookPolicy


class HookConfigError(Exception):
    """A hook's token cannot be used: not granted, not set, unreadable, or not decryptable with our keys."""


class TokenVault:
    """Encrypts and decrypts inline hook tokens; without keys it holds none and refuses to decrypt."""

    def __init__(self, keys: list[str]) -> None:
        self._fernet = MultiFernet([Fernet(key.encode()) for key in keys]) if keys else None

    @classmethod
    def from_text(cls, text: str | None) -> TokenVault:
        """Keys separated by commas or new lines; raises ValueError naming the problem (never the key)."""
        keys = [k.strip() for k in (text or "").replace("\n", ",").split(",") if k.strip()]
        try:
            return cls(keys)
        except ValueError:
            raise ValueError("a token key is not a Fernet key (32 url-safe base64-encoded bytes)") from None

    @property
    def ready(self) -> bool:
        return self._fernet is not None

    def encrypt_inline(self, settings: HookSettings) -> HookSettings:
        """``settings`` with every inline token encrypted (references are left as they are)."""
        if self._fernet is None:
            raise HookConfigError("inline tokens are to be encrypted but no token key is configured")
        update = {
            name: TokenEncrypted(encrypted=self._fernet.encrypt(value.encode()).decode())
            for name in TOKEN_FIELDS
            if isinstance(value := getattr(settings, name), str)
        }
        return settings.model_copy(update=update)

    def decrypt(self, token: TokenEncrypted) -> str:
        if self._fernet is None:
            raise HookConfigError("a hook's token is encrypted but no token key is configured (GLPI_SYNC_TOKEN_KEYS)")
        try:
            return self._fernet.decrypt(token.encrypted.encode()).decode()
        except InvalidToken:
            raise HookConfigError("a hook's encrypted token does not decrypt with the configured token keys") from None


def resolve_token(ref: TokenRef | None, name: str, policy: HookPolicy, vault: TokenVault | None = None) -> str | None:
    """The value behind a hook's token setting, if the operators granted it (raises :class:`HookConfigError`)."""
    if ref is None:
        return None
    if isinstance(ref, TokenEncrypted):
        if vault is None:
            raise HookConfigError(f"{name} is encrypted and no token key is configured")
        return vault.decrypt(ref)
    problem = token_reference_problem(ref, name, policy)
    if problem:
        raise HookConfigError(problem)
    if isinstance(ref, str):
        return ref
    if isinstance(ref, TokenFromEnv):
        value = os.environ.get(ref.env)
        if not value:
            raise HookConfigError(f"{name}: environment variable {ref.env} is not set")
        return value.strip()
    assert isinstance(ref, TokenFromFile)
    root = Path(policy.secrets_dir).resolve()
    try:
        real = Path(ref.file).resolve(strict=True)
    except OSError as exc:
        raise HookConfigError(f"{name}: file {ref.file} cannot be read: {exc.strerror or exc}") from None
    if not real.is_relative_to(root):
        raise HookConfigError(f"{name}: file {ref.file} leads outside {policy.secrets_dir}/ (a link): refused")
    try:
        return real.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise HookConfigError(f"{name}: file {ref.file} cannot be read: {exc.strerror or exc}") from None


def hook_policy(settings: ToolSettings, *, refuse_inline: bool = False) -> HookPolicy:
    """What the operators of this deployment grant to hooks, from its settings."""
    return HookPolicy(
        env_prefix=settings.hook_secret_env_prefix,
        secrets_dir=str(settings.hook_secrets_dir).rstrip("/") or "/",
        allowed_hosts=settings.glpi_hosts,
        allowed_chatwoot_hosts=settings.chatwoot_hosts,
        refuse_inline_tokens=refuse_inline,
    )


def token_vault(settings: WorkerSettings) -> TokenVault:
    """The worker's vault (empty when no key is configured); raises ValueError for an unusable key or file."""
    text = settings.token_keys
    if settings.token_keys_file is not None:
        text = settings.token_keys_file.read_text(encoding="utf-8")
    vault = TokenVault.from_text(text)
    if settings.inline_tokens == "encrypt" and not vault.ready:
        raise ValueError("GLPI_SYNC_INLINE_TOKENS=encrypt needs GLPI_SYNC_TOKEN_KEYS or GLPI_SYNC_TOKEN_KEYS_FILE")
    return vault
