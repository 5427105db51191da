"""A GLPI REST API emulator (aiohttp) that answers as a real GLPI 10.0.12 or 11.0.8 (``glpi11``) answers.

It is held to recorded answers of real GLPIs: ``tests/integration/test_glpi_conformance.py`` replays every group of
``tests/glpi_transcripts/`` against it in both modes; the differences kept on purpose are listed there, in one place.

Run it on its own::

    python -m tests.glpi_emulator --port 8080 --app-token APP --user-token USER [--glpi11]

Served under ``/apirest.php/``, ``/api/`` and ``/api.php/v1/``. Users: ``glpi`` (id 2, token ``emulator-user-token``,
profile Super-Admin unless configured otherwise) and ``tech`` (id 4, token ``emulator-tech-token``, GLPI's default
Technician profile). Test-only endpoints live under ``/_emulator/``:

- ``GET  /_emulator/state``     read-only dump of every stored item (introspection for assertions)
- ``GET  /_emulator/requests``  the request log (method, path, query, body, session)
- ``POST /_emulator/faults``    ``{"rules": [{"path": regex, "method": "POST", "kind": "status|delay|timeout|drop|
  expire_session|retry_after", "status": 503, "seconds": 2, "count": 3}]}`` (count -1 = forever)
- ``POST /_emulator/config``    ``{"enable_api": false, "glpi11": true, "session_ttl": 10, "profile": "restricted",
  "visible_entities": [0, 1], ...}``
- ``POST /_emulator/entity``    ``{"id": 3, "name": "Branch"}`` adds an entity; ``POST /_emulator/move_ticket``
  ``{"ticket": 100, "entity": 3}`` moves a ticket (what a technician does in GLPI)
- ``POST /_emulator/expire_sessions``  kill every session now
- ``POST /_emulator/reset``     forget all data (keeps tokens)

Behaviour reproduced: App-Token and user_token checks with exact bodies and statuses; idle-expiring sessions (an
unknown token: 401 ``ERROR_SESSION_TOKEN_INVALID`` on 10, and on 11 400 ``ERROR_SESSION_TOKEN_MISSING`` unless this
GLPI issued it); CRUD with ``{"input": …}`` (an array input too); every column of a real row, HATEOAS ``links``,
``expand_dropdowns`` (foreign keys as names, ``items_id`` as the parent's name); ``ERROR_GLPI_UPDATE`` null for a
missing id; sub-item lists with 206/Content-Range; search with ``criteria[i][…]``, ``contains`` with ``^``/``$``,
``equals`` on User option 5 finding nothing, the empty-result shape without ``data``; unique logins; GLPI 10's HTML
encoding of ``&<>`` on storage (decoded on item reads only with ``X-GLPI-Sanitized-Content: false``, never in search
output), 11's raw text; varchars cut at 255 (10 after encoding); the add messages of each version; requesters
(including email-only) and their refusals; followups on solved and closed tickets; solutions; trash and purge;
entities and profiles (``super-admin``; ``restricted``: a Technician profile whose lifecycle may not reopen a Closed
ticket, so followups there are refused; ``self-service``: may not work for an integration); tickets in entities
the profile cannot see (403 to reads, the permission message to writes); ``_link`` on ticket creation; documents
(multipart upload with ``uploadManifest``, ``Document_Item``, the download with ``Accept: application/octet-stream``).

Fault kinds beside the HTTP ones: ``late_commit`` (hold the request ``seconds``, apply it, then answer; with
``"answer": "504"`` a proxy answers 504 at once while PHP commits after ``seconds``), ``redirect`` (302 to
``location``), ``html`` (``status`` with an HTML page: a WAF, an SSO, a missing path).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import copy
import email
import email.policy
import hashlib
import html
import mimetypes
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import orjson
from aiohttp import web

from tests.glpi_schema import CHILDREN_10, CHILDREN_11, COLUMNS_10, COLUMNS_11, PROFILES

JSON_CT = "application/json; charset=UTF-8"
NO_CACHE = {
    "Cache-Control": "no-store, no-cache, must-revalidate",
    "Expires": "Mon, 26 Jul 1997 05:00:00 GMT",
    "Pragma": "no-cache",
    "Access-Control-Expose-Headers": "content-type, content-range, accept-range",
}
ITEMTYPES = (
    "User",
    "UserEmail",
    "Contact",
    "Ticket",
    "Ticket_User",
    "ITILFollowup",
    "ITILSolution",
    "Ticket_Ticket",
    "Entity",
    "ITILCategory",
    "RequestType",
    "Profile",
    "Document",
    "Document_Item",
)
CANONICAL = {name.lower(): name for name in ITEMTYPES}
#: varchar(255) columns: GLPI 10 cuts the *encoded* text at 255 characters, 11 the raw text.
VARCHAR = {
    "User": ("name", "firstname", "realname", "phone", "phone2", "mobile"),
    "UserEmail": ("email",),
    "Contact": ("name", "firstname", "email", "phone", "phone2", "mobile"),
    "Ticket": ("name",),
    "Ticket_User": ("alternative_email",),
    "ITILCategory": ("name", "completename"),
    "Document": ("name", "filename"),
}
#: Columns that hold an id of another itemtype (HATEOAS ``links`` and ``expand_dropdowns``).
FOREIGN_KEYS = {
    "entities_id": "Entity",
    "users_id": "User",
    "users_id_recipient": "User",
    "users_id_lastupdater": "User",
    "users_id_editor": "User",
    "users_id_approval": "User",
    "users_id_supervisor": "User",
    "requesttypes_id": "RequestType",
    "itilcategories_id": "ITILCategory",
    "tickets_id": "Ticket",
    "tickets_id_1": "Ticket",
    "tickets_id_2": "Ticket",
    "documents_id": "Document",
    "locations_id": "Location",
    "groups_id": "Group",
    "profiles_id": "Profile",
    "usertitles_id": "UserTitle",
    "usercategories_id": "UserCategory",
    "contacttypes_id": "ContactType",
    "documentcategories_id": "DocumentCategory",
    "solutiontypes_id": "SolutionType",
    "knowbaseitemcategories_id": "KnowbaseItemCategory",
    "tickettemplates_id": "TicketTemplate",
}
#: Search options by itemtype: option id → column (``_`` columns are computed).
SEARCH_OPTIONS: dict[str, dict[int, str]] = {
    "User": {
        1: "name",
        2: "id",
        3: "_location",
        5: "_emails",
        6: "phone",
        8: "is_active",
        9: "firstname",
        10: "phone2",
        11: "mobile",
        34: "realname",
    },
    "Contact": {1: "name", 2: "id", 3: "phone", 6: "email", 10: "mobile", 11: "firstname", 16: "comment"},
    "Ticket": {
        1: "name",
        2: "id",
        3: "priority",
        4: "_requesters",
        10: "urgency",
        12: "status",
        14: "type",
        21: "content",
        25: "_followups",
        34: "_alt_emails",
    },
    "Document": {1: "name", 2: "id", 16: "comment", 20: "sha1sum"},
}
#: Options searched only with ``equals`` (dropdown-like columns).
EQUALS_ONLY = {"Ticket": {12, 10, 3, 14}}
#: The columns a search shows when ``forcedisplay`` is not given (the itemtype's default view).
DEFAULT_DISPLAY = {"User": (1, 34, 5, 6, 3, 8), "Contact": (1, 11, 3, 6), "Ticket": (1, 2, 12, 4), "Document": (1, 16)}
#: Extensions GLPI's installer marks uploadable (``glpi_documenttypes``, a selection); others are refused.
DOCUMENT_TYPES = frozenset(
    {
        *("7z", "bmp", "bz2", "c", "csv", "doc", "docx", "eml", "gif", "gz", "h", "html", "jpeg", "jpg", "json"),
        *("log", "mov", "mp3", "mp4", "odp", "ods", "odt", "ogg", "pdf", "png", "ppt", "pptx", "rar", "rtf"),
        *("svg", "tar", "tgz", "tif", "tiff", "txt", "wav", "webp", "xls", "xlsx", "xml", "zip"),
    }
)
#: Options whose values are numbers in search output (the others are strings).
NUMERIC_OPTIONS = {2, 8, 12, 3, 10, 14}
DOC_SUFFIX = "; view documentation in your browser at {base}/#{code}"
#: How GLPI's installer leaves its own users (the columns that differ from a user made through the API).
INSTALLED_USERS: dict[str, dict[str, Any]] = {
    "glpi": {"list_limit": 20},
    "post-only": {"language": "en_GB", "list_limit": 20},
    "tech": {"list_limit": 20},
    "normal": {"language": "en_GB", "list_limit": 20},
    "glpi-system": {"realname": "Support"},
}
#: Users the product (or a test) creates get ids from here on; GLPI's own users (glpi, tech, ...) are below.
FIRST_USER_ID = 10
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
LOGIN_RE = re.compile(r"^[\w'@.\- ]+$")
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
PERMISSION = "You don't have permission to perform this action."
ALREADY_SOLVED = "The item is already solved, did anyone pushed a solution before you?"
#: What every API answer may be replaced by before it reaches the client (the documentation page of ``GET /``).
API_DOCUMENTATION = (
    "# GLPI REST API:  Documentation\n\n## Summary\n\n* [Glossary](#glossary)\n* [Init session](#init-session)\n"
)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: Any = "", suffix: bool = False) -> None:
        super().__init__(code)
        self.status, self.code, self.message, self.suffix = status, code, message, suffix


@dataclass
class Rule:
    path: str
    method: str | None
    kind: str
    status: int = 503
    seconds: float = 0.0
    count: int = 1
    retry_after: float | None = None
    answer: str = ""
    location: str = ""
    title: str = "Access denied"

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and re.search(self.path, path) is not None


def _php_escape(text: str) -> str:
    """PHP's ``htmlspecialchars`` (as GLPI 11 escapes its messages): ``&#039;`` for the apostrophe."""
    return html.escape(text).replace("&#x27;", "&#039;")


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())


