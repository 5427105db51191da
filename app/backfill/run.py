"""Backfill one hook: page through Chatwoot's conversations, publish each one's envelopes, checkpoint, summarise.

A conversation is checkpointed (its display id in a JSON file) once the broker acknowledged all its records, so an
interrupted run resumes where it stopped and a finished one is not redone; ``--fresh`` ignores the checkpoint. A
conversation that fails (Chatwoot errors past the retries) is counted as an error and left out of the checkpoint,
so the next run tries it again. Nothing here writes to GLPI: the worker does, and its redelivery check and Chatwoot
id mappings make a second run write nothing new.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from app.backfill.plan import BACKFILL_HEADER, conversation_envelopes, counted_messages
from app.chatwoot.api import (
    ChatwootClient,
    ChatwootError,
    ChatwootNotFoundError,
    ChatwootRefusedError,
    ChatwootUnreachableError,
)
from app.kafka_io import Record

Send = Callable[[list[Record]], Awaitable[int]]
Progress = Callable[[int, int | None], None]


@dataclass
class Summary:
    """What a run did; printed as a line and available as JSON."""

    conversations: int = 0
    messages: int = 0
    records: int = 0
    skipped: int = 0
    errors: int = 0
    dry_run: bool = False
    error_details: list[str] = field(default_factory=list)

    def line(self) -> str:
        verb = "would publish" if self.dry_run else "published"
        return (
            f"backfill: {self.conversations} conversation(s), {self.messages} message(s) {verb} "
            f"({self.records} records); {self.skipped} skipped; {self.errors} error(s)"
        )

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


class Checkpoint:
    """Display ids of the conversations done, in a small JSON file written atomically after each one."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.done: set[int] = set()
        if path is not None and path.exists():
            with contextlib.suppress(orjson.JSONDecodeError, OSError, TypeError, ValueError):
                self.done = {int(i) for i in orjson.loads(path.read_bytes()).get("done", [])}

    def mark(self, display_id: int) -> None:
        self.done.add(display_id)
        if self.path is None:
            return
        partial = self.path.with_name(self.path.name + ".tmp")
        partial.write_bytes(orjson.dumps({"done": sorted(self.done)}))
        partial.replace(self.path)


@dataclass(frozen=True)
class Scope:
    """Which conversations to import."""

    status: str = "open"
    since: datetime | None = None
    conversation: int | None = None


async def _conversations(
    client: ChatwootClient, scope: Scope, total: list[int | None]
) -> AsyncIterator[dict[str, Any]]:
    if scope.conversation is not None:
        total[0] = 1
        yield await client.conversation(scope.conversation)
        return
    since = scope.since.timestamp() if scope.since else None
    page = 1
    while True:
        items, count = await client.conversations_page(scope.status, page)
        if page == 1:
            total[0] = count
        recent = [c for c in items if since is None or float(c.get("last_activity_at") or 0) >= since]
        for item in recent:
            yield item
        if len(items) < 25 or (since is not None and not recent):
            return  # the last page, or (newest activity first) everything further is older than --since
        page += 1


async def backfill(
    client: ChatwootClient,
    hook_id: int,
    scope: Scope,
    checkpoint: Checkpoint,
    send: Send | None,
    progress: Progress | None = None,
) -> Summary:
    """Import the conversations in ``scope``; ``send`` None is a dry run (nothing published, nothing checkpointed)."""
    summary = Summary(dry_run=send is None)
    total: list[int | None] = [None]
    seen = 0
    try:
        async for conversation in _conversations(client, scope, total):
            seen += 1
            display_id = conversation.get("id")
            if not isinstance(display_id, int):
                summary.errors += 1
                summary.error_details.append("a conversation without an id")
                continue
            if display_id in checkpoint.done:
                summary.skipped += 1
            else:
                await _one(client, hook_id, conversation, checkpoint, send, summary)
            if progress is not None:
                progress(seen, total[0])
    except ChatwootRefusedError:
        raise
    except ChatwootError as exc:  # the listing itself failed: what is done is checkpointed; run again to go on
        if isinstance(exc, ChatwootUnreachableError) and not client.reached:
            raise  # it never answered: a wrong URL or a network in the way, not a partial run
        summary.errors += 1
        summary.error_details.append(str(exc))
    return summary


async def _one(
    client: ChatwootClient,
    hook_id: int,
    conversation: dict[str, Any],
    checkpoint: Checkpoint,
    send: Send | None,
    summary: Summary,
) -> None:
    display_id = conversation["id"]
    try:
        messages = await client.messages(display_id)
        sender = (conversation.get("meta") or {}).get("sender") or {}
        contact = None
        if isinstance(sender.get("id"), int):
            try:
                contact = await client.contact(sender["id"])
            except ChatwootNotFoundError:
                contact = sender  # deleted since: the conversation still names it
    except ChatwootRefusedError:
        raise
    except ChatwootError as exc:
        summary.errors += 1
        summary.error_details.append(f"conversation {display_id}: {exc}")
        return
    envelopes = conversation_envelopes(hook_id, client.account_id, conversation, messages, contact)
    records: list[Record] = [
        (str(hook_id).encode(), orjson.dumps(e), [(BACKFILL_HEADER, b"1"), ("cwglpi.source", b"backfill")])
        for e in envelopes
    ]
    if send is not None:
        await send(records)
        checkpoint.mark(display_id)
    summary.conversations += 1
    summary.messages += counted_messages(envelopes)
    summary.records += len(records)
