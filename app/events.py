"""The producer contract: Kafka record values, parsed into frozen pydantic models.

A record on the input topic is a JSON *envelope*::

    {"event": "<name>", "hook_id": 7, "account_id": 1, "event_id": "<optional>",
     "occurred_at": "<optional ISO-8601>", "payload": {...}}

For Chatwoot events, ``payload`` is the webhook body exactly as Chatwoot sends it. The models below keep only the
fields the sync needs and ignore the rest, so new Chatwoot fields never break parsing; missing *ids* do.

``parse_envelope(raw)`` is the only entry point. It returns a typed event, an :class:`UnknownEvent` (a well-formed
envelope whose event name we do not handle: skipped with a reason), or raises :class:`InvalidEnvelopeError` with a
reason that is safe to log (it never echoes token values).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal, get_args

import orjson
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
)

#: Envelopes above this size are rejected before JSON parsing (a Chatwoot payload is a few kB).
MAX_ENVELOPE_BYTES = 1_000_000

CHATWOOT_EVENTS = (
    "contact_created",
    "contact_updated",
    "conversation_created",
    "conversation_updated",
    "conversation_status_changed",
    "message_created",
    "message_updated",
)
CONTROL_EVENTS = ("hook_configured", "hook_removed")
#: The ``content_attributes`` key of a Chatwoot message the two-way sync posted (its value names the GLPI item):
#: the message's own ``message_created`` webhook is recognised by it and never becomes a GLPI followup.
ECHO_ATTRIBUTE = "cwglpi"
#: Commands accepted only from the control topic (never from the producers' topic).
ControlCommandName = Literal[
    "hook_retry",
    "hook_poll",
    "hook_pause",
    "hook_resume",
    "hook_enable",
    "hook_disable",
    "hook_skip",
    "hook_reset",
    "hook_rebuilt",
    "set_contact_mapping",
    "set_conversation_mapping",
    "resync_contact",
    "resync_conversation",
]
CONTROL_COMMANDS: tuple[str, ...] = get_args(ControlCommandName)


class InvalidEnvelopeError(ValueError):
    """The record cannot be understood; it goes to the dead-letter topic with ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _to_utc(value: Any) -> datetime | None:
    """Normalise Chatwoot's time formats (ISO string, int/float epoch, ``0`` = unset) to aware UTC."""
    if value is None or value in (0, "", 0.0):
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, bool):
        raise ValueError("a boolean is not a time")  # noqa: TRY004 - pydantic only wraps ValueError
    if isinstance(value, int | float):
        try:
            return datetime.fromtimestamp(float(value), tz=UTC)
        except (OverflowError, OSError) as exc:  # pydantic only wraps ValueError
            raise ValueError(f"time {value!r} is out of range") from exc
    if isinstance(value, str):
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    raise ValueError(f"unsupported time value of type {type(value).__name__}")


UtcTime = Annotated[
    datetime | None,
    BeforeValidator(_to_utc),
    WithJsonSchema({"anyOf": [{"type": "string", "format": "date-time"}, {"type": "number"}, {"type": "null"}]}),
]
#: Chatwoot stores hook settings as strings, so an integer setting may arrive as ``"12"``.
_INT_OR_DIGITS = {"anyOf": [{"type": "integer"}, {"type": "string", "pattern": "^[0-9]+$"}]}


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class Contact(_Model):
    """A Chatwoot contact: top-level ``contact_*`` body, ``meta.sender`` or an incoming message's sender."""

    id: int
    name: str | None = None
    email: str | None = None
    phone_number: str | None = None
    identifier: str | None = None


class Attachment(_Model):
    id: int | None = None
    file_type: str | None = None
    data_url: str | None = None
    fallback_title: str | None = None


class NestedMessage(_Model):
    """``conversation.messages[]``: integer ``message_type`` and epoch ``created_at``."""

    id: int
    content: str | None = None
    message_type: int | str | None = None
    private: bool = False
    created_at: UtcTime = None
    sender_type: str | None = None
    content_attributes: dict[str, Any] = Field(default_factory=dict)
    sender: dict[str, Any] | None = None
    attachments: list[Attachment] = Field(default_factory=list)


class ConversationMeta(_Model):
    sender: Contact | None = None


