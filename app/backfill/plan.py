"""What one conversation of Chatwoot's API becomes on the input topic: the envelopes its webhooks would have made.

Pure: API objects in, envelopes out, in the order the worker needs them (contact, ``conversation_created``, the
messages oldest first, the current status when it is not ``open``). Event ids are stable (``backfill:...``), so a
second run is recognised by the worker's redelivery check and writes nothing new; objects the webhooks synced
already are found by their Chatwoot ids and not created twice.

API shapes differ from webhook bodies (chatwoot-events.md §1): messages carry an integer ``message_type`` and epoch
``created_at``; conversations carry ``account_id``. The envelopes carry webhook shapes, so the worker parses one
contract.
"""

from __future__ import annotations

from typing import Any

#: Record header that marks backfilled records (the worker's logs and the DLQ show where a record came from).
BACKFILL_HEADER = "cwglpi.backfill"
MESSAGE_TYPE_NAMES = {0: "incoming", 1: "outgoing", 2: "activity", 3: "template"}


def _envelope(event: str, hook_id: int, account_id: int, event_id: str, payload: dict[str, Any]) -> dict[str, Any]:
    return {
        "event": event,
        "hook_id": hook_id,
        "account_id": account_id,
        "event_id": event_id,
        "payload": {**payload, "event": event},
    }


def contact_body(contact: dict[str, Any], account_id: int) -> dict[str, Any]:
    """A ``contact_created`` body from the API's contact."""
    keys = ("id", "name", "email", "phone_number", "identifier", "additional_attributes", "custom_attributes")
    return {**{k: contact.get(k) for k in keys}, "account": {"id": account_id}}


def message_body(message: dict[str, Any], conversation: dict[str, Any], account_id: int) -> dict[str, Any]:
    """A ``message_created`` body from the API's message (string type, the conversation, the account)."""
    kind = message.get("message_type")
    return {
        "id": message["id"],
        "content": message.get("content"),
        "message_type": MESSAGE_TYPE_NAMES.get(kind, kind) if isinstance(kind, int) else kind,
        "content_type": message.get("content_type"),
        "content_attributes": message.get("content_attributes") or {},
        "private": bool(message.get("private")),
        "created_at": message.get("created_at"),
        "sender": message.get("sender"),
        "attachments": message.get("attachments") or [],
        "account": {"id": account_id},
        "conversation": conversation,
    }


def conversation_envelopes(
    hook_id: int,
    account_id: int,
    conversation: dict[str, Any],
    messages: list[dict[str, Any]],
    contact: dict[str, Any] | None,
) -> list[dict[str, Any]]:
    """The envelopes of one conversation, in order; activity messages are left out (webhooks never send them)."""
    display_id = conversation["id"]
    bare = {k: v for k, v in conversation.items() if k not in ("messages", "account_id", "uuid", "muted")}
    bare["messages"] = []
    envelopes = []
    if contact and isinstance(contact.get("id"), int):
        envelopes.append(
            _envelope(
                "contact_created",
                hook_id,
                account_id,
                f"backfill:contact:{contact['id']}",
                contact_body(contact, account_id),
            )
        )
    envelopes.append(
        _envelope("conversation_created", hook_id, account_id, f"backfill:conversation:{display_id}", bare)
    )
    for message in sorted(messages, key=lambda m: m["id"]):
        body = message_body(message, bare, account_id)
        if body["message_type"] not in ("incoming", "outgoing", "template"):
            continue
        envelopes.append(_envelope("message_created", hook_id, account_id, f"backfill:message:{message['id']}", body))
    status = conversation.get("status")
    if isinstance(status, str) and status != "open":
        envelopes.append(
            _envelope(
                "conversation_status_changed",
                hook_id,
                account_id,
                f"backfill:status:{display_id}:{status}",
                {**bare, "changed_attributes": None},
            )
        )
    return envelopes


def counted_messages(envelopes: list[dict[str, Any]]) -> int:
    return sum(1 for e in envelopes if e["event"] == "message_created")
