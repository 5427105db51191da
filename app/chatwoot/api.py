"""A small client of Chatwoot's application API: conversations, their messages, contacts, custom attributes.

The ``api_access_token`` (an agent's or agent bot's) goes in a header, to the configured Chatwoot only: redirects
are not followed. Requests are spaced to ``rate`` per second; a 429 (rack-attack) waits ``Retry-After`` when given,
else backs off exponentially; 5xx and connection errors are retried a few times. Errors::

    ChatwootError                 one line, safe to print (never the token)
    ├── ChatwootRefusedError      401/403: the token is wrong or lacks access to the account
    ├── ChatwootNotFoundError     404: no such account, conversation or contact
    └── ChatwootUnreachableError  connection refused, DNS, timeouts, 5xx or 429 past the retries
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import IO, Any

import aiohttp
import orjson

from app.events import ECHO_ATTRIBUTE

#: Attempts per request (429, 5xx, connection errors) before the request fails.
ATTEMPTS = 8
#: Attempts before a Chatwoot that never answered yet counts as unreachable (a wrong URL fails in seconds).
FIRST_CONTACT_ATTEMPTS = 3
MAX_BACKOFF_SECONDS = 60.0
#: Chatwoot's page sizes: conversations per list page, messages per cursor page.
PAGE_SIZE = 25
MESSAGES_PAGE_SIZE = 20


class ChatwootError(Exception):
    """A Chatwoot API call failed; the message says what and where (never the token)."""


class ChatwootRefusedError(ChatwootError):
    pass


class ChatwootNotFoundError(ChatwootError):
    pass


class ChatwootUnreachableError(ChatwootError):
    pass


class ChatwootClient:
    """One account of one Chatwoot, reached with one access token."""

    def __init__(self, base_url: str, account_id: int, token: str, *, rate: float = 5.0, timeout: float = 30.0) -> None:
        self.base = base_url.rstrip("/")
        self.account_id = account_id
        self._token = token
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._next_at = 0.0
        self._http: aiohttp.ClientSession | None = None
        self.requests = 0
        self.throttled = 0
        #: Chatwoot answered at least once (before that, connection errors fail after FIRST_CONTACT_ATTEMPTS).
        self.reached = False

    async def __aenter__(self) -> ChatwootClient:
        self._http = aiohttp.ClientSession(timeout=self.timeout, headers={"api_access_token": self._token})
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._http is not None:
            await self._http.close()

    async def _pace(self) -> None:
        now = time.monotonic()
        if now < self._next_at:
            await asyncio.sleep(self._next_at - now)
        self._next_at = max(now, self._next_at) + self.interval

    async def get(self, path: str, **params: Any) -> Any:
        """GET ``/api/v1/accounts/{account}/{path}`` as JSON, paced and retried as the module says."""
        return await self.request("GET", path, params=params)

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
        retry: bool = True,
        form: Callable[[], aiohttp.FormData] | None = None,
    ) -> Any:
        """One API call as JSON.

        With ``retry=False`` (a POST that creates something) a timeout, a dropped connection or a 5xx is not
        repeated here but raised as :class:`ChatwootUnreachableError`, since it may have landed.
        """
        assert self._http is not None, "use the client as an async context manager"
        url = f"{self.base}/api/v1/accounts/{self.account_id}/{path}"
        where = f"{self.base} ({path.split('?')[0]})"
        backoff = 1.0
        problem = ""
        for attempt in range(1, ATTEMPTS + 1):
            await self._pace()
            self.requests += 1
            wait = backoff
            try:
                async with self._http.request(
                    method,
                    url,
                    params={k: str(v) for k, v in (params or {}).items()},
                    json=body if form is None else None,
                    data=form() if form is not None else None,
                    allow_redirects=False,
                ) as resp:
                    self.reached = True
                    answer = await resp.read()
                    if 200 <= resp.status < 300:  # 204 and empty bodies too (a write with nothing to say)
                        return orjson.loads(answer) if answer.strip() else {}
                    if resp.status in (401, 403):
                        raise ChatwootRefusedError(
                            f"Chatwoot at {self.base} refused the access token (HTTP {resp.status}) for account "
                            f"{self.account_id}: use an agent's or agent bot's api_access_token of that account"
                        )
                    if resp.status == 404:
                        raise ChatwootNotFoundError(f"Chatwoot at {where}: not found (HTTP 404)")
                    if resp.status == 429:
                        self.throttled += 1
                        problem = "rate limited (HTTP 429)"
                        retry_after = resp.headers.get("Retry-After", "")
                        wait = float(retry_after) if retry_after.isdigit() else backoff
                    elif resp.status >= 500:
                        problem = f"HTTP {resp.status}"
                        if not retry:
                            raise ChatwootUnreachableError(f"Chatwoot at {where}: {problem} (it may have landed)")
                    else:
                        raise ChatwootError(f"Chatwoot at {where} answered HTTP {resp.status}")
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                problem = f"{type(exc).__name__}: {exc}"[:200]
                if not retry:
                    raise ChatwootUnreachableError(f"Chatwoot at {where}: {problem} (it may have landed)") from None
                if not self.reached and attempt >= FIRST_CONTACT_ATTEMPTS:
                    raise ChatwootUnreachableError(
                        f"Chatwoot at {self.base} cannot be reached ({problem}; tried {attempt} times): check the "
                        "URL and that this host may reach it"
                    ) from None
            except orjson.JSONDecodeError:
                raise ChatwootError(f"Chatwoot at {where} did not answer JSON (is this the Chatwoot URL?)") from None
            await asyncio.sleep(min(wait, MAX_BACKOFF_SECONDS))
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
        raise ChatwootUnreachableError(f"Chatwoot at {where}: {problem} after {ATTEMPTS} attempts")

    async def conversations_page(self, status: str, page: int) -> tuple[list[dict[str, Any]], int | None]:
        """One page of conversations (newest activity first) and the total count when Chatwoot gives it."""
        body = await self.get("conversations", status=status, page=page)
        data = body.get("data", {}) if isinstance(body, dict) else {}
        payload = data.get("payload") if isinstance(data, dict) else None
        meta = data.get("meta", {}) if isinstance(data, dict) else {}
        total = meta.get("all_count") if isinstance(meta, dict) else None
        return (payload if isinstance(payload, list) else []), (total if isinstance(total, int) else None)

    async def conversation(self, display_id: int) -> dict[str, Any]:
        body = await self.get(f"conversations/{display_id}")
        return body if isinstance(body, dict) else {}

    async def messages(self, display_id: int) -> list[dict[str, Any]]:
        """Every message of a conversation, oldest first (cursor-paged backwards with ``before``)."""
        collected: list[dict[str, Any]] = []
        before: int | None = None
        while True:
            params = {"before": before} if before is not None else {}
            body = await self.get(f"conversations/{display_id}/messages", **params)
            page = body.get("payload") if isinstance(body, dict) else None
            page = [m for m in page or [] if isinstance(m, dict) and isinstance(m.get("id"), int)]
            if not page:
                break
            collected = page + collected
            if len(page) < MESSAGES_PAGE_SIZE:
                break
            oldest = min(m["id"] for m in page)
            if before is not None and oldest >= before:
                break  # a server that ignores the cursor: stop rather than loop
            before = oldest
        return list({m["id"]: m for m in sorted(collected, key=lambda m: m["id"])}.values())

    async def contact(self, contact_id: int) -> dict[str, Any]:
        body = await self.get(f"contacts/{contact_id}")
        payload = body.get("payload") if isinstance(body, dict) else None
        return payload if isinstance(payload, dict) else {}

    async def post_message(
        self,
        display_id: int,
        content: str,
        *,
        private: bool,
        ref: str,
        files: Sequence[tuple[str, str | None, IO[bytes]]] = (),
    ) -> dict[str, Any]:
        """Post an outgoing message (or a private note) marked with ``content_attributes.cwglpi = ref``.

        ``files`` (name, MIME type, content) go as ``attachments[]`` of a multipart post, the way Chatwoot's
        dashboard sends them (``content_attributes`` then travels as JSON text, which Chatwoot parses).
        Not retried: an unknown outcome raises, and the caller looks for the marker before posting again.
        """
        path = f"conversations/{display_id}/messages"
        attributes = {ECHO_ATTRIBUTE: ref}
        if not files:
            body = {
                "content": content,
                "message_type": "outgoing",
                "private": private,
                "content_attributes": attributes,
            }
            answer = await self.request("POST", path, body={**body, "content_attributes": attributes}, retry=False)
            return answer if isinstance(answer, dict) else {}

        def form() -> aiohttp.FormData:  # a form is consumed by its request: one per attempt
            built = aiohttp.FormData()
            built.add_field("content", content)
            built.add_field("message_type", "outgoing")
            built.add_field("private", "true" if private else "false")
            built.add_field("content_attributes", orjson.dumps(attributes).decode())  # a plain field, as forms send
            for name, mime, data in files:
                data.seek(0)
                built.add_field("attachments[]", data, filename=name, content_type=mime or "application/octet-stream")
            return built

        answer = await self.request("POST", path, form=form, retry=False)
        return answer if isinstance(answer, dict) else {}

    async def channel(self, display_id: int) -> str | None:
        """The conversation's channel (``Channel::Whatsapp``, ...), None when Chatwoot does not say."""
        body = await self.conversation(display_id)
        meta = body.get("meta")
        value = (meta.get("channel") if isinstance(meta, dict) else None) or body.get("channel")
        return value if isinstance(value, str) else None

    async def find_marked(self, display_id: int, ref: str) -> dict[str, Any] | None:
        """The conversation's message we posted for ``ref``, if one exists (the newest pages are read first)."""
        for message in reversed(await self.messages(display_id)):
            attributes = message.get("content_attributes")
            if isinstance(attributes, dict) and attributes.get(ECHO_ATTRIBUTE) == ref:
                return dict(message)
        return None

    async def set_status(self, display_id: int, status: str) -> None:
        """Resolve or reopen a conversation (``toggle_status`` with an explicit status: safe to repeat)."""
        await self.request("POST", f"conversations/{display_id}/toggle_status", body={"status": status})

    async def set_conversation_attributes(self, display_id: int, attributes: dict[str, Any]) -> None:
        """Replace the conversation's custom attributes (Chatwoot assigns the whole object: pass them all)."""
        await self.request(
            "POST", f"conversations/{display_id}/custom_attributes", body={"custom_attributes": attributes}
        )

    async def update_contact_attributes(self, contact_id: int, attributes: dict[str, Any]) -> None:
        """Set these custom attributes of a contact (Chatwoot merges them into the contact's others)."""
        await self.request("PUT", f"contacts/{contact_id}", body={"custom_attributes": attributes})

    async def attribute_definitions(self, model: str) -> list[dict[str, Any]]:
        """The account's custom attribute definitions of ``model`` (``conversation_attribute``, …)."""
        body = await self.get("custom_attribute_definitions", attribute_model=model)
        rows = body if isinstance(body, list) else body.get("payload") if isinstance(body, dict) else None
        return [row for row in rows or [] if isinstance(row, dict)]

    async def create_attribute_definition(
        self, key: str, model: str, display_type: str, name: str, description: str
    ) -> None:
        """Define a custom attribute (key, model, display type, display name and description)."""
        definition = {
            "attribute_key": key,
            "attribute_model": model,
            "attribute_display_type": display_type,
            "attribute_display_name": name,
            "attribute_description": description,
        }
        await self.request("POST", "custom_attribute_definitions", body={"custom_attribute_definition": definition})

    async def inboxes(self) -> list[dict[str, Any]]:
        """The account's inboxes this token's user may see (and post in)."""
        body = await self.get("inboxes")
        payload = body.get("payload") if isinstance(body, dict) else None
        return [i for i in payload or [] if isinstance(i, dict)]

    async def profile(self) -> dict[str, Any]:
        """``GET /api/v1/profile``: who the token belongs to, and its accounts (``hook set`` checks it)."""
        assert self._http is not None, "use the client as an async context manager"
        async with self._http.get(f"{self.base}/api/v1/profile", allow_redirects=False) as resp:
            if resp.status in (401, 403):
                raise ChatwootRefusedError(f"Chatwoot at {self.base} refused the access token (HTTP {resp.status})")
            if resp.status != 200:
                raise ChatwootError(f"Chatwoot at {self.base}/api/v1/profile answered HTTP {resp.status}")
            try:
                body = orjson.loads(await resp.read())
            except orjson.JSONDecodeError:
                raise ChatwootError(
                    f"Chatwoot at {self.base} did not answer JSON (is this the Chatwoot URL?)"
                ) from None
            return body if isinstance(body, dict) else {}


async def missing_definitions(client: ChatwootClient, wanted: tuple[tuple[str, str, str, str, str], ...]) -> list[str]:
    """The keys of ``wanted`` (key, model, display type, name, description) the account does not define yet."""
    defined: set[tuple[str, str]] = set()
    for model in sorted({model for _, model, *_ in wanted}):
        defined |= {(str(d.get("attribute_key")), model) for d in await client.attribute_definitions(model)}
    return [key for key, model, *_ in wanted if (key, model) not in defined]


async def define_missing(client: ChatwootClient, wanted: tuple[tuple[str, str, str, str, str], ...]) -> list[str]:
    """Create the definitions of ``wanted`` the account lacks; never changes one that exists. Returns the keys made."""
    missing = await missing_definitions(client, wanted)
    for key, model, display_type, name, description in wanted:
        if key in missing:
            await client.create_attribute_definition(key, model, display_type, name, description)
    return missing
