"""A message's attachments on their way to GLPI: which to upload next, how the followup lists them, what to link.

Pure. Each file attachment (``image``, ``audio``, ``video``, ``file``) is uploaded as a GLPI Document before the
followup is created (:class:`StoreFile`, one per attachment, its outcome kept in the message record), so the
followup can say for each one whether it is attached or why it stayed a link; after the followup, the Documents
are linked to it (:class:`LinkFiles`), which shows them in the ticket's timeline. What cannot be uploaded by rule
(files turned off, an address that is not this hook's Chatwoot, more than the per-message number) is decided here
again on every replay, so the followup's content is the same each time.
"""

from __future__ import annotations

from typing import Any

from app.events import Attachment, Message
from app.files.policy import FILE_KINDS, download_refusal, file_name
from app.sync import mapping
from app.sync.commands import LinkFiles, StoreFile
from app.sync.record import earlier_attempt, looks_first
from app.sync.state import MessageRecord, SyncContext, SyncView


def file_marker(account_id: int, message_id: int, key: str) -> str:
    """What a Document we uploaded carries in its comment, to be found again after an unknown outcome."""
    return f"[cw-file:{account_id}:{message_id}:{key}]"


def _key(attachment: Attachment, position: int) -> str:
    return str(attachment.id) if attachment.id is not None else f"#{position}"


def _label(attachment: Attachment) -> str:
    return file_name(attachment.fallback_title, attachment.data_url)


def _refusal(attachment: Attachment, rank: int, view: SyncView, ctx: SyncContext) -> str | None:
    """Why this file attachment is not uploaded, by rule (None: it is, unless the upload itself fails)."""
    policy = ctx.files
    if not policy.enabled:
        return None  # files off: plain links, as before files travelled
    if rank >= policy.max_per_message:
        return f"only the first {policy.max_per_message} files of a message are attached"
    hook_url = view.hook.settings.chatwoot_url if view.hook is not None else None
    return download_refusal(attachment.data_url or "", (ctx.chatwoot_base_url, hook_url), policy)


def _file_attachments(msg: Message) -> list[tuple[str, Attachment]]:
    return [
        (_key(att, i), att) for i, att in enumerate(msg.attachments) if att.file_type in FILE_KINDS and att.data_url
    ]


def store_step(view: SyncView, msg: Message, account_id: int, ctx: SyncContext) -> StoreFile | None:
    """The next attachment to upload before the followup is created, or None when every one is settled."""
    if not ctx.files.enabled:
        return None
    record = view.message
    done = record.files if record is not None else {}
    for rank, (key, att) in enumerate(_file_attachments(msg)):
        if key in done or _refusal(att, rank, view, ctx) is not None:
            continue
        marker = file_marker(account_id, msg.id, key)
        lookup, not_before = earlier_attempt(record.file_pending if record else None, marker, ctx)
        return StoreFile(
            account_id,
            msg.conversation.id,
            msg.id,
            key,
            att.data_url or "",
            _label(att),
            marker,
            entity_id=view.hook.settings.entity_id if view.hook is not None else 0,
            lookup_first=lookup or looks_first(view),
            not_before=not_before,
        )
    return None


def link_step(record: MessageRecord | None, account_id: int) -> LinkFiles | None:
    """Link the uploaded Documents to the followup once it exists (None: nothing to link, or linked)."""
    if record is None or record.followup_id is None or record.files_linked:
        return None
    documents = tuple(
        int(entry["document_id"]) for entry in record.files.values() if isinstance(entry.get("document_id"), int)
    )
    if not documents:
        return None
    return LinkFiles(account_id, record.message_id, record.followup_id, documents)


def attachment_lines(msg: Message, view: SyncView, ctx: SyncContext) -> str:
    """The followup's list of attachments: attached files by name, the others as links saying why."""
    done = view.message.files if view.message is not None else {}
    ranks = {key: rank for rank, (key, _) in enumerate(_file_attachments(msg))}
    lines = []
    for position, att in enumerate(msg.attachments):
        if not att.data_url:
            continue
        key = _key(att, position)
        label = f"{att.file_type or 'file'}: {_label(att)}"
        entry: dict[str, Any] = done.get(key, {})
        if isinstance(entry.get("document_id"), int):
            lines.append(f"{mapping.html_text(label)} (attached)")
            continue
        reason = entry.get("reason")
        if reason is None and key in ranks:
            reason = _refusal(att, ranks[key], view, ctx)
        link = mapping.html_link(att.data_url, label)
        lines.append(f"{link} (not attached: {mapping.html_text(reason)})" if reason else link)
    return "<p>Attachments: " + "<br>".join(lines) + "</p>" if lines else ""