class Conversation(_Model):
    """A conversation payload. ``id`` is the per-account *display* id."""

    id: int
    inbox_id: int | None = None
    channel: str | None = None
    status: Literal["open", "resolved", "pending", "snoozed"] | None = None
    priority: str | None = None
    meta: ConversationMeta = Field(default_factory=ConversationMeta)
    messages: list[NestedMessage] = Field(default_factory=list)
    additional_attributes: dict[str, Any] = Field(default_factory=dict)
    created_at: UtcTime = None
    changed_attributes: list[dict[str, Any]] | None = None

    def changed_keys(self) -> frozenset[str]:
        """Names of the attributes listed in ``changed_attributes`` (empty when it is null)."""
        return frozenset(key for entry in self.changed_attributes or [] for key in entry)


class Message(_Model):
    """A ``message_*`` body: string ``message_type``, ISO ``created_at``, full conversation."""

    id: int
    content: str | None = None
    message_type: Literal["incoming", "outgoing", "template", "activity"]
    private: bool = False
    created_at: UtcTime = None
    content_type: str | None = None
    content_attributes: dict[str, Any] = Field(default_factory=dict)
    sender: dict[str, Any] | None = None
    attachments: list[Attachment] = Field(default_factory=list)
    conversation: Conversation


class ContactPayload(Contact):
    changed_attributes: list[dict[str, Any]] | None = None

    def changed_keys(self) -> frozenset[str]:
        return frozenset(key for entry in self.changed_attributes or [] for key in entry)


class TokenFromEnv(_Model):
    """A token read from the worker's environment variable ``env`` when the hook is used."""

    env: str = Field(min_length=1)


class TokenFromFile(_Model):
    """A token read from the file ``file`` (e.g. a mounted Kubernetes Secret) when the hook is used."""

    file: str = Field(min_length=1)


class TokenEncrypted(_Model):
    """An inline token as the worker keeps it in its hook table (Fernet); refused in envelopes from producers."""

    encrypted: str = Field(min_length=1)


#: A token is given inline (a string), or by reference: ``{"env": "NAME"}`` or ``{"file": "/path"}``.
TokenRef = Annotated[str, Field(min_length=1)] | TokenFromEnv | TokenFromFile | TokenEncrypted


#: Every hook setting that holds a token: references are checked against the grants, inline values encrypted at
#: rest, hidden in state pages and dead letters, and redacted from logs once resolved.
TOKEN_FIELDS = ("app_token", "user_token", "chatwoot_token")


def _blank_to_none(value: Any) -> Any:
    return None if value in ("", None) else value


_BOOL_OR_TEXT = {"anyOf": [{"type": "boolean"}, {"enum": ["true", "false", "1", "0", ""]}]}


def _text_to_bool(value: Any) -> Any:
    """Chatwoot stores hook settings as strings: ``"true"``/``"1"`` mean True, ``""``/``"false"``/``"0"`` False."""
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "false", "0", ""):
        return value.strip().lower() in ("true", "1")
    return value


def _digits_to_int(value: Any) -> Any:
    """Chatwoot stores hook settings as strings: ``"1"`` means 1."""
    return int(value) if isinstance(value, str) and value.strip().isdigit() else value


