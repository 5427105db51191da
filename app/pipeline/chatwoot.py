"""A hook's Chatwoot connection, shared by two-way and write-back: its client, and what a failed call becomes.

The token is resolved here, where the worker runs, through :func:`app.secrets.resolve_token` (granted references
only) and registered with the log redactor before any request carries it.
"""

from __future__ import annotations

from app import logs
from app.chatwoot.api import ChatwootClient, ChatwootError, ChatwootNotFoundError, ChatwootRefusedError
from app.pipeline.dead_letters import DeadLetters
from app.pipeline.source import SourceRecord
from app.secrets import HookConfigError, TokenVault, resolve_token
from app.sync.state import HookRecord, SyncContext


def chatwoot_client(hook: HookRecord, ctx: SyncContext, vault: TokenVault, timeout: float) -> ChatwootClient:
    """A client of the hook's Chatwoot account (use it as an async context manager).

    Raises:
        HookConfigError: the hook has no Chatwoot URL or token, or its token reference cannot be resolved here.
    """
    settings = hook.settings
    if not settings.chatwoot_url:
        raise HookConfigError("the hook's settings have no chatwoot_url")
    token = resolve_token(settings.chatwoot_token, "chatwoot_token", ctx.hook_policy, vault)
    if not token:
        raise HookConfigError("the hook's settings have no chatwoot_token")
    logs.register_secret(token)
    return ChatwootClient(settings.chatwoot_url, hook.account_id, token, rate=0, timeout=timeout)


async def chatwoot_failure(
    exc: HookConfigError | ChatwootError, record: SourceRecord, dead_letters: DeadLetters, hook_id: int, what: str
) -> tuple[str, str]:
    """The outcome of a Chatwoot action that failed with ``exc`` (``what`` names the action).

    Skipped when its conversation or contact is gone, else dead-lettered with the reason and the replay command.
    """
    if isinstance(exc, ChatwootNotFoundError):
        return "skipped", f"{what}: gone from Chatwoot ({exc})"[:300]
    replay = f"glpi-sync dlq replay --hook-id {hook_id}"
    if isinstance(exc, HookConfigError):
        await dead_letters.send(record, "chatwoot", "ChatwootNotConfigured", str(exc))
        return "dead_lettered", f"{what}: {exc} (fix the hook's settings, then {replay})"[:400]
    if isinstance(exc, ChatwootRefusedError):
        await dead_letters.send(record, "chatwoot", "ChatwootRefused", str(exc))
        return "dead_lettered", f"{what}: {exc} (fix the token, then {replay})"[:400]
    await dead_letters.send(record, "chatwoot", "ChatwootUnavailable", str(exc)[:300])
    return "dead_lettered", f"{what}: {exc} ({replay} does it again, never twice)"[:400]