@dataclass
class Emulator:
    app_tokens: set[str] = field(default_factory=lambda: {"emulator-app-token"})
    user_tokens: dict[str, int] = field(default_factory=lambda: {"emulator-user-token": 2, "emulator-tech-token": 4})
    url_base_api: str = "http://localhost/glpi/api"
    enable_api: bool = True
    glpi11: bool = False
    session_ttl: float = 1440.0
    #: The session's ``glpilist_limit``: rows of a list or search without ``range``.
    list_limit: int = 20
    restricted_profile: bool = False
    #: The profile of user 2 (``glpi``); ``tech`` (user 4) always has GLPI's default Technician profile.
    profile: str = "super-admin"
    visible_entities: set[int] = field(default_factory=lambda: {0})
    #: The database name GLPI's database errors quote.
    db_name: str = "glpi"
    #: ``document_max_size`` in MiB (GLPI's default is 2).
    document_max_size_mb: int = 2
    #: PHP's ``post_max_size`` in MiB: a larger upload reaches GLPI without its file parts.
    post_max_size_mb: int = 8
    background: set[asyncio.Task[Any]] = field(default_factory=set)
    items: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)
    #: Uploaded files by Document id.
    files: dict[int, bytes] = field(default_factory=dict)
    next_id: dict[str, int] = field(default_factory=dict)
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Every session token this GLPI handed out (GLPI 11 tells a token it cannot decode from a dead one).
    issued: set[str] = field(default_factory=set)
    faults: list[Rule] = field(default_factory=list)
    log: list[dict[str, Any]] = field(default_factory=list)
    #: Like a real GLPI behind php-fpm: each API request holds one of ``capacity`` workers (0: unlimited) for
    #: ``latency`` seconds plus its own work; requests beyond the pool queue (``make bench``).
    latency: float = 0.0
    capacity: int = 0
    #: Seconds per kind of request (``search``, ``read``, ``create``, ``update``, ``delete``) instead of ``latency``:
    #: a real GLPI answers a search faster than it creates a followup (``make bench``'s per-kind runs).
    kind_latency: dict[str, float] = field(default_factory=dict)
    _pool: asyncio.Semaphore | None = None
    #: API requests received and not answered yet (queued for the pool included), and the most seen at once.
    inflight: int = 0
    peak_inflight: int = 0

    @property
    def pool(self) -> asyncio.Semaphore | None:
        if self.capacity and self._pool is None:
            self._pool = asyncio.Semaphore(self.capacity)
        return self._pool

    @property
    def version(self) -> str:
        return "11.0.8" if self.glpi11 else "10.0.12"

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.items = {name: {} for name in ITEMTYPES}
        self.files = {}
        self.next_id = dict.fromkeys(ITEMTYPES, 1)
        self.items["Entity"][0] = {"id": 0, "name": "Root entity", "completename": "Root entity"}
        for rid, name in ((1, "Helpdesk"), (2, "E-Mail"), (3, "Phone"), (4, "Direct"), (5, "Written"), (6, "Other")):
            self.items["RequestType"][rid] = {"id": rid, "name": name, "completename": name}
        for uid, login in ((2, "glpi"), (3, "post-only"), (4, "tech"), (5, "normal"), (6, "glpi-system")):
            row = copy.deepcopy(self.columns("User") or {})
            row.update(id=uid, name=login, **INSTALLED_USERS.get(login, {}))
            if login in ("glpi", "tech"):  # the users with API tokens, as in the recordings
                row.update(last_login=_now(), date_mod=_now(), api_token_date=_now())
                row.update(dict.fromkeys(("highcontrast_css", "default_central_tab")))
                if not self.glpi11:
                    row.update(timeline_action_btn_layout=None, timeline_date_format=None)
            self.items["User"][uid] = row
        self.next_id["User"] = FIRST_USER_ID
        self.next_id["Ticket"] = 100
        self.log.clear()

    # ------------------------------------------------------------------------------------------ rows

    def columns(self, itemtype: str) -> dict[str, Any] | None:
        return (COLUMNS_11 if self.glpi11 else COLUMNS_10).get(itemtype)

    def new_row(self, itemtype: str, fields: dict[str, Any]) -> dict[str, Any]:
        """A new row as GLPI stores it: every column at its default, then ``fields`` as stored (encoded on 10)."""
        template = self.columns(itemtype)
        row: dict[str, Any] = copy.deepcopy(template) if template is not None else {"id": 0}
        stored = self.store_fields(itemtype, fields)
        row.update({k: v for k, v in stored.items() if template is None or k in template})
        now = _now()
        for key in ("date_mod", "date_creation"):
            if key in row and row[key] is None:
                row[key] = now
        return row

    def insert(self, itemtype: str, row: dict[str, Any]) -> int:
        new = self.next_id[itemtype]
        self.next_id[itemtype] += 1
        row["id"] = new
        self.items[itemtype][new] = row
        return new

    # ------------------------------------------------------------------------------------------ profiles

    def profile_of(self, session: dict[str, Any]) -> str:
        if session.get("user_id") == 4:
            return "technician"
        return "restricted" if self.restricted_profile else self.profile

    @property
    def active_profile(self) -> str:
        return "restricted" if self.restricted_profile else self.profile

    def profile_body(self, profile: str) -> dict[str, Any]:
        """``getActiveProfile``: GLPI's own profiles as recorded, and two narrowed ones for fault tests."""
        version = "11" if self.glpi11 else "10"
        if profile in ("super-admin", "technician"):
            return copy.deepcopy(PROFILES[version][profile])
        body = copy.deepcopy(PROFILES[version]["technician"])
        if profile == "restricted":
            # An integration profile cloned from Technician: creates users, tickets and followups, but its
            # lifecycle may not reopen a Closed ticket, so GLPI refuses followups there.
            body.update(ticket=1031, followup=4101, user=31, contact_enterprise=127)
        else:  # self-service
            body.update(id=1, name="Self-Service", interface="helpdesk", user=0, ticket=5, followup=5)
            body["contact_enterprise"] = 0
        return body

    def visible(self, item: dict[str, Any]) -> bool:
        return int(item.get("entities_id", 0) or 0) in self.visible_entities

    # ------------------------------------------------------------------------------------------ text rules

    def encode(self, value: Any) -> Any:
        """GLPI 10's storage encoding of ``&<>`` (already encoded text is kept as it is); 11 stores raw text."""
        if self.glpi11 or not isinstance(value, str):
            return value
        if re.search(r"&#(38|60|62);", value) and not re.search(r"[<>]", value):
            return value
        return value.replace("&", "&#38;").replace("<", "&#60;").replace(">", "&#62;")

    def store_fields(self, itemtype: str, fields: dict[str, Any]) -> dict[str, Any]:
        stored = {}
        for key, value in fields.items():
            if key.startswith("_") or key == "id":
                continue
            value = self.encode(value)
            if key in VARCHAR.get(itemtype, ()) and isinstance(value, str):
                value = value[:255]
            stored[key] = value
        return stored

    @staticmethod
    def decode(value: Any) -> Any:
        return html.unescape(value) if isinstance(value, str) else value

    def shown_text(self, value: Any) -> Any:
        """A stored text as the client reads it with ``X-GLPI-Sanitized-Content: false`` (decoded on 10)."""
        return value if self.glpi11 else self.decode(value)

    def friendly_name(self, itemtype: str, row: dict[str, Any]) -> str:
        """The name in GLPI's "Item successfully added" message (decoded; 11 escapes it for HTML)."""
        if itemtype in ("User", "Contact"):
            first = str(self.shown_text(row.get("firstname") or ""))
            last = str(self.shown_text(row.get("realname") if itemtype == "User" else row.get("name")) or "")
            name = " ".join(part for part in (last, first) if part) or str(self.shown_text(row.get("name") or ""))
        elif itemtype == "ITILSolution":
            name = str(row["id"])
        elif itemtype in ("Ticket", "ITILCategory", "Document"):
            name = str(self.shown_text(row.get("name") or "")) or f"{itemtype} - ID {row['id']}"
        else:
            label = {"Document_Item": "Document item"}.get(itemtype, itemtype)
            name = f"{label} - ID {row['id']}"
        return _php_escape(name) if self.glpi11 else name

    def add_message(self, itemtype: str, row: dict[str, Any]) -> str:
        if itemtype in ("ITILFollowup", "UserEmail", "Ticket_User", "Ticket_Ticket"):
            return ""
        message = f"Item successfully added: {self.friendly_name(itemtype, row)}"
        if itemtype == "Ticket" and not self.glpi11:
            message += f" ({row['id']})"  # GLPI 10 names a new ticket with its id
        return message

    def database_error(self, table: str, message: str, code: int, columns: dict[str, Any]) -> ApiError:
        """How each version reports a database refusal (10: the database's message; 11: with the SQL)."""
        if not self.glpi11:
            return ApiError(400, "ERROR_GLPI_ADD", message)
        names = ", ".join(f"`{k}`" for k in columns)
        values = ", ".join(f"'{v}'" for v in columns.values())
        sql = f"INSERT INTO `{table}` ({names}) VALUES ({values})"
        return ApiError(400, "ERROR_GLPI_ADD", f'MySQL query error: {message} ({code}) in SQL query "{sql}".')

    # ------------------------------------------------------------------------------------------ presentation

    def present(
        self, itemtype: str, row: dict[str, Any], *, decode: bool, expand: bool = False, links: bool = True
    ) -> dict[str, Any]:
        """A stored row as the API shows it: expanded foreign keys, decoded text, HATEOAS links."""
        shown = dict(row)
        if expand:
            for key, value in row.items():
                target = self._target(itemtype, row, key)
                if target is not None and isinstance(value, int) and (value != 0 or key == "entities_id"):
                    name = self._name_of(target, value)
                    if name is not None:
                        shown[key] = name
        if decode:
            shown = {k: self.decode(v) for k, v in shown.items()}
        if links:
            shown["links"] = self._links(itemtype, row)
        return shown

    def _target(self, itemtype: str, row: dict[str, Any], key: str) -> str | None:
        if key == "items_id":
            return str(row.get("itemtype") or "") or None
        return FOREIGN_KEYS.get(key)

    def _name_of(self, itemtype: str, item_id: int) -> str | None:
        item = self.items.get(itemtype, {}).get(item_id)
        if item is None:
            return None
        return str(item.get("completename") or item.get("name") or "")

    def _links(self, itemtype: str, row: dict[str, Any]) -> list[dict[str, str]]:
        out = []
        for key, value in row.items():
            target = self._target(itemtype, row, key)
            if target is None or not isinstance(value, int) or (value == 0 and key != "entities_id"):
                continue
            if key == "entities_id" and itemtype in ("UserEmail", "Ticket_User", "Ticket_Ticket"):
                continue
            out.append({"rel": target, "href": f"{self.url_base_api}/{target}/{value}"})
        children = (CHILDREN_11 if self.glpi11 else CHILDREN_10).get(itemtype, ())
        out += [{"rel": c, "href": f"{self.url_base_api}/{itemtype}/{row['id']}/{c}/"} for c in children]
        return out

    # ------------------------------------------------------------------------------------------ auth

    def check_app_token(self, params: dict[str, str]) -> None:
        if not self.enable_api:
            raise ApiError(400, "ERROR", "API disabled")
        token = params.get("app_token", "")
        if "" in self.app_tokens and not token:
            return
        if token in self.app_tokens:
            return
        if token:
            raise ApiError(400, "ERROR_WRONG_APP_TOKEN_PARAMETER", "parameter app_token seems wrong", suffix=True)
        raise ApiError(400, "ERROR_APP_TOKEN_PARAMETERS_MISSING", "missing parameter app_token", suffix=True)

    def session_for(self, params: dict[str, str]) -> dict[str, Any]:
        token = params.get("session_token")
        missing = ApiError(400, "ERROR_SESSION_TOKEN_MISSING", "parameter session_token is missing or empty", True)
        if not token:
            raise missing
        session = self.sessions.get(token)
        now = time.monotonic()
        if session is None or now - session["last_seen"] > self.session_ttl:
            self.sessions.pop(token, None)
            if self.glpi11 and token not in self.issued:
                raise missing  # GLPI 11 cannot decode a token it never issued: "missing"
            raise ApiError(401, "ERROR_SESSION_TOKEN_INVALID", "session_token seems invalid")
        session["last_seen"] = now
        return session

    def init_session(self, params: dict[str, str]) -> dict[str, str]:
        user_token = params.get("user_token")
        if params.get("login") and not user_token:
            raise ApiError(401, "ERROR_GLPI_LOGIN", "Incorrect username or password")
        if not user_token:
            raise ApiError(
                400,
                "ERROR_LOGIN_PARAMETERS_MISSING",
                "parameter(s) login, password or user_token are missing",
                True,
            )
        user_id = self.user_tokens.get(user_token)
        if user_id is None:
            raise ApiError(401, "ERROR_GLPI_LOGIN_USER_TOKEN", "parameter user_token seems invalid")
        if self.glpi11:
            token = base64.b64encode(secrets.token_bytes(90)).decode()
        else:
            token = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(26))
        self.sessions[token] = {"user_id": user_id, "last_seen": time.monotonic()}
        self.issued.add(token)
        return {"session_token": token}

    # ------------------------------------------------------------------------------------------ creates

    def add(self, itemtype: str, fields: Any, session: dict[str, Any]) -> int:
        if not isinstance(fields, dict):
            raise ApiError(400, "ERROR_BAD_ARRAY", "input parameter must be an array of objects", True)
        handler = getattr(self, f"_add_{itemtype.lower()}", None)
        if handler is not None:
            return int(handler(fields, session))
        row = self.new_row(itemtype, {"entities_id": 0, **fields})
        return self.insert(itemtype, row)

    def _writer(self, session: dict[str, Any]) -> int:
        return int(session.get("user_id", 2))

    def _add_user(self, fields: dict[str, Any], session: dict[str, Any]) -> int:
        login = str(fields.get("name", ""))
        if not login or not (LOGIN_RE.match(login) or EMAIL_RE.match(login)) or login.startswith("+"):
            raise ApiError(400, "ERROR_GLPI_ADD", "The login is not valid. Unable to add the user.")
        if any(u["name"] == self.encode(login) for u in self.items["User"].values()):
            raise ApiError(400, "ERROR_GLPI_ADD", "Unable to add. The user already exists.")
        new = self.insert("User", self.new_row("User", {"entities_id": 0, **fields}))
        emails = fields.get("_useremails") or []
        values = list(emails.values()) if isinstance(emails, dict) else list(emails)
        for address in values:
            if address:
                with contextlib.suppress(ApiError):
                    self._add_useremail({"users_id": new, "email": address}, session)
        return new

    def _add_contact(self, fields: dict[str, Any], session: dict[str, Any]) -> int:
        if self.profile_of(session) == "technician":
            raise ApiError(400, "ERROR_GLPI_ADD", PERMISSION)  # Technician: no contact_enterprise create right
        return self.insert("Contact", self.new_row("Contact", {"entities_id": 0, **fields}))

    def _add_useremail(self, fields: dict[str, Any], session: dict[str, Any]) -> int:
        users_id = fields.get("users_id")
        email = str(fields.get("email", ""))
        if not isinstance(users_id, int) or users_id not in self.items["User"] or not EMAIL_RE.match(email):
            raise ApiError(400, "ERROR_GLPI_ADD", "")
        existing = [e for e in self.items["UserEmail"].values() if e["users_id"] == users_id]
        if any(e["email"].lower() == self.encode(email).lower() for e in existing):
            raise self.database_error(
                "glpi_useremails",
                f"Duplicate entry '{users_id}-{email}' for key 'unicity'",
                1062,
                {"users_id": users_id, "email": email},
            )
        row = self.new_row("UserEmail", {"users_id": users_id, "email": email, "is_default": 0 if existing else 1})
        return self.insert("UserEmail", row)

    def _add_ticket(self, fields: dict[str, Any], session: dict[str, Any]) -> int:
        now = _now()
        date = fields.get("date", now)
        if not DATE_RE.match(str(date)):
            raise self._bad_date("glpi_tickets", str(date))
        writer = self._writer(session)
        row = self.new_row(
            "Ticket",
            {
                "entities_id": 0,
                "date": date,
                "users_id_recipient": writer,
                "users_id_lastupdater": writer,
                "requesttypes_id": 1,
                **{k: v for k, v in fields.items() if k not in ("date",)},
            },
        )
        for key in ("urgency", "impact", "priority", "type", "status"):
            if not isinstance(row.get(key), int):
                row[key] = {"type": 1, "status": 1}.get(key, 3)
        if row["status"] in (5, 6):
            row["solvedate"] = now
        if row["status"] == 6:
            row["closedate"] = now
        if not self.visible(row):
            raise ApiError(400, "ERROR_GLPI_ADD", PERMISSION)
        new = self.insert("Ticket", row)
        link = fields.get("_link")
        linked = self.items["Ticket"].get(link.get("tickets_id_2")) if isinstance(link, dict) else None
        # Ticket::post_addItem links only a ticket the profile may see (else "Unknown ticket", still 201).
        if isinstance(link, dict) and linked is not None and self.visible(linked):
            pair = {"tickets_id_1": new, "tickets_id_2": link["tickets_id_2"], "link": int(link.get("link", 1))}
            self.insert("Ticket_Ticket", self.new_row("Ticket_Ticket", pair))
        requesters = fields.get("_users_id_requester")
        notif = fields.get("_users_id_requester_notif") or {}
        if requesters is not None:
            ids = requesters if isinstance(requesters, list) else [requesters]
            alt = notif.get("alternative_email", "") if isinstance(notif, dict) else ""
            notify = notif.get("use_notification", 1) if isinstance(notif, dict) else 1
            for index, uid in enumerate(ids):
                alt_email = alt[index] if isinstance(alt, list) else (alt if index == 0 else "")
                use = notify[index] if isinstance(notify, list) else notify
                with contextlib.suppress(ApiError):  # unknown requester: ticket still created, no actor row
                    self._add_ticket_user(
                        {
                            "tickets_id": new,
                            "users_id": uid,
                            "type": 1,
                            "alternative_email": alt_email or "",
                            "use_notification": int(use),
                        },
                        session,
                    )
        return new

    def _bad_date(self, table: str, value: str) -> ApiError:
        message = f"Incorrect datetime value: '{value}' for column `{self.db_name}`.`{table}`.`date` at row 1"
        return self.database_error(table, message, 1292, {"date": value})

    def _add_ticket_user(self, fields: dict[str, Any], session: dict[str, Any]) -> int:
        tid, uid, kind = fields.get("tickets_id"), fields.get("users_id"), fields.get("type", 1)
        alt = str(fields.get("alternative_email") or "")
        ticket = self.items["Ticket"].get(tid) if isinstance(tid, int) else None
        if ticket is None or kind not in (1, 2, 3) or not isinstance(uid, int):
            raise ApiError(400, "ERROR_GLPI_ADD", PERMISSION)  # GLPI checks the rights on a ticket it cannot load
        if uid == 0:
            if not EMAIL_RE.match(alt):
                raise ApiError(400, "ERROR_GLPI_ADD", "Invalid email address")
        elif uid not in self.items["User"]:
            raise ApiError(400, "ERROR_GLPI_ADD", PERMISSION)
        for row in self.items["Ticket_User"].values():
            if row["tickets_id"] == tid and row["users_id"] == uid and row["type"] == kind:
                if uid != 0:
                    raise ApiError(400, "ERROR_GLPI_ADD", "")
                if row["alternative_email"] == self.encode(alt):
                    use = int(fields.get("use_notification", 1))
                    raise self.database_error(
                        "glpi_tickets_users",
                        f"Duplicate entry '{tid}-{kind}-{uid}-{alt}' for key 'unicity'",
                        1062,
                        {
                            "tickets_id": tid,
                            "users_id": uid,
                            "type": kind,
                            "use_notification": use,
                            "alternative_email": alt,
                        },
                    )
        row = self.new_row(
            "Ticket_User",
            {
                "tickets_id": tid,
                "users_id": uid,
                "type": kind,
                "use_notification": int(fields.get("use_notification", 1)),
                "alternative_email": alt,
            },
        )
        new = self.insert("Ticket_User", row)
        if kind == 2 and ticket["status"] == 1:
            ticket["status"] = 2
        # CommonITILActor::post_addItem: an actor added is a change of the ticket (updateDateMod).
        ticket.update(date_mod=_now(), users_id_lastupdater=self._writer(session))
        return new

    def _parent_ticket(self, fields: dict[str, Any], session: dict[str, Any]) -> dict[str, Any]:
        """The ticket a followup or solution goes to; GLPI answers its permission message when it cannot load it."""
        ticket = self.items["Ticket"].get(fields.get("items_id")) if fields.get("itemtype") == "Ticket" else None
        if ticket is None or not self.visible(ticket):
            raise ApiError(400, "ERROR_GLPI_ADD", PERMISSION)
        return ticket

    def _add_itilfollowup(self, fields: dict[str, Any], session: dict[str, Any]) -> int:
        ticket = self._parent_ticket(fields, session)
        content = fields.get("content")
        if not isinstance(content, str) or not content.strip():
            text = "You can't add a followup without description"
            raise ApiError(400, "ERROR_GLPI_ADD", _php_escape(text) if self.glpi11 else text)
        if ticket["status"] == 6 and self.profile_of(session) == "restricted":
            raise ApiError(400, "ERROR_GLPI_ADD", PERMISSION)
        now = _now()
        date = fields.get("date", now)
        if not DATE_RE.match(str(date)):
            raise self._bad_date("glpi_itilfollowups", str(date))
        row = self.new_row(
            "ITILFollowup",
            {
                "itemtype": "Ticket",
                "items_id": fields["items_id"],
                "date": date,
                "users_id": fields.get("users_id", self._writer(session)),
                "content": content,
                "is_private": int(fields.get("is_private", 0)),
            },
        )
        new = self.insert("ITILFollowup", row)
        ticket["date_mod"] = now
        ticket["users_id_lastupdater"] = self._writer(session)
        if fields.get("pending") == 1:
            ticket["status"] = 4
        return new

    def _add_itilsolution(self, fields: dict[str, Any], session: dict[str, Any]) -> int:
        ticket = self._parent_ticket(fields, session)
        if ticket["status"] == 6:
            raise ApiError(400, "ERROR_GLPI_ADD", PERMISSION)
        if ticket["status"] == 5:
            raise ApiError(400, "ERROR_GLPI_ADD", ALREADY_SOLVED)
        row = self.new_row(
            "ITILSolution",
            {
                "itemtype": "Ticket",
                "items_id": fields["items_id"],
                "content": str(fields.get("content", "")),
                "users_id": fields.get("users_id", self._writer(session)),
                "status": 2,
            },
        )
        new = self.insert("ITILSolution", row)
        now = _now()
        ticket.update(status=5, solvedate=now, date_mod=now, users_id_lastupdater=self._writer(session))
        return new

    def _add_document_item(self, fields: dict[str, Any], session: dict[str, Any]) -> int:
        document, itemtype = fields.get("documents_id"), str(fields.get("itemtype") or "")
        item = self.items.get(itemtype, {}).get(fields.get("items_id"))  # type: ignore[arg-type]
        if document not in self.items["Document"] or item is None:
            raise ApiError(400, "ERROR_GLPI_ADD", PERMISSION)
        row = self.new_row(
            "Document_Item",
            {"entities_id": 0, "users_id": self._writer(session), **fields, "timeline_position": 0},
        )
        return self.insert("Document_Item", row)

    def upload(
        self, manifest: dict[str, Any], filename: str, content: bytes, session: dict[str, Any]
    ) -> dict[str, Any]:
        """``POST /Document`` as multipart: ``uploadManifest`` names the document, ``filename[0]`` carries the file."""
        fields = manifest.get("input") if isinstance(manifest.get("input"), dict) else {}
        assert isinstance(fields, dict)
        if len(content) > self.post_max_size_mb * 1024 * 1024:
            raise ApiError(400, "ERROR_UPLOAD_FILE_TOO_BIG_POST_MAX_SIZE", "The file seems too big", True)
        mime = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        sha1 = hashlib.sha1(content).hexdigest()
        ext = (filename.rsplit(".", 1)[-1] if "." in filename else "BIN").upper()
        prefix = f"{secrets.token_hex(7)}.{secrets.randbelow(10**8):08d}"
        # PHP refuses a file over upload_max_filesize (GLPI's handler reports it), and Document::moveDocument a type
        # not in glpi_documenttypes: either way GLPI still adds the Document, without a file (Document.php).
        too_big = len(content) > self.document_max_size_mb * 1024 * 1024
        kept = not too_big and ext.lower() in DOCUMENT_TYPES
        stored = {"filename": filename, "filepath": f"{ext}/{sha1[:2]}/{sha1[2:]}.{ext}", "mime": mime, "sha1sum": sha1}
        row = self.new_row(
            "Document",
            {
                "entities_id": 0,
                "name": fields.get("name") or filename,
                **(stored if kept else {"filename": None, "filepath": None, "mime": None, "sha1sum": None}),
                "users_id": self._writer(session),
                "tag": f"{secrets.token_hex(4)}-{secrets.token_hex(4)}-{prefix}",
                **{k: v for k, v in fields.items() if k not in ("name", "_filename", "_prefix_filename")},
            },
        )
        new = self.insert("Document", row)
        if kept:
            self.files[new] = content
        base = self.url_base_api.split("/apirest.php")[0].split("/api.php")[0]
        unit = "B" if self.glpi11 else "o"
        uploaded: dict[str, Any] = {"name": f"{prefix}{filename}", "size": len(content), "type": mime}
        if kept:
            uploaded.update(
                url=f"{base}/files/{prefix}{filename}",
                deleteUrl=f"{base}/{'index.php' if self.glpi11 else 'apirest.php'}?filenam={prefix}{filename}",
                deleteType="DELETE",
            )
        elif too_big:  # measured on GLPI 10.0.12 and 11.0.8: PHP hands over an empty part, the handler says why
            uploaded.update(
                size=0, type="", error="The uploaded file exceeds the upload_max_filesize directive in php.ini"
            )
        else:
            uploaded["error"] = "Filetype not allowed"
        uploaded.update(
            prefix=prefix,
            display=filename,
            filesize=f"{uploaded['size']} {unit}",
            id=f"docfilename{secrets.randbelow(10**9)}",
        )
        return {"id": new, "message": self.add_message("Document", row), "upload_result": {"filename": [uploaded]}}

    # ------------------------------------------------------------------------------------------ updates

    def update(self, itemtype: str, item_id: int, fields: Any, session: dict[str, Any]) -> None:
        if not isinstance(fields, dict):
            raise ApiError(400, "ERROR_BAD_ARRAY", "input parameter must be an array of objects", True)
        item = self.items[itemtype].get(item_id)
        if item is None:
            raise ApiError(400, "ERROR_GLPI_UPDATE", None)
        if itemtype == "Ticket" and not self.visible(item):
            raise ApiError(400, "ERROR_GLPI_UPDATE", PERMISSION)
        if (
            itemtype == "User"
            and "name" in fields
            and any(
                u["name"] == self.encode(str(fields["name"])) and uid != item_id
                for uid, u in self.items["User"].items()
            )
        ):
            raise ApiError(400, "ERROR_GLPI_UPDATE", "Unable to update. The user already exists.")
        stored = self.store_fields(itemtype, {k: v for k, v in fields.items() if k != "id"})
        template = self.columns(itemtype)
        item.update({k: v for k, v in stored.items() if template is None or k in template})
        now = _now()
        if "date_mod" in item:
            item["date_mod"] = now
        if itemtype == "User" and fields.get("_useremails"):
            emails = fields["_useremails"]
            for address in emails.values() if isinstance(emails, dict) else emails:
                with contextlib.suppress(ApiError):
                    self._add_useremail({"users_id": item_id, "email": address}, session)
        if itemtype == "Ticket":
            item["users_id_lastupdater"] = self._writer(session)
            if "status" in fields:
                status = item["status"]
                item["solvedate"] = now if status == 5 else (item["solvedate"] if status == 6 else None)
                item["closedate"] = now if status == 6 else None

    def delete(self, itemtype: str, item_id: int, purge: bool, session: dict[str, Any]) -> str:
        item = self.items[itemtype].get(item_id)
        if item is None:
            raise ApiError(400, "ERROR_GLPI_DELETE", "Item not found")
        technician = self.profile_of(session) == "technician"
        if technician and itemtype in ("Ticket", "User", "Contact"):
            raise ApiError(400, "ERROR_GLPI_DELETE", PERMISSION)
        if technician and itemtype == "ITILFollowup" and not self.glpi11:
            raise ApiError(400, "ERROR_GLPI_DELETE", PERMISSION)  # 11's Technician may purge followups
        trashable = itemtype in ("Ticket", "User", "Contact", "Document")
        if trashable and not purge:
            item["is_deleted"] = 1
            return ""
        del self.items[itemtype][item_id]
        parent = self.items["Ticket"].get(item.get("tickets_id")) if itemtype == "Ticket_User" else None
        if parent is not None:  # CommonITILActor::post_deleteFromDB: so is an actor removed
            parent.update(date_mod=_now(), users_id_lastupdater=self._writer(session))
        if itemtype == "Ticket":
            for child in ("ITILFollowup", "ITILSolution"):
                for cid in [c for c, row in self.items[child].items() if row["items_id"] == item_id]:
                    del self.items[child][cid]
            for tid in [t for t, row in self.items["Ticket_User"].items() if row["tickets_id"] == item_id]:
                del self.items["Ticket_User"][tid]
        if itemtype == "Document":
            self.files.pop(item_id, None)
            return f"Successful deletion of the file {item['filepath']}" if item.get("filepath") else ""
        return ""

    # ------------------------------------------------------------------------------------------ search

    def search_value(self, itemtype: str, item: dict[str, Any], column: str) -> Any:
        if column == "_emails":
            values = [e["email"] for e in self.items["UserEmail"].values() if e["users_id"] == item["id"]]
            return values[0] if len(values) == 1 else (values or None)
        if column == "_requesters":
            values = [
                str(r["users_id"])
                for r in self.items["Ticket_User"].values()
                if r["tickets_id"] == item["id"] and r["type"] == 1 and r["users_id"]
            ]
            return values[0] if len(values) == 1 else (values or None)
        if column == "_alt_emails":
            values = [
                r["alternative_email"]
                for r in self.items["Ticket_User"].values()
                if r["tickets_id"] == item["id"] and r["alternative_email"]
            ]
            return values[0] if len(values) == 1 else (values or None)
        if column == "_followups":
            values = [
                f["content"]
                for f in self.items["ITILFollowup"].values()
                if f["itemtype"] == "Ticket" and f["items_id"] == item["id"]
            ]
            return values[0] if len(values) == 1 else (values or None)
        if column == "_location":
            return None
        return item.get(column)

    def search(
        self, itemtype: str, query: list[tuple[str, str]], session: dict[str, Any]
    ) -> tuple[int, Any, dict[str, str]]:
        options = SEARCH_OPTIONS.get(itemtype)
        if options is None:
            raise ApiError(
                400,
                "ERROR_RESOURCE_NOT_FOUND_NOR_COMMONDBTM",
                "resource not found or not an instance of CommonDBTM",
                True,
            )
        if itemtype == "Contact" and self.profile_of(session) == "technician":
            raise ApiError(403, "ERROR_RIGHT_MISSING", PERMISSION)
        criteria: dict[int, dict[str, str]] = {}
        forced: list[int] = []
        rng = None
        trashed = False
        for key, value in query:
            match = re.match(r"^criteria\[(\d+)\]\[(\w+)\]$", key)
            if match:
                criteria.setdefault(int(match.group(1)), {})[match.group(2)] = value
            elif re.match(r"^forcedisplay\[\d+\]$", key):
                forced.append(int(value))
            elif key == "range":
                rng = value
            elif key == "is_deleted":
                trashed = value in ("1", "true")
        rows = [item for item in self.items[itemtype].values() if bool(item.get("is_deleted")) == trashed]
        if itemtype == "Ticket":
            rows = [item for item in rows if self.visible(item)]  # searches see the active entities only
        result: list[dict[str, Any]] | None = None
        for index in sorted(criteria):
            crit = criteria[index]
            if "field" not in crit or "value" not in crit:
                raise ApiError(400, "ERROR", "Malformed search criteria", True)
            field_id = int(crit["field"])
            if field_id not in options:
                raise ApiError(400, "ERROR", "Bad field ID in search criteria", True)
            searchtype = crit.get("searchtype", "contains")
            if field_id in EQUALS_ONLY.get(itemtype, set()) and searchtype != "equals":
                raise ApiError(400, "ERROR", "Bad Request", True)
            matched = [item for item in rows if self._matches(itemtype, item, field_id, searchtype, crit["value"])]
            ids = {m["id"] for m in matched}
            link = crit.get("link", "AND").upper()
            if result is None:
                result = matched
            elif link == "OR":
                result = result + [m for m in matched if m["id"] not in {r["id"] for r in result}]
            else:
                result = [r for r in result if r["id"] in ids]
        found = result if result is not None else rows
        if self.glpi11:
            found = sorted(found, key=lambda item: item["id"])  # 11 lists by id unless asked otherwise
        else:
            found = sorted(found, key=lambda item: (str(item.get("name", "")), item["id"]))
        total = len(found)
        start, end = 0, self.list_limit - 1
        if rng:
            start, end = (int(part) for part in rng.split("-"))
        if start > total and total:
            raise ApiError(400, "ERROR_RANGE_EXCEED_TOTAL", f"Provided range exceed total count of data: {total}", True)
        page = found[start : end + 1]
        sort: list[Any] = [0] if self.glpi11 else ["1"]
        body: dict[str, Any] = {"totalcount": total, "count": len(page), "sort": sort, "order": ["ASC"]}
        headers: dict[str, str] = {"Accept-Range": f"{itemtype} 1000"}
        if page:
            if forced:
                columns = [1, *forced, *(int(c["field"]) for c in criteria.values())]
                if itemtype == "Ticket":
                    columns.insert(0, 2)
            else:
                columns = [*DEFAULT_DISPLAY[itemtype], *(int(c["field"]) for c in criteria.values())]
            shown = list(dict.fromkeys(col for col in columns if col in options))
            body["data"] = [{str(col): self._search_cell(itemtype, item, col) for col in shown} for item in page]
            last = start + len(page) - 1
            body["content-range"] = f"{start}-{last}/{total}"
            headers["Content-Range"] = f"{start}-{last}/{total}"
        else:
            body["content-range"] = "0--1/0"
        status = 206 if len(page) < total else 200
        return status, body, headers

    def _search_cell(self, itemtype: str, item: dict[str, Any], option: int) -> Any:
        """A search output value: stored text as is (GLPI 10's encoding included), ids and flags as numbers."""
        value = self.search_value(itemtype, item, SEARCH_OPTIONS[itemtype][option])
        if option in NUMERIC_OPTIONS and isinstance(value, str) and value.isdigit():
            return int(value)
        return value

    def _matches(self, itemtype: str, item: dict[str, Any], field_id: int, searchtype: str, value: str) -> bool:
        column = SEARCH_OPTIONS[itemtype][field_id]
        stored = self.search_value(itemtype, item, column)
        values = stored if isinstance(stored, list) else [stored]
        if searchtype == "equals":
            if itemtype == "User" and field_id == 5:
                return False  # observed on GLPI 10.0.12 and 11.0.8: equals on the email option finds nothing
            if itemtype == "User" and field_id == 1:
                return str(item["id"]) == value
            return any(str(v) == value for v in values if v is not None)
        if searchtype != "contains":
            raise ApiError(400, "ERROR", "Bad Request", True)
        text = value.strip()
        if text.upper() == "NULL":
            return all(v in (None, "") for v in values)
        anchored_start = text.startswith("^")
        anchored_end = text.endswith("$") and len(text) > int(anchored_start)
        core = text[1 if anchored_start else 0 : -1 if anchored_end else None]
        regex = re.compile(
            ("^" if anchored_start else "") + re.escape(core) + ("$" if anchored_end else ""),
            re.IGNORECASE | re.DOTALL,
        )
        return any(v is not None and regex.search(str(v)) for v in values)