class HookSettings(_Model):
    """GLPI settings of one hook. Values may arrive as strings, as Chatwoot stores them.

    Structural checks only; the https rule depends on the worker's ``GLPI_SYNC_ALLOW_HTTP`` and is applied by
    :func:`app.sync.hook_config.validate_hook_settings`.
    """

    api_url: str = Field(min_length=1)
    app_token: TokenRef | None = None
    user_token: TokenRef
    entity_id: Annotated[int, Field(ge=0), WithJsonSchema(_INT_OR_DIGITS)] = 0
    sync_type: Literal["user", "contact"] = "user"
    ticket_type: Annotated[
        Literal[1, 2], BeforeValidator(_digits_to_int), WithJsonSchema({"enum": [1, 2, "1", "2"]})
    ] = 1
    category_id: Annotated[
        int | None,
        BeforeValidator(_blank_to_none),
        WithJsonSchema({"anyOf": [{"type": "integer"}, {"type": "string", "pattern": "^[0-9]*$"}, {"type": "null"}]}),
    ] = None
    timezone: str = "UTC"
    #: GLPI emails requesters about their ticket's changes. Off by default: for a chat the customer would get a
    #: copy of their own conversation (markers included) by email.
    notify_requester: Annotated[bool, BeforeValidator(_text_to_bool), WithJsonSchema(_BOOL_OR_TEXT)] = False
    #: Region of national phone numbers (ISO 3166 alpha-2, e.g. ``PT``): ``912 345 678`` is then +351912345678.
    phone_region: Annotated[
        Annotated[str, StringConstraints(pattern="^[A-Za-z]{2}$")] | None, BeforeValidator(_blank_to_none)
    ] = None
    #: Find an existing GLPI User or Contact by phone when no email matches. Two people sharing a number (a
    #: switchboard, a family phone) then become one GLPI user: turn it off where that happens.
    match_by_phone: Annotated[bool, BeforeValidator(_text_to_bool), WithJsonSchema(_BOOL_OR_TEXT)] = True
    #: Two-way sync (README "Two-way sync"): what technicians write in GLPI on our tickets goes back to the
    #: conversation through Chatwoot's API. Off by default.
    two_way: Annotated[bool, BeforeValidator(_text_to_bool), WithJsonSchema(_BOOL_OR_TEXT)] = False
    #: Chatwoot's base URL and an agent's (or agent bot's) api_access_token, a granted reference like GLPI's tokens.
    chatwoot_url: Annotated[str | None, BeforeValidator(_blank_to_none)] = None
    chatwoot_token: TokenRef | None = None
    #: A private GLPI followup is ``skip``ped, or posted as a private ``note`` in the conversation.
    two_way_private_followups: Literal["skip", "note"] = "skip"
    #: A GLPI solution is posted to the customer and, with this on, resolves the conversation.
    two_way_resolve_on_solution: Annotated[bool, BeforeValidator(_text_to_bool), WithJsonSchema(_BOOL_OR_TEXT)] = True

    #: With a Chatwoot connection, the ticket's number, status and technician are written on the conversation
    #: (README "What agents see in Chatwoot"); false turns that off (two-way then only posts messages).
    write_back: Annotated[bool, BeforeValidator(_text_to_bool), WithJsonSchema(_BOOL_OR_TEXT)] = True

    @property
    def writes_back(self) -> bool:
        """Whether the hook has a Chatwoot connection (write-back on, two-way or not).

        The ticket's number, status and technician are then written on the conversation, and the requester on the
        contact (README "What agents see in Chatwoot").
        """
        return bool(self.write_back and self.chatwoot_url and self.chatwoot_token)

    def __repr__(self) -> str:
        return f"HookSettings(api_url={self.api_url!r}, entity_id={self.entity_id}, sync_type={self.sync_type!r})"

    __str__ = __repr__


class HookConfiguredPayload(_Model):
    status: Literal["enabled", "disabled"] = "enabled"
    account_features: list[str] = Field(default_factory=list)
    settings: HookSettings


class _Envelope(_Model):
    hook_id: int = Field(ge=0)
    #: Chatwoot's conversation webhooks carry no account (chatwoot-events.md §6.2): an envelope without one takes
    #: its hook's account when the worker admits it.
    account_id: int | None = Field(None, ge=0)
    event_id: str | None = None
    occurred_at: UtcTime = None

    @property
    def account(self) -> int:
        """The account id; only read after admission, which fills a missing one from the hook's configuration."""
        if self.account_id is None:
            raise ValueError(f"{type(self).__name__} of hook {self.hook_id} has no account id yet")
        return self.account_id


class ContactEvent(_Envelope):
    event: Literal["contact_created", "contact_updated"]
    payload: ContactPayload


class ConversationEvent(_Envelope):
    event: Literal["conversation_created", "conversation_updated", "conversation_status_changed"]
    payload: Conversation


class MessageEvent(_Envelope):
    event: Literal["message_created", "message_updated"]
    payload: Message


class HookConfigured(_Envelope):
    event: Literal["hook_configured"]
    account_id: int = Field(ge=0)
    payload: HookConfiguredPayload


class HookRemoved(_Envelope):
    event: Literal["hook_removed"]
    payload: dict[str, Any] = Field(default_factory=dict)


class ControlCommandPayload(_Model):
    reason: str = ""
    requested_by: str = ""
    contact_id: int | None = None
    conversation_id: int | None = None
    #: For ``set_*_mapping``: the GLPI id to point at; null clears the mapping.
    glpi_id: int | None = None
    glpi_itemtype: Literal["User", "Contact"] | None = None


class ControlCommand(_Model):
    """An operator or worker command for one hook, from the control topic (ordered with the hook's events)."""

    event: ControlCommandName
    hook_id: int = Field(ge=0)
    account_id: int = Field(0, ge=0)
    event_id: str | None = None
    occurred_at: UtcTime = None
    payload: ControlCommandPayload = Field(default_factory=ControlCommandPayload)


