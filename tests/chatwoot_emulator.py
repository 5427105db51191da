"""A Chatwoot v4 emulator for what the product uses: signed account webhooks and the application API.

Facts it follows are in ``tests/chatwoot_emulator.md`` (with where each was checked). Runnable on its own::

    python -m tests.chatwoot_emulator --port 3000 --token agent-token \\
        --webhook-url http://127.0.0.1:8080/webhooks/chatwoot/7 --secret whsec

Test endpoints under ``/_emulator/``:

- ``POST webhook`` ``{"url", "secret", "signed"}``: where account webhooks go (signed unless ``signed`` is false);
- ``POST conversation`` ``{"contact": {...}, "content"}``: a visitor opens a conversation (``contact_created``,
  ``conversation_created``, ``message_created`` webhooks); ``POST message``, ``POST status`` likewise;
- ``POST noise`` ``{"conversation_id"}``: a ``conversation_typing_on`` webhook;
- ``POST conversation_attributes`` ``{"conversation_id", "custom_attributes"}``: an agent's own attributes;
  ``GET conversation/{id}``: its status, messages and custom attributes (and its contact's);
- ``POST seed`` ``{"conversations", "messages"}``: history made without webhooks (what backfill is for);
- ``POST config`` ``{"rate_limit", "retry_after"}``: requests per second per token before 429 (0: none), and
  whether a 429 carries ``Retry-After`` (rack-attack's default response does not);
- ``GET dashboard_app?url=…&conversation=N``: a page that frames ``url`` and posts it the conversation's context
  as Chatwoot's dashboard app tab does;
- ``GET deliveries``: every webhook delivery with its attempts; ``GET requests``: API calls by route.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import itertools
import secrets
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
from aiohttp import web

ACCOUNT = {"id": 7, "name": "Northwind Support"}
INBOX = {"id": 12, "name": "Website"}
CONVERSATIONS_PER_PAGE = 25
MESSAGES_PER_PAGE = 20
#: Chatwoot's default MAXIMUM_FILE_UPLOAD_SIZE (40 MB) per attachment.
MAX_ATTACHMENT_BYTES = 40 * 1024 * 1024
MESSAGE_TYPES = {"incoming": 0, "outgoing": 1, "activity": 2, "template": 3}
#: Delays between the attempts of one delivery (Sidekiq retries with the same delivery id); short for tests.
RETRY_DELAYS = (0.3, 0.6, 1.0, 2.0, 3.0, 5.0, 5.0, 5.0, 5.0, 5.0, 10.0, 10.0, 10.0)


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Chatwoot:
    """One account's contacts, conversations and messages, its webhook, and its deliveries."""

    def __init__(self, token: str, account_id: int = ACCOUNT["id"]) -> None:  # type: ignore[assignment]
        self.token = token
        self.account = {**ACCOUNT, "id": account_id}
        self.contacts: dict[int, dict[str, Any]] = {}
        self.conversations: dict[int, dict[str, Any]] = {}
        self.messages: dict[int, list[dict[str, Any]]] = {}
        self._contact_ids = itertools.count(300)
        self._conversation_ids = itertools.count(1)
        self._message_ids = itertools.count(4000)
        self.webhook: dict[str, Any] = {}
        self.deliveries: list[dict[str, Any]] = []
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.rate_limit = 0.0
        self.retry_after = False
        self._window: dict[str, list[float]] = {}
        self.requests: Counter[str] = Counter()
        self.clock = time.time
        #: Faults of the message-post endpoint: ``{"hold_after": s}`` answers only ``s`` seconds after the message
        #: was created (the caller times out although it landed); ``{"hold_before": s}`` creates it only then.
        self.post_faults: dict[str, float] = {}
        #: Stored files (ActiveStorage blobs) by key: content, MIME type, file name.
        self.blobs: dict[str, tuple[bytes, str, str]] = {}
        self._attachment_ids = itertools.count(900)
        #: This Chatwoot's URL (``FRONTEND_URL``), for attachments' ``data_url``; set from the first request.
        self.base_url = ""
        #: The inbox's channel class, as conversations show it.
        self.channel = "Channel::WebWidget"
        #: Custom attribute definitions, as ``GET /custom_attribute_definitions`` lists them.
        self.definitions: list[dict[str, Any]] = []
        self._definition_ids = itertools.count(1)

    # ------------------------------------------------------------------------------------------- model

    def add_contact(self, name: str | None, email: str | None, phone: str | None) -> dict[str, Any]:
        for contact in self.contacts.values():
            if email and contact["email"] == email:
                return contact
        contact_id = next(self._contact_ids)
        now = self.clock()
        contact = {
            "id": contact_id,
            "name": name or f"visitor-{contact_id}",
            "email": email,
            "phone_number": phone,
            "identifier": None,
            "thumbnail": "",
            "additional_attributes": {},
            "custom_attributes": {},
            "blocked": False,
            "created_at": int(now),
            "last_activity_at": int(now),
        }
        self.contacts[contact_id] = contact
        return contact

    def add_conversation(self, contact: dict[str, Any], status: str = "open") -> dict[str, Any]:
        display_id = next(self._conversation_ids)
        now = self.clock()
        conversation = {
            "id": display_id,
            "uuid": str(uuid.uuid4()),
            "inbox_id": INBOX["id"],
            "contact_id": contact["id"],
            "status": status,
            "created_at": now,
            "last_activity_at": now,
            "custom_attributes": {},
        }
        self.conversations[display_id] = conversation
        self.messages[display_id] = []
        return conversation

    def add_message(
        self,
        display_id: int,
        content: str,
        message_type: str = "incoming",
        private: bool = False,
        content_attributes: dict[str, Any] | None = None,
        files: list[tuple[str, str, bytes]] | None = None,
        links: list[str] | None = None,
    ) -> dict[str, Any]:
        """A message; ``files`` (name, MIME type, bytes) are stored as its attachments, ``links`` are attachments
        whose ``data_url`` is given as is (a purged blob, another host)."""
        conversation = self.conversations[display_id]
        now = self.clock()
        attachments = [self.attach(name, mime, content) for name, mime, content in files or []]
        attachments += [{"id": next(self._attachment_ids), "file_type": "file", "url": url} for url in links or []]
        message = {
            "id": next(self._message_ids),
            "content": content,
            "message_type": message_type,
            "private": private,
            "created_at": now,
            "sender_contact": conversation["contact_id"] if message_type == "incoming" else None,
            "content_attributes": dict(content_attributes or {}),
            "attachments": attachments,
        }
        self.messages[display_id].append(message)
        conversation["last_activity_at"] = now
        return message

    def attach(self, name: str, mime: str, content: bytes) -> dict[str, Any]:
        """Store a file as ActiveStorage does; the attachment's ``file_type`` from its MIME type (FileTypeHelper)."""
        key = uuid.uuid4().hex
        self.blobs[key] = (content, mime, name)
        major = mime.split("/", 1)[0]
        kind = major if major in ("image", "video", "audio") else "file"
        return {"id": next(self._attachment_ids), "file_type": kind, "blob": key, "name": name, "size": len(content)}

    def attachment_push(self, message: dict[str, Any], attachment: dict[str, Any]) -> dict[str, Any]:
        """``Attachment#push_event_data``: ``data_url`` is a signed blob redirect on this Chatwoot."""
        if "url" in attachment:
            data_url = attachment["url"]
        else:
            signed = f"eyJfcmFpbHMiOnsiZGF0YSI6{attachment['blob']}--{secrets.token_hex(20)}"
            data_url = f"{self.base_url}/rails/active_storage/blobs/redirect/{signed}/{attachment['name']}"
        image = attachment["file_type"] == "image"
        return {
            "id": attachment["id"],
            "message_id": message["id"],
            "file_type": attachment["file_type"],
            "account_id": self.account["id"],
            "extension": None,
            "data_url": data_url,
            "thumb_url": data_url if image else "",
            "file_size": attachment.get("size", 0),
            "width": None,
            "height": None,
        }

    # ------------------------------------------------------------------------------------------- shapes

    def _contact_push(self, contact: dict[str, Any]) -> dict[str, Any]:
        keys = ("additional_attributes", "custom_attributes", "email", "id", "identifier", "name", "phone_number")
        return {**{k: contact[k] for k in keys}, "thumbnail": "", "blocked": False, "type": "contact"}

    def _agent(self) -> dict[str, Any]:
        return {"id": 1, "name": "Ana Agent", "available_name": "Ana Agent", "avatar_url": "", "type": "user"}

    def _nested_message(self, display_id: int, message: dict[str, Any]) -> dict[str, Any]:
        """``conversation.messages[]`` in webhooks and API lists: integer type, epoch seconds."""
        contact_id = message["sender_contact"]
        sender = self._contact_push(self.contacts[contact_id]) if contact_id else self._agent()
        return {
            "id": message["id"],
            "content": message["content"],
            "account_id": self.account["id"],
            "inbox_id": INBOX["id"],
            "conversation_id": display_id,
            "message_type": MESSAGE_TYPES[message["message_type"]],
            "created_at": int(message["created_at"]),
            "updated_at": _iso(message["created_at"]),
            "private": message["private"],
            "status": "sent",
            "source_id": None,
            "content_type": "text",
            "content_attributes": message.get("content_attributes", {}),
            "sender_type": "Contact" if contact_id else "User",
            "sender_id": contact_id or 1,
            "sender": sender,
            **self._attachments_of(message),
        }

    def _attachments_of(self, message: dict[str, Any]) -> dict[str, Any]:
        """``{"attachments": [...]}`` for a message with files; ``{}`` otherwise (Chatwoot leaves the key out)."""
        files = message.get("attachments") or []
        return {"attachments": [self.attachment_push(message, a) for a in files]} if files else {}

    def _conversation_push(self, display_id: int, with_last_message: bool = True) -> dict[str, Any]:
        """``Conversation#push_event_data``: the webhook shape (no account id) and the API list item's core."""
        conversation = self.conversations[display_id]
        contact = self.contacts[conversation["contact_id"]]
        messages = self.messages[display_id]
        nested = [self._nested_message(display_id, messages[-1])] if messages and with_last_message else []
        return {
            "additional_attributes": {},
            "can_reply": True,
            "channel": self.channel,
            "contact_inbox": {"contact_id": contact["id"], "inbox_id": INBOX["id"], "source_id": conversation["uuid"]},
            "id": display_id,
            "inbox_id": INBOX["id"],
            "messages": nested,
            "labels": [],
            "meta": {"sender": self._contact_push(contact), "assignee": None, "team": None, "hmac_verified": False},
            "status": conversation["status"],
            "custom_attributes": dict(conversation.get("custom_attributes") or {}),
            "snoozed_until": None,
            "unread_count": 0,
            "first_reply_created_at": None,
            "priority": None,
            "waiting_since": int(conversation["last_activity_at"]),
            "agent_last_seen_at": 0,
            "contact_last_seen_at": 0,
            "last_activity_at": int(conversation["last_activity_at"]),
            "timestamp": int(conversation["last_activity_at"]),
            "created_at": int(conversation["created_at"]),
            "updated_at": conversation["last_activity_at"],
        }

    def api_conversation(self, display_id: int) -> dict[str, Any]:
        """An item of ``GET /conversations``: the push data plus ``account_id``, ``uuid`` and ``muted``."""
        conversation = self.conversations[display_id]
        return {
            **self._conversation_push(display_id),
            "account_id": self.account["id"],
            "uuid": conversation["uuid"],
            "muted": False,
        }

    def api_message(self, display_id: int, message: dict[str, Any]) -> dict[str, Any]:
        nested = self._nested_message(display_id, message)
        nested.pop("account_id")
        return nested

    def webhook_message(self, display_id: int, message: dict[str, Any], event: str) -> dict[str, Any]:
        """A ``message_*`` webhook body: string type, ISO time, the whole conversation, ``account``."""
        contact_id = message["sender_contact"]
        sender = self._contact_push(self.contacts[contact_id]) if contact_id else self._agent()
        return {
            "event": event,
            "id": message["id"],
            "content": message["content"],
            "created_at": _iso(message["created_at"]),
            "message_type": message["message_type"],
            "content_type": "text",
            "content_attributes": message.get("content_attributes", {}),
            "source_id": None,
            "additional_attributes": {},
            "private": message["private"],
            "sender": sender,
            "account": dict(self.account),
            "conversation": self._conversation_push(display_id),
            "inbox": dict(INBOX),
            **self._attachments_of(message),
        }

    def webhook_contact(self, contact: dict[str, Any], event: str) -> dict[str, Any]:
        body = {"event": event, "account": dict(self.account), **self._contact_push(contact)}
        body.pop("type")
        return body

    # ------------------------------------------------------------------------------------------- webhooks

    def deliver(self, body: dict[str, Any]) -> dict[str, Any]:
        """Queue one webhook delivery (one delivery id for all its attempts)."""
        delivery = {"delivery_id": str(uuid.uuid4()), "event": body["event"], "body": orjson.dumps(body)}
        delivery.update(attempts=[], delivered=False)
        self.deliveries.append(delivery)
        self.queue.put_nowait(delivery)
        return delivery

    def _headers(self, body: bytes, delivery_id: str) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "User-Agent": "rest-client/2.1.0"}
        if self.webhook.get("signed", True) and self.webhook.get("secret"):
            timestamp = str(int(self.clock()))
            digest = hmac.new(self.webhook["secret"].encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
            headers.update(
                {
                    "X-Chatwoot-Signature": f"sha256={digest.hexdigest()}",
                    "X-Chatwoot-Timestamp": timestamp,
                    "X-Chatwoot-Delivery": delivery_id,
                }
            )
        return headers

    async def run_deliveries(self) -> None:
        """Send queued deliveries one at a time, each retried on non-2xx with the same delivery id."""
        timeout = aiohttp.ClientTimeout(total=5)  # WebhookJob's 5 s timeout
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while True:
                delivery = await self.queue.get()
                for attempt, delay in enumerate((0.0, *RETRY_DELAYS)):
                    await asyncio.sleep(delay)
                    url = self.webhook.get("url")
                    if not url:
                        delivery["attempts"].append("no webhook url")
                        break
                    try:
                        headers = self._headers(delivery["body"], delivery["delivery_id"])
                        async with http.post(url, data=delivery["body"], headers=headers) as resp:
                            await resp.read()
                            delivery["attempts"].append(resp.status)
                            if 200 <= resp.status < 300:
                                delivery["delivered"] = True
                                break
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        delivery["attempts"].append(type(exc).__name__)
                    delivery["retries"] = attempt + 1

    # ------------------------------------------------------------------------------------------- API guard

    def guard(self, request: web.Request, route: str) -> web.Response | None:
        """401 without the right ``api_access_token``; 429 past the rate limit (rack-attack's plain-text body)."""
        self.requests[route] += 1
        token = request.headers.get("api_access_token") or request.query.get("api_access_token")
        if token != self.token:
            return web.json_response({"error": "You need to sign in or sign up before continuing."}, status=401)
        if self.rate_limit > 0:
            now = time.monotonic()
            window = [t for t in self._window.get(token, []) if now - t < 1.0]
            if len(window) >= self.rate_limit:
                self._window[token] = window
                self.requests["429"] += 1
                headers = {"Retry-After": "1"} if self.retry_after else {}
                return web.Response(status=429, text="Retry later\n", headers=headers)
            window.append(now)
            self._window[token] = window
        return None


NOT_FOUND = {"error": "Resource could not be found"}


def build_app(chatwoot: Chatwoot) -> web.Application:
    app = web.Application(client_max_size=128 * 1024 * 1024)
    routes = web.RouteTableDef()

    def account_ok(request: web.Request) -> bool:
        return request.match_info["account_id"] == str(chatwoot.account["id"])

    def conversation_in(request: web.Request) -> int | None:
        """The path's conversation (display id) when it exists in the path's account."""
        text = request.match_info["display_id"]
        display_id = int(text) if text.isdigit() else -1
        return display_id if account_ok(request) and display_id in chatwoot.conversations else None

    @routes.get("/api/v1/accounts/{account_id}/conversations")
    async def conversations(request: web.Request) -> web.Response:
        refused = chatwoot.guard(request, "conversations")
        if refused is not None:
            return refused
        if not account_ok(request):
            return web.json_response(NOT_FOUND, status=404)
        status = request.query.get("status", "open")
        try:
            page = max(1, int(request.query.get("page", "1")))
        except ValueError:
            page = 1
        chosen = [c for c in chatwoot.conversations.values() if status == "all" or c["status"] == status]
        chosen.sort(key=lambda c: (c["last_activity_at"], c["id"]), reverse=True)
        items = chosen[(page - 1) * CONVERSATIONS_PER_PAGE : page * CONVERSATIONS_PER_PAGE]
        meta = {"mine_count": 0, "assigned_count": 0, "unassigned_count": len(chosen), "all_count": len(chosen)}
        payload = [chatwoot.api_conversation(c["id"]) for c in items]
        return web.json_response({"data": {"meta": meta, "payload": payload}})

    @routes.get("/api/v1/accounts/{account_id}/conversations/{display_id}")
    async def conversation(request: web.Request) -> web.Response:
        refused = chatwoot.guard(request, "conversation")
        if refused is not None:
            return refused
        display_id = conversation_in(request)
        if display_id is None:
            return web.json_response(NOT_FOUND, status=404)
        return web.json_response(chatwoot.api_conversation(display_id))

    @routes.get("/api/v1/accounts/{account_id}/conversations/{display_id}/messages")
    async def messages(request: web.Request) -> web.Response:
        refused = chatwoot.guard(request, "messages")
        if refused is not None:
            return refused
        display_id = conversation_in(request)
        if display_id is None:
            return web.json_response(NOT_FOUND, status=404)
        every = chatwoot.messages[display_id]
        before = request.query.get("before")
        if before and before.isdigit():
            every = [m for m in every if m["id"] < int(before)]
        page = every[-MESSAGES_PER_PAGE:]  # the newest ones before the cursor, oldest first
        conv = chatwoot.conversations[display_id]
        meta = {
            "labels": [],
            "additional_attributes": {},
            "contact": chatwoot._contact_push(chatwoot.contacts[conv["contact_id"]]),
            "assignee": None,
            "agent_last_seen_at": None,
            "assignee_last_seen_at": None,
        }
        return web.json_response({"meta": meta, "payload": [chatwoot.api_message(display_id, m) for m in page]})

    @routes.post("/api/v1/accounts/{account_id}/conversations/{display_id}/messages")
    async def create_message(request: web.Request) -> web.Response:
        """What an agent (bot) posts: an outgoing message or a private note, then its ``message_created`` webhook."""
        refused = chatwoot.guard(request, "post_message")
        if refused is not None:
            return refused
        display_id = conversation_in(request)
        if display_id is None:
            return web.json_response(NOT_FOUND, status=404)
        files: list[tuple[str, str, bytes]] = []
        body: dict[str, Any]
        if request.content_type == "multipart/form-data":
            # The dashboard's way with files: attachments[] parts, content_attributes as JSON text (parse_json).
            form = await request.post()
            body = {k: v for k, v in form.items() if isinstance(v, str)}
            for part in form.getall("attachments[]", []):
                if isinstance(part, web.FileField):
                    files.append((part.filename, part.content_type, part.file.read()))
            with contextlib.suppress(orjson.JSONDecodeError):
                body["content_attributes"] = orjson.loads(body.get("content_attributes") or "{}")
            body["private"] = body.get("private") in ("true", "1")
        else:
            body = await request.json()
        if not str(body.get("content") or "").strip() and not files:
            return web.json_response({"error": "Content can't be blank"}, status=422)
        if any(len(content) > MAX_ATTACHMENT_BYTES for _, _, content in files):
            return web.json_response({"message": "File size is too big"}, status=422)
        hold_before = chatwoot.post_faults.pop("hold_before", 0.0)
        if hold_before:
            await asyncio.sleep(hold_before)
        attributes = body.get("content_attributes") if isinstance(body.get("content_attributes"), dict) else {}
        message = chatwoot.add_message(
            display_id,
            str(body.get("content") or ""),
            str(body.get("message_type", "outgoing")),
            bool(body.get("private")),
            attributes,
            files=files,
        )
        chatwoot.deliver(chatwoot.webhook_message(display_id, message, "message_created"))
        hold_after = chatwoot.post_faults.pop("hold_after", 0.0)
        if hold_after:
            await asyncio.sleep(hold_after)
        return web.json_response(chatwoot.api_message(display_id, message))

    @routes.post("/api/v1/accounts/{account_id}/conversations/{display_id}/toggle_status")
    async def toggle_status(request: web.Request) -> web.Response:
        refused = chatwoot.guard(request, "toggle_status")
        if refused is not None:
            return refused
        display_id = conversation_in(request)
        if display_id is None:
            return web.json_response(NOT_FOUND, status=404)
        body = await request.json()
        conversation = chatwoot.conversations[display_id]
        before = conversation["status"]
        wanted = body.get("status") or ("open" if before == "resolved" else "resolved")
        if wanted != before:
            conversation["status"] = wanted
            push = chatwoot._conversation_push(display_id)
            chatwoot.deliver({**push, "event": "conversation_status_changed", "changed_attributes": None})
        return web.json_response({"meta": {}, "payload": {"success": True, "current_status": wanted}})

    @routes.post("/api/v1/accounts/{account_id}/conversations/{display_id}/custom_attributes")
    async def conversation_attributes(request: web.Request) -> web.Response:
        """Chatwoot *assigns* the object it is given (``custom_attributes = params[...]``): ``conversation_updated``."""
        refused = chatwoot.guard(request, "conversation_attributes")
        if refused is not None:
            return refused
        display_id = conversation_in(request)
        if display_id is None:
            return web.json_response(NOT_FOUND, status=404)
        given = (await request.json()).get("custom_attributes")
        conversation = chatwoot.conversations[display_id]
        before = conversation["custom_attributes"]
        conversation["custom_attributes"] = dict(given) if isinstance(given, dict) else {}
        if conversation["custom_attributes"] != before:
            changed = [
                {"custom_attributes": {"previous_value": before, "current_value": conversation["custom_attributes"]}}
            ]
            push = chatwoot._conversation_push(display_id)
            chatwoot.deliver({**push, "event": "conversation_updated", "changed_attributes": changed})
        return web.json_response({"custom_attributes": conversation["custom_attributes"]})

    @routes.put("/api/v1/accounts/{account_id}/contacts/{contact_id}")
    async def update_contact(request: web.Request) -> web.Response:
        """``custom_attributes`` are *merged* into the contact's (``contact_update_params``): ``contact_updated``."""
        refused = chatwoot.guard(request, "update_contact")
        if refused is not None:
            return refused
        contact_id = int(request.match_info["contact_id"]) if request.match_info["contact_id"].isdigit() else -1
        if not account_ok(request) or contact_id not in chatwoot.contacts:
            return web.json_response(NOT_FOUND, status=404)
        body = await request.json()
        found = chatwoot.contacts[contact_id]
        before = dict(found)
        for key in ("name", "email", "phone_number", "identifier"):
            if key in body:
                found[key] = body[key]
        if isinstance(body.get("custom_attributes"), dict):
            found["custom_attributes"] = {**found["custom_attributes"], **body["custom_attributes"]}
        changed = [{k: {"previous_value": before[k], "current_value": v}} for k, v in found.items() if before[k] != v]
        if changed:
            chatwoot.deliver({**chatwoot.webhook_contact(found, "contact_updated"), "changed_attributes": changed})
        return web.json_response({"payload": {**found, "availability_status": "offline", "contact_inboxes": []}})

    @routes.get("/api/v1/accounts/{account_id}/custom_attribute_definitions")
    async def definitions(request: web.Request) -> web.Response:
        refused = chatwoot.guard(request, "definitions")
        if refused is not None:
            return refused
        if not account_ok(request):
            return web.json_response(NOT_FOUND, status=404)
        model = request.query.get("attribute_model")
        return web.json_response([d for d in chatwoot.definitions if not model or d["attribute_model"] == model])

    @routes.post("/api/v1/accounts/{account_id}/custom_attribute_definitions")
    async def define(request: web.Request) -> web.Response:
        """Rails' ``params.require(:custom_attribute_definition)`` (JSON keys are wrapped into it when sent bare)."""
        refused = chatwoot.guard(request, "define")
        if refused is not None:
            return refused
        if not account_ok(request):
            return web.json_response(NOT_FOUND, status=404)
        body = await request.json()
        given = body.get("custom_attribute_definition", body)
        key, model = (
            str(given.get("attribute_key") or "").strip(),
            given.get("attribute_model", "conversation_attribute"),
        )
        if model not in ("conversation_attribute", "contact_attribute") or given.get("attribute_display_type") not in (
            "text",
            "number",
            "currency",
            "percent",
            "link",
            "date",
            "list",
            "checkbox",
        ):
            return web.json_response({"message": f"'{model}' is not a valid attribute_model"}, status=422)
        if not key or not given.get("attribute_display_name"):
            return web.json_response({"message": "Attribute key can't be blank"}, status=422)
        if any(d["attribute_key"] == key and d["attribute_model"] == model for d in chatwoot.definitions):
            return web.json_response({"message": "Attribute key has already been taken"}, status=422)
        definition = {
            "id": next(chatwoot._definition_ids),
            "attribute_display_name": given["attribute_display_name"],
            "attribute_display_type": given["attribute_display_type"],
            "attribute_description": given.get("attribute_description"),
            "attribute_key": key,
            "attribute_model": model,
            "attribute_values": [],
            "default_value": None,
            "regex_pattern": None,
            "regex_cue": None,
        }
        chatwoot.definitions.append(definition)
        return web.json_response(definition)

    @routes.get("/api/v1/accounts/{account_id}/inboxes")
    async def inboxes(request: web.Request) -> web.Response:
        refused = chatwoot.guard(request, "inboxes")
        if refused is not None:
            return refused
        if not account_ok(request):
            return web.json_response(NOT_FOUND, status=404)
        return web.json_response(
            {"payload": [{"id": INBOX["id"], "name": INBOX["name"], "channel_type": "Channel::WebWidget"}]}
        )

    @routes.get("/api/v1/profile")
    async def profile(request: web.Request) -> web.Response:
        refused = chatwoot.guard(request, "profile")
        if refused is not None:
            return refused
        return web.json_response({"id": 1, "name": "Ana Agent", "accounts": [{"id": chatwoot.account["id"]}]})

    @routes.get("/api/v1/accounts/{account_id}/contacts/{contact_id}")
    async def contact(request: web.Request) -> web.Response:
        refused = chatwoot.guard(request, "contact")
        if refused is not None:
            return refused
        contact_id = int(request.match_info["contact_id"]) if request.match_info["contact_id"].isdigit() else -1
        if not account_ok(request) or contact_id not in chatwoot.contacts:
            return web.json_response(NOT_FOUND, status=404)
        found = chatwoot.contacts[contact_id]
        return web.json_response({"payload": {**found, "availability_status": "offline", "contact_inboxes": []}})

    # ------------------------------------------------------------------------------------------- test side

    @routes.post("/_emulator/webhook")
    async def set_webhook(request: web.Request) -> web.Response:
        chatwoot.webhook = await request.json()
        return web.json_response({"ok": True})

    @routes.get("/_emulator/conversation/{display_id}")
    async def show_conversation(request: web.Request) -> web.Response:
        display_id = int(request.match_info["display_id"])
        conversation = chatwoot.conversations[display_id]
        messages = [dict(m) for m in chatwoot.messages[display_id]]
        contact = chatwoot.contacts[conversation["contact_id"]]
        return web.json_response(
            {
                "status": conversation["status"],
                "messages": messages,
                "custom_attributes": conversation["custom_attributes"],
                "contact_custom_attributes": contact["custom_attributes"],
            }
        )

    @routes.get("/_emulator/dashboard_app")
    async def dashboard_app(request: web.Request) -> web.Response:
        """The conversation screen's dashboard app tab, as ``Frame.vue`` makes it: a frame of ``url``, sent
        ``{"event": "appContext", "data": {conversation, contact, currentAgent}}`` as a JSON string (target ``*``)
        when it loads and whenever it posts ``chatwoot-dashboard-app:fetch-info``."""
        display_id = int(request.query["conversation"])
        conversation = chatwoot.api_conversation(display_id)
        contact = chatwoot._contact_push(chatwoot.contacts[chatwoot.conversations[display_id]["contact_id"]])
        agent = {"id": 1, "name": "Ana Agent", "email": "ana@example.org"}
        context = orjson.dumps({"conversation": conversation, "contact": contact, "currentAgent": agent}).decode()
        frame_url = orjson.dumps(request.query["url"]).decode()
        page = f"""<!doctype html><html><head><title>Chatwoot</title></head><body>
<div class="dashboard-app--container">
<iframe id="dashboard-app--frame-0-0" style="width:420px;height:640px;border:0"></iframe>
</div>
<script>
const context = {context};
const frame = document.getElementById("dashboard-app--frame-0-0");
const send = () => frame.contentWindow.postMessage(JSON.stringify({{event: "appContext", data: context}}), "*");
frame.addEventListener("load", send);
window.onmessage = e => {{
  if (typeof e.data !== "string" || e.data !== "chatwoot-dashboard-app:fetch-info") return;
  send();
}};
frame.src = {frame_url};
</script></body></html>"""
        return web.Response(text=page, content_type="text/html")

    @routes.post("/_emulator/conversation_attributes")
    async def operator_attributes(request: web.Request) -> web.Response:
        """An agent sets an attribute of their own in the side panel (replacing the object, as the UI does)."""
        body = await request.json()
        conversation = chatwoot.conversations[int(body["conversation_id"])]
        conversation["custom_attributes"] = {**conversation["custom_attributes"], **body["custom_attributes"]}
        return web.json_response({"ok": True})

    @routes.post("/_emulator/post_faults")
    async def set_post_faults(request: web.Request) -> web.Response:
        chatwoot.post_faults = {k: float(v) for k, v in (await request.json()).items()}
        return web.json_response({"ok": True})

    @routes.post("/_emulator/config")
    async def set_config(request: web.Request) -> web.Response:
        body = await request.json()
        chatwoot.rate_limit = float(body.get("rate_limit", chatwoot.rate_limit))
        chatwoot.retry_after = bool(body.get("retry_after", chatwoot.retry_after))
        chatwoot.channel = str(body.get("channel", chatwoot.channel))
        return web.json_response({"ok": True})

    @routes.post("/_emulator/conversation")
    async def open_conversation(request: web.Request) -> web.Response:
        body = await request.json()
        person = body.get("contact", {})
        known = len(chatwoot.contacts)
        contact = chatwoot.add_contact(person.get("name"), person.get("email"), person.get("phone_number"))
        if len(chatwoot.contacts) > known:
            chatwoot.deliver(chatwoot.webhook_contact(contact, "contact_created"))
        conversation = chatwoot.add_conversation(contact)
        message = chatwoot.add_message(conversation["id"], body.get("content", "Hello"))
        chatwoot.deliver({**chatwoot._conversation_push(conversation["id"]), "event": "conversation_created"})
        chatwoot.deliver(chatwoot.webhook_message(conversation["id"], message, "message_created"))
        return web.json_response({"conversation_id": conversation["id"], "contact_id": contact["id"]})

    @routes.post("/_emulator/message")
    async def post_message(request: web.Request) -> web.Response:
        body = await request.json()
        display_id = int(body["conversation_id"])
        files = [(f["name"], f["content_type"], base64.b64decode(f["content_b64"])) for f in body.get("files", [])]
        message = chatwoot.add_message(
            display_id,
            body.get("content", ""),
            body.get("message_type", "incoming"),
            bool(body.get("private")),
            files=files,
            links=body.get("links"),
        )
        chatwoot.deliver(chatwoot.webhook_message(display_id, message, "message_created"))
        return web.json_response({"message_id": message["id"]})

    @routes.get("/rails/active_storage/blobs/redirect/{signed}/{name}")
    async def blob_redirect(request: web.Request) -> web.Response:
        """ActiveStorage's blob redirect: to the storage service (here the disk service of the same host)."""
        key = request.match_info["signed"].removeprefix("eyJfcmFpbHMiOnsiZGF0YSI6").split("--", 1)[0]
        if key not in chatwoot.blobs:
            return web.Response(status=404, text="Not Found")
        raise web.HTTPFound(f"/rails/active_storage/disk/{key}/{request.match_info['name']}")

    @routes.get("/rails/active_storage/disk/{key}/{name}")
    async def blob_disk(request: web.Request) -> web.Response:
        blob = chatwoot.blobs.get(request.match_info["key"])
        if blob is None:
            return web.Response(status=404, text="Not Found")
        content, mime, name = blob
        disposition = f'inline; filename="{name}"'
        return web.Response(body=content, content_type=mime, headers={"Content-Disposition": disposition})

    @routes.get("/_emulator/files/{display_id}")
    async def conversation_files(request: web.Request) -> web.Response:
        """Each message's files with their bytes (base64): what the customer received."""
        display_id = int(request.match_info["display_id"])
        out = []
        for message in chatwoot.messages.get(display_id, []):
            for attachment in message.get("attachments") or []:
                if "blob" in attachment:
                    content, mime, name = chatwoot.blobs[attachment["blob"]]
                    out.append(
                        {
                            "message_id": message["id"],
                            "name": name,
                            "content_type": mime,
                            "file_type": attachment["file_type"],
                            "content_b64": base64.b64encode(content).decode(),
                        }
                    )
        return web.json_response(out)

    @routes.post("/_emulator/status")
    async def set_status(request: web.Request) -> web.Response:
        body = await request.json()
        display_id = int(body["conversation_id"])
        before = chatwoot.conversations[display_id]["status"]
        chatwoot.conversations[display_id]["status"] = body["status"]
        push = chatwoot._conversation_push(display_id)
        chatwoot.deliver({**push, "event": "conversation_status_changed", "changed_attributes": None})
        changed = [{"status": {"previous_value": before, "current_value": body["status"]}}]
        chatwoot.deliver({**push, "event": "conversation_updated", "changed_attributes": changed})
        return web.json_response({"ok": True})

    @routes.post("/_emulator/noise")
    async def noise(request: web.Request) -> web.Response:
        body = await request.json()
        display_id = int(body["conversation_id"])
        push = chatwoot._conversation_push(display_id)
        chatwoot.deliver({"event": "conversation_typing_on", "conversation": push, "user": chatwoot._agent()})
        return web.json_response({"ok": True})

    @routes.post("/_emulator/seed")
    async def seed(request: web.Request) -> web.Response:
        body = await request.json()
        statuses = body.get("statuses", ["open"])
        start = chatwoot.clock() - 86400 * 30
        created = []
        for index in range(int(body.get("conversations", 1))):
            chatwoot.clock = lambda t=start + index * 60: t  # history: a minute apart, a month ago
            contact = chatwoot.add_contact(f"Customer {index}", f"customer{index}@example.org", None)
            conversation = chatwoot.add_conversation(contact, statuses[index % len(statuses)])
            for number in range(int(body.get("messages", 3))):
                chatwoot.clock = lambda t=start + index * 60 + number + 1: t
                kind = "incoming" if number % 2 == 0 else "outgoing"
                chatwoot.add_message(conversation["id"], f"conversation {conversation['id']} message {number}", kind)
            created.append(conversation["id"])
        chatwoot.clock = time.time
        return web.json_response({"conversations": created})

    @routes.get("/_emulator/deliveries")
    async def deliveries(_: web.Request) -> web.Response:
        shown = [{k: v for k, v in d.items() if k != "body"} for d in chatwoot.deliveries]
        return web.json_response(shown)

    @routes.get("/_emulator/requests")
    async def requests(_: web.Request) -> web.Response:
        return web.json_response(dict(chatwoot.requests))

    app.add_routes(routes)

    async def start_deliveries(app: web.Application) -> Any:
        task = asyncio.create_task(chatwoot.run_deliveries())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(start_deliveries)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="Chatwoot v4 emulator (webhooks and application API)")
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("--token", default="agent-token", help="the api_access_token the API accepts")
    parser.add_argument("--account-id", type=int, default=ACCOUNT["id"])
    parser.add_argument("--webhook-url", help="where account webhooks go")
    parser.add_argument("--secret", help="the webhook's signing secret (unsigned without one)")
    args = parser.parse_args()
    chatwoot = Chatwoot(args.token, args.account_id)
    chatwoot.base_url = f"http://127.0.0.1:{args.port}"
    if args.webhook_url:
        chatwoot.webhook = {"url": args.webhook_url, "secret": args.secret, "signed": bool(args.secret)}
    web.run_app(build_app(chatwoot), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