# ---------------------------------------------------------------------------------------------- HTTP layer

EMULATOR_KEY: web.AppKey[Emulator] = web.AppKey("emulator")


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(data),
        status=status,
        content_type="application/json",
        charset="UTF-8",
        headers={**NO_CACHE, **(headers or {})},
    )


def _params(request: web.Request, body: Any) -> dict[str, str]:
    params: dict[str, str] = dict(request.query.items())
    lower = {k.lower(): v for k, v in request.headers.items()}
    if "session-token" in lower:
        params["session_token"] = lower["session-token"]
    if "app-token" in lower:
        params["app_token"] = lower["app-token"]
    auth = lower.get("authorization", "")
    if auth.lower().startswith("user_token "):
        params["user_token"] = auth.split(" ", 1)[1].strip()
    elif auth.lower().startswith("basic "):
        params["login"] = "basic"
    if isinstance(body, dict):
        for key, value in body.items():
            if key != "input" and isinstance(value, str | int | bool):
                params[key] = str(value)
    return params


def build_app(emulator: Emulator | None = None) -> web.Application:
    """The aiohttp application; ``app[EMULATOR_KEY]`` is the state object tests may inspect directly."""
    emu = emulator or Emulator()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[EMULATOR_KEY] = emu

    async def api(request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"].strip("/")
        raw = await request.read()
        session_token = request.headers.get("Session-Token")
        entry = {
            "method": request.method,
            "path": path,
            "query": list(request.query.items()),
            "body": None,
            "session": session_token,
            "t": time.time(),
        }
        emu.log.append(entry)
        for rule in list(emu.faults):
            if rule.count != 0 and rule.matches(request.method, path):
                if rule.count > 0:
                    rule.count -= 1
                if rule.kind == "delay":
                    await asyncio.sleep(rule.seconds)
                elif rule.kind == "timeout":
                    await asyncio.sleep(rule.seconds or 3600)
                elif rule.kind == "status":
                    if rule.status in (502, 503, 504):
                        return web.Response(
                            status=rule.status,
                            text="<html><body>Bad gateway</body></html>",
                            content_type="text/html",
                        )
                    return _json(["ERROR_SQL", "Unexpected SQL Error : emulated"], rule.status)
                elif rule.kind == "retry_after":
                    return _json(
                        ["ERROR", "Too Many Requests"],
                        429,
                        {"Retry-After": str(rule.retry_after if rule.retry_after is not None else 1)},
                    )
                elif rule.kind == "expire_session":
                    emu.sessions.clear()
                elif rule.kind == "late_commit":
                    if rule.answer == "504":
                        # A proxy gives up at once while PHP carries on and commits later.
                        async def commit_later(rule: Rule = rule) -> None:
                            await asyncio.sleep(rule.seconds)
                            await _dispatch(emu, request, path, raw, entry)

                        task = asyncio.ensure_future(commit_later())
                        emu.background.add(task)
                        task.add_done_callback(emu.background.discard)
                        return web.Response(
                            status=504,
                            text="<html><title>504 Gateway Time-out</title></html>",
                            content_type="text/html",
                        )
                    # The request waits (a busy php-fpm pool, a proxy queue); the client gives up; PHP commits.
                    await asyncio.sleep(rule.seconds)
                elif rule.kind == "redirect":
                    return web.Response(status=302, headers={"Location": rule.location or "https://sso.example/login"})
                elif rule.kind == "html":
                    page = f"<html><head><title>{rule.title}</title></head><body>{rule.title}</body></html>"
                    return web.Response(status=rule.status, text=page, content_type="text/html")
                elif rule.kind == "drop":
                    # Accept and apply the request, then drop the connection before answering.
                    response = await _dispatch(emu, request, path, raw)
                    del response
                    if request.transport is not None:
                        request.transport.close()
                    raise ConnectionResetError("emulated drop")
        return await _dispatch(emu, request, path, raw, entry)

    async def _dispatch(
        emu: Emulator, request: web.Request, path: str, raw: bytes, entry: dict[str, Any] | None = None
    ) -> web.StreamResponse:
        try:
            body: Any = None
            if request.content_type.startswith("multipart/"):
                return await _multipart(emu, request, path, raw)
            if raw:
                if request.method == "GET":
                    raise ApiError(
                        400,
                        "ERROR_JSON_PAYLOAD_FORBIDDEN",
                        "GET Request should not have json payload (http body)",
                        True,
                    )
                try:
                    body = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    raise ApiError(400, "ERROR_JSON_PAYLOAD_INVALID", "JSON payload seems not valid") from None
                if entry is not None:
                    entry["body"] = body
            params = _params(request, body)
            return _route(emu, request, path, params, body)
        except ApiError as exc:
            return _error(emu, exc)

    async def state(request: web.Request) -> web.Response:
        return _json(
            {name: list(items.values()) for name, items in emu.items.items()} | {"sessions": len(emu.sessions)}
        )

    async def requests_log(request: web.Request) -> web.Response:
        return _json(emu.log)

    async def faults(request: web.Request) -> web.Response:
        data = await request.json()
        if data.get("clear"):
            emu.faults.clear()
        for rule in data.get("rules", []):
            emu.faults.append(
                Rule(
                    path=rule.get("path", ".*"),
                    method=rule.get("method"),
                    kind=rule["kind"],
                    status=int(rule.get("status", 503)),
                    seconds=float(rule.get("seconds", 0)),
                    count=int(rule.get("count", 1)),
                    retry_after=rule.get("retry_after"),
                    answer=str(rule.get("answer", "")),
                    location=str(rule.get("location", "")),
                    title=str(rule.get("title", "Access denied")),
                )
            )
        return _json({"rules": len(emu.faults)})

    async def config(request: web.Request) -> web.Response:
        data = await request.json()
        if "glpi11" in data and bool(data["glpi11"]) != emu.glpi11:
            emu.glpi11 = bool(data["glpi11"])
            emu.reset()  # every row takes the columns of the version
        for key in (
            "enable_api",
            "session_ttl",
            "url_base_api",
            "list_limit",
            "restricted_profile",
            "profile",
            "document_max_size_mb",
        ):
            if key in data:
                setattr(emu, key, data[key])
        if "visible_entities" in data:
            emu.visible_entities = {int(e) for e in data["visible_entities"]}
        if "app_tokens" in data:
            emu.app_tokens = set(data["app_tokens"])
        if "user_tokens" in data:
            emu.user_tokens = {k: int(v) for k, v in data["user_tokens"].items()}
        return _json({"ok": True})

    async def add_entity(request: web.Request) -> web.Response:
        data = await request.json()
        entity_id = int(data["id"])
        name = str(data.get("name", f"Entity {entity_id}"))
        emu.items["Entity"][entity_id] = {"id": entity_id, "name": name, "completename": f"Root entity > {name}"}
        if data.get("visible", True):
            emu.visible_entities.add(entity_id)
        return _json({"ok": True})

    async def set_status(request: web.Request) -> web.Response:
        data = await request.json()
        emu.items["Ticket"][int(data["ticket"])].update(status=int(data["status"]), date_mod=_now())
        return _json({"ok": True})

    async def move_ticket(request: web.Request) -> web.Response:
        data = await request.json()
        emu.items["Ticket"][int(data["ticket"])]["entities_id"] = int(data["entity"])
        return _json({"ok": True})

    async def expire(request: web.Request) -> web.Response:
        count = len(emu.sessions)
        emu.sessions.clear()
        return _json({"expired": count})

    async def reset(request: web.Request) -> web.Response:
        emu.reset()
        emu.faults.clear()
        emu.sessions.clear()
        return _json({"ok": True})

    app.router.add_get("/_emulator/state", state)
    app.router.add_get("/_emulator/requests", requests_log)
    app.router.add_post("/_emulator/faults", faults)
    app.router.add_post("/_emulator/config", config)
    app.router.add_post("/_emulator/expire_sessions", expire)
    app.router.add_post("/_emulator/entity", add_entity)
    app.router.add_post("/_emulator/move_ticket", move_ticket)
    app.router.add_post("/_emulator/set_status", set_status)
    app.router.add_post("/_emulator/reset", reset)

    def delay(request: web.Request) -> float:
        if not emu.kind_latency:
            return emu.latency
        if request.method == "GET":
            kind = "search" if "/search/" in request.path else "read"
        else:
            kind = {"POST": "create", "PUT": "update", "PATCH": "update", "DELETE": "delete"}.get(
                request.method, "read"
            )
        return emu.kind_latency.get(kind, emu.latency)

    async def pooled(request: web.Request) -> web.StreamResponse:
        emu.inflight += 1
        emu.peak_inflight = max(emu.peak_inflight, emu.inflight)
        try:
            pool = emu.pool
            seconds = delay(request)
            if pool is None:
                if seconds:
                    await asyncio.sleep(seconds)
                return await api(request)
            async with pool:
                if seconds:
                    await asyncio.sleep(seconds)
                return await api(request)
        finally:
            emu.inflight -= 1

    for prefix in ("/apirest.php", "/api", "/api.php/v1"):
        app.router.add_route("*", prefix + "/{path:.*}", pooled)
        app.router.add_route("*", prefix, pooled)
    return app


def _error(emu: Emulator, exc: ApiError) -> web.Response:
    message = exc.message
    if exc.suffix and isinstance(message, str):
        message += DOC_SUFFIX.format(base=emu.url_base_api, code=exc.code)
    return _json([exc.code, message], exc.status)


async def _multipart(emu: Emulator, request: web.Request, path: str, raw: bytes) -> web.Response:
    """``POST /Document`` with ``uploadManifest`` (JSON) and the file part (GLPI's documented upload)."""
    params = _params(request, None)
    emu.check_app_token(params)
    session = emu.session_for(params)
    if request.method != "POST" or path.lower() != "document":
        raise ApiError(400, "ERROR_BAD_ARRAY", "input parameter must be an array of objects", True)
    head = f"Content-Type: {request.headers['Content-Type']}\r\n\r\n".encode()
    message = email.message_from_bytes(head + raw, policy=email.policy.HTTP)
    manifest: dict[str, Any] = {}
    filename, content = "", b""
    for part in message.iter_parts():
        data = part.get_payload(decode=True) or b""
        if part.get_param("name", header="content-disposition") == "uploadManifest":
            try:
                manifest = orjson.loads(data)
            except orjson.JSONDecodeError:
                raise ApiError(400, "ERROR_JSON_PAYLOAD_INVALID", "JSON payload seems not valid") from None
        elif part.get_filename():
            filename, content = str(part.get_filename()), bytes(data)
    if not filename:
        raise ApiError(400, "ERROR_UPLOAD_FILE_TOO_BIG_POST_MAX_SIZE", "The file seems too big", True)
    result = emu.upload(manifest, filename, content, session)
    return _json(result, 201, {"Location": f"{emu.url_base_api}/Document/{result['id']}"})


def _route(emu: Emulator, request: web.Request, path: str, params: dict[str, str], body: Any) -> web.StreamResponse:
    method = request.method
    if method == "OPTIONS":
        return web.Response(status=200)
    if not path:
        return web.Response(text=API_DOCUMENTATION, content_type="text/html", charset="UTF-8")
    emu.check_app_token(params)
    if path == "initSession":
        return _json(emu.init_session(params))
    session = emu.session_for(params)
    profile = emu.profile_of(session)
    if path == "killSession":
        emu.sessions.pop(params["session_token"], None)
        return _json(True)
    if path == "getActiveProfile":
        return _json({"active_profile": emu.profile_body(profile)})
    if path == "getMyEntities":
        entities = [emu.items["Entity"][e] for e in sorted(emu.visible_entities) if e in emu.items["Entity"]]
        return _json({"myentities": [{"id": e["id"], "name": e["name"]} for e in entities]})
    if path == "getActiveEntities":
        shown = [{"id": e} for e in sorted(emu.visible_entities)]
        return _json({"active_entity": {"id": 0, "active_entity_recursive": 1, "active_entities": shown}})
    if path == "getMyProfiles":
        body = emu.profile_body(profile)
        entities = [{"id": 0, "name": "Root entity", "is_recursive": 1}]
        return _json({"myprofiles": [{"id": body["id"], "name": body["name"], "entities": entities}]})
    if path == "getGlpiConfig":
        return _json({"cfg_glpi": {"version": emu.version, "document_max_size": str(emu.document_max_size_mb)}})
    parts = path.split("/")
    if parts[0] == "search" and len(parts) == 2:
        itemtype = CANONICAL.get(parts[1].lower())
        if itemtype is None:
            raise ApiError(
                400,
                "ERROR_RESOURCE_NOT_FOUND_NOR_COMMONDBTM",
                "resource not found or not an instance of CommonDBTM",
                True,
            )
        query = parse_qsl(request.query_string, keep_blank_values=True)
        status, data, headers = emu.search(itemtype, query, session)
        return _json(data, status, headers)
    itemtype = CANONICAL.get(parts[0].lower())
    if itemtype is None:
        raise ApiError(
            400,
            "ERROR_RESOURCE_NOT_FOUND_NOR_COMMONDBTM",
            "resource not found or not an instance of CommonDBTM",
            True,
        )
    decode = request.headers.get("X-GLPI-Sanitized-Content", "").lower() == "false" and not emu.glpi11
    expand = request.query.get("expand_dropdowns") in ("true", "1")
    if len(parts) == 1 or (len(parts) == 2 and parts[1] == ""):
        if method == "POST":
            return _create(emu, itemtype, body, session)
        if method == "GET":
            rows = [i for i in emu.items[itemtype].values() if not i.get("is_deleted")]
            if itemtype == "Ticket":
                rows = [i for i in rows if emu.visible(i)]
            return _list(emu, itemtype, rows, request, decode, expand)
        raise ApiError(405, "ERROR_METHOD_NOT_ALLOWED", "Method Not Allowed", True)
    if not parts[1].isdigit():
        raise ApiError(400, "ERROR", "Bad Request", True)
    item_id = int(parts[1])
    if len(parts) >= 3 and parts[2]:
        return _subitems(emu, itemtype, item_id, parts, request, decode, expand)
    if method == "GET":
        if item_id == 0 and not emu.glpi11 and itemtype == "Ticket":
            rows = [i for i in emu.items[itemtype].values() if not i.get("is_deleted") and emu.visible(i)]
            response = _list(emu, itemtype, rows, request, decode, expand)
            response.set_status(206)  # GLPI 10 reads id 0 as "no id": a page of the list, as partial content
            return response
        item = emu.items[itemtype].get(item_id)
        if item is None:
            raise ApiError(404, "ERROR_ITEM_NOT_FOUND", "Item not found")
        if itemtype == "Ticket" and not emu.visible(item):
            raise ApiError(403, "ERROR_RIGHT_MISSING", PERMISSION)
        if itemtype == "Document" and "application/octet-stream" in request.headers.get("Accept", ""):
            if item_id not in emu.files:  # a Document without a file (measured): 10 sends nothing, 11 fails
                if emu.glpi11:
                    page = "<html><head><title>Error - GLPI</title></head><body>An error occurred</body></html>"
                    return web.Response(status=500, text=page, content_type="text/html")
                return web.Response(body=b"", content_type="application/octet-stream")
            return web.Response(body=emu.files[item_id], content_type=item.get("mime") or "application/octet-stream")
        return _json(emu.present(itemtype, item, decode=decode, expand=expand), 200, _modified(item))
    if method in ("PUT", "PATCH"):
        if not isinstance(body, dict) or "input" not in body:
            raise ApiError(400, "ERROR_BAD_ARRAY", "input parameter must be an array of objects", True)
        emu.update(itemtype, item_id, body["input"], session)
        return _json([{str(item_id): True, "message": ""}])
    if method == "DELETE":
        purge = params.get("force_purge") in ("1", "true", "True")
        message = emu.delete(itemtype, item_id, purge, session)
        return _json([{str(item_id): True, "message": message}])
    raise ApiError(405, "ERROR_METHOD_NOT_ALLOWED", "Method Not Allowed", True)


def _modified(item: dict[str, Any]) -> dict[str, str]:
    """``Last-Modified`` from the row's ``date_mod`` (GLPI sends it with every item read)."""
    modified = item.get("date_mod")
    if not isinstance(modified, str) or not DATE_RE.match(modified):
        return {}
    stamp = time.strptime(modified, "%Y-%m-%d %H:%M:%S")
    return {"Last-Modified": time.strftime("%a, %d %b %Y %H:%M:%S GMT", stamp)}


def _create(emu: Emulator, itemtype: str, body: Any, session: dict[str, Any]) -> web.Response:
    if not isinstance(body, dict) or "input" not in body:
        raise ApiError(400, "ERROR_BAD_ARRAY", "input parameter must be an array of objects", True)
    inputs = body["input"]
    if isinstance(inputs, list):
        answers, locations = [], []
        for fields in inputs:
            new_id = emu.add(itemtype, fields, session)
            answers.append({"id": new_id, "message": emu.add_message(itemtype, emu.items[itemtype][new_id])})
            locations.append(f"{emu.url_base_api}/{itemtype}/{new_id}")
        return _json(answers, 201, {"Link": ",".join(locations)})
    new_id = emu.add(itemtype, inputs, session)
    return _json(
        {"id": new_id, "message": emu.add_message(itemtype, emu.items[itemtype][new_id])},
        201,
        {"Location": f"{emu.url_base_api}/{itemtype}/{new_id}"},
    )


def _subitems(
    emu: Emulator, itemtype: str, item_id: int, parts: list[str], request: web.Request, decode: bool, expand: bool
) -> web.Response:
    sub = CANONICAL.get(parts[2].lower())
    if sub is None:
        raise ApiError(
            400,
            "ERROR_RESOURCE_NOT_FOUND_NOR_COMMONDBTM",
            "resource not found or not an instance of CommonDBTM",
            True,
        )
    if item_id not in emu.items[itemtype]:
        raise ApiError(404, "ERROR_ITEM_NOT_FOUND", "Item not found")
    if itemtype == "Ticket" and not emu.visible(emu.items[itemtype][item_id]):
        raise ApiError(403, "ERROR_RIGHT_MISSING", PERMISSION)
    if len(parts) >= 4 and parts[3].isdigit():
        child = emu.items[sub].get(int(parts[3]))  # GLPI does not check the parent here
        if child is None:
            raise ApiError(404, "ERROR_ITEM_NOT_FOUND", "Item not found")
        return _json(emu.present(sub, child, decode=decode, expand=expand), 200, _modified(child))
    fk = f"{itemtype.lower()}s_id"
    if sub == "Ticket_Ticket":
        rows = [r for r in emu.items[sub].values() if item_id in (r.get("tickets_id_1"), r.get("tickets_id_2"))]
    else:
        rows = [
            r
            for r in emu.items[sub].values()
            if r.get(fk) == item_id or (r.get("itemtype") == itemtype and r.get("items_id") == item_id)
        ]
    return _list(emu, sub, rows, request, decode, expand)


def _list(
    emu: Emulator, itemtype: str, rows: list[dict[str, Any]], request: web.Request, decode: bool, expand: bool
) -> web.Response:
    column = request.query.get("sort", "id")
    template = emu.columns(itemtype)
    if (template is not None and column not in template) or (template is None and rows and column not in rows[0]):
        table = f"glpi_{itemtype.lower()}s" if not itemtype.endswith("y") else f"glpi_{itemtype.lower()[:-1]}ies"
        raise ApiError(400, "ERROR", f"sort param is not a field of {table}", True)
    order = request.query.get("order", "ASC")
    if order not in ("ASC", "DESC"):
        raise ApiError(400, "ERROR", "order must be DESC or ASC", True)
    rows = sorted(rows, key=lambda r: (str(r.get(column) or "") if column != "id" else r["id"], r["id"]))
    if order == "DESC":
        rows.reverse()
    total = len(rows)
    rng = request.query.get("range")
    if rng is not None:
        if not re.match(r"^\d+-\d+$", rng):
            raise ApiError(400, "ERROR", "range must be in format : [start-end] with integers", True)
        start, end = (int(p) for p in rng.split("-"))
        header_end = min(end, total - 1)
    else:
        start, end = 0, emu.list_limit - 1
        header_end = min(emu.list_limit, total - 1)  # GLPI says end = glpilist_limit (one past the last row)
    if start > total:
        raise ApiError(400, "ERROR_RANGE_EXCEED_TOTAL", f"Provided range exceed total count of data: {total}", True)
    page = rows[start : end + 1]
    headers = {"Accept-Range": f"{itemtype} 1000"}
    if total:
        headers["Content-Range"] = f"{start}-{header_end}/{total}"
    status = 206 if len(page) < total else 200
    return _json([emu.present(itemtype, r, decode=decode, expand=expand) for r in page], status, headers)


def main() -> None:
    parser = argparse.ArgumentParser(description="GLPI REST API emulator (GLPI 10.0.12, or 11.0.8 with --glpi11)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--app-token", default="emulator-app-token")
    parser.add_argument("--user-token", default="emulator-user-token")
    parser.add_argument("--glpi11", action="store_true")
    parser.add_argument("--session-ttl", type=float, default=1440.0)
    parser.add_argument("--certfile", help="serve HTTPS with this certificate (PEM)")
    parser.add_argument("--keyfile", help="... and this private key (PEM)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds each API request takes, e.g. 0.05")
    parser.add_argument("--capacity", type=int, default=0, help="API requests served at once (php-fpm), e.g. 16")
    parser.add_argument(
        "--kind-latency", default="", help="seconds per kind of request, e.g. search=0.006,read=0.008,create=0.022"
    )
    args = parser.parse_args()
    kinds = dict(pair.split("=", 1) for pair in args.kind_latency.split(",") if "=" in pair)
    emu = Emulator(
        app_tokens={args.app_token},
        user_tokens={args.user_token: 2, "emulator-tech-token": 4},
        glpi11=args.glpi11,
        session_ttl=args.session_ttl,
        latency=args.latency,
        capacity=args.capacity,
        kind_latency={kind.strip(): float(seconds) for kind, seconds in kinds.items()},
    )
    context = None
    if args.certfile:
        import ssl

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.certfile, args.keyfile)
    web.run_app(build_app(emu), host=args.host, port=args.port, print=None, ssl_context=context)


if __name__ == "__main__":
    main()