GlpiChangeName = Literal["glpi_followup_added", "glpi_solution_added", "glpi_status_changed", "glpi_ticket_changed"]
GLPI_CHANGES: tuple[str, ...] = get_args(GlpiChangeName)


class GlpiChangePayload(_Model):
    """One change a technician made in GLPI on a ticket we own (found by the worker's poll)."""

    itemtype: Literal["ITILFollowup", "ITILSolution", "Ticket"]
    item_id: int
    ticket_id: int
    conversation_id: int
    content: str = ""
    is_private: bool = False
    author: str | None = None
    status: int | None = None
    #: ``glpi_ticket_changed`` (write-back): the technicians assigned to the ticket, comma-separated; None: nobody.
    technician: str | None = None
    date: str | None = None
    #: Files the technician attached (GLPI Documents): ``{"document_id", "name", "mime", "sha1", "url"}``, the
    #: ``url`` a link into GLPI for when the file cannot go as an attachment.
    attachments: list[dict[str, str | int]] = Field(default_factory=list, max_length=50)


class GlpiChange(_Model):
    """A GLPI change for Chatwoot, on the control topic only (a producer could otherwise message customers)."""

    event: GlpiChangeName
    hook_id: int = Field(ge=0)
    account_id: int = Field(0, ge=0)
    event_id: str | None = None
    occurred_at: UtcTime = None
    payload: GlpiChangePayload


class UnknownEvent(_Envelope):
    """A well-formed envelope whose event we do not sync (e.g. ``conversation_typing_on``)."""

    event: str
    payload: dict[str, Any] = Field(default_factory=dict)


Event = Annotated[
    ContactEvent | ConversationEvent | MessageEvent | HookConfigured | HookRemoved | ControlCommand | GlpiChange,
    Field(discriminator="event"),
]
_EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)
KnownEvent = (
    ContactEvent | ConversationEvent | MessageEvent | HookConfigured | HookRemoved | ControlCommand | GlpiChange
)


def _describe(exc: ValidationError) -> str:
    """A short validation summary naming fields, never echoing input values (they may hold tokens)."""
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(f"{loc}: {err['msg']}")
    more = f" (+{exc.error_count() - 5} more)" if exc.error_count() > 5 else ""
    return "; ".join(parts) + more


def parse_envelope(raw: bytes | None) -> KnownEvent | UnknownEvent:
    """Parse one Kafka record value.

    Raises:
        InvalidEnvelopeError: not UTF-8 JSON, too big, not an object, or missing/invalid required fields.
    """
    if raw is None:
        raise InvalidEnvelopeError("empty record value")
    if len(raw) > MAX_ENVELOPE_BYTES:
        raise InvalidEnvelopeError(f"envelope of {len(raw)} bytes exceeds {MAX_ENVELOPE_BYTES}")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEnvelopeError(f"not UTF-8 JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise InvalidEnvelopeError(f"envelope must be a JSON object, got {type(data).__name__}")
    name = data.get("event")
    if not isinstance(name, str) or not name:
        raise InvalidEnvelopeError("envelope has no 'event' name")
    try:
        if name in CHATWOOT_EVENTS or name in CONTROL_EVENTS or name in CONTROL_COMMANDS or name in GLPI_CHANGES:
            return _EVENT_ADAPTER.validate_python(data)
        return UnknownEvent.model_validate(data)
    except ValidationError as exc:
        raise InvalidEnvelopeError(f"invalid {name} envelope: {_describe(exc)}") from None
    except Exception as exc:  # a validator's error pydantic does not wrap: still a bad envelope, never a crash
        raise InvalidEnvelopeError(f"invalid {name} envelope: {exc}"[:300]) from None


def envelope_json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schemas of every envelope kind, keyed by file stem; ``schemas/`` is generated from this."""
    models: dict[str, type[BaseModel]] = {
        "contact_event": ContactEvent,
        "conversation_event": ConversationEvent,
        "message_event": MessageEvent,
        "hook_configured": HookConfigured,
        "hook_removed": HookRemoved,
        "control_command": ControlCommand,
    }
    schemas = {stem: model.model_json_schema(mode="validation") for stem, model in models.items()}
    schemas["envelope"] = _EVENT_ADAPTER.json_schema(mode="validation")
    return schemas


def now_utc() -> datetime:
    """The current time, aware UTC (used by the shell, never by the core)."""
    return datetime.now(tz=UTC)
