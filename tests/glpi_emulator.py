"""A GLPI 10 REST API emulator (aiohttp), faithful to ``glpi-rest-api.md`` for every call the product makes.

Run it on its own::

    python -m tests.glpi_emulator --port 8080 --app-token APP --user-token USER

Served under ``/apirest.php/``, ``/api/`` and ``/api.php/v1/``. Test-only endpoints live under ``/_emulator/``:

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

Behaviour reproduced (GLPI 10 mode unless ``glpi11``): App-Token and user_token checks with exact bodies and
statuses, idle-expiring sessions, CRUD with ``{"input": …}``, ``ERROR_GLPI_UPDATE`` null for a missing id,
sub-item lists with 206/Content-Range, search with ``criteria[i][…]`` parameters, ``contains`` with ``^``/``$``,
``equals`` on User option 5 returning nothing, the empty-result shape without ``data``, unique logins, HTML
encoding of ``&<>`` on storage, decoding only on item reads with ``X-GLPI-Sanitized-Content: false``, 255-char
truncation after encoding, requesters (including email-only), contacts never actors, entities and profiles
(``super-admin``; ``restricted``: may create and update tickets but not add followups to a Closed one, as a
Technician profile whose reopen right was narrowed; ``self-service``: may not work for an integration), tickets in
entities the profile cannot see (403 to reads, the permission message to writes), ``_link`` on ticket creation
(``Ticket_Ticket``).

Fault kinds beside the HTTP ones: ``late_commit`` (hold the request ``seconds``, apply it, then answer; with
``"answer": "504"`` a proxy answers 504 at once while PHP commits after ``seconds``), ``redirect`` (302 to
``location``), ``html`` (``status`` with an HTML page: a WAF, an SSO, a missing path).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import html
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import orjson
from aiohttp import web

JSON_CT = "application/json; charset=UTF-8"
NO_CACHE = {
    "Cache-Control": "no-store, no-cache, must-revalidate",
    "Expires": "Mon, 26 Jul 1997 05:00:00 GMT",
    "Pragma": "no-cache",
}
CANONICAL = {
    name.lower(): name
    for name in (
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
        "Profile",
        "Document",
        "Document_Item",
    )
}
VARCHAR = {
    "User": ("name", "firstname", "realname", "phone", "phone2", "mobile"),
    "UserEmail": ("email",),
    "Contact": ("name", "firstname", "email", "phone", "phone2", "mobile"),
    "Ticket": ("name",),
    "Ticket_User": ("alternative_email",),
}
SEARCH_OPTIONS: dict[str, dict[int, str]] = {
    "User": {
        1: "name",
        2: "id",
        5: "_emails",
        6: "phone",
        9: "firstname",
        11: "mobile",
        34: "realname",
        8: "is_active",
    },
    "Contact": {1: "name", 2: "id", 3: "phone", 6: "email", 10: "mobile", 11: "firstname", 16: "comment"},
    "Ticket": {
        1: "name",
        2: "id",
        4: "_requesters",
        12: "status",
        14: "type",
        21: "content",
        34: "_alt_emails",
        10: "urgency",
        3: "priority",
    },
}
EQUALS_ONLY = {"Ticket": {12, 10, 3}}
DOC_SUFFIX = "; view documentation in your browser at {base}/#{code}"
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
LOGIN_RE = re.compile(r"^[\w'@.\- ]+$")


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


@dataclass
class Emulator:
    app_tokens: set[str] = field(default_factory=lambda: {"emulator-app-token"})
    user_tokens: dict[str, int] = field(default_factory=lambda: {"emulator-user-token": 2})
    url_base_api: str = "http://localhost/glpi/api"
    enable_api: bool = True
    glpi11: bool = False
    session_ttl: float = 1440.0
    list_limit: int = 15
    restricted_profile: bool = False
    profile: str = "super-admin"
    visible_entities: set[int] = field(default_factory=lambda: {0})
    background: set[asyncio.Task[Any]] = field(default_factory=set)
    items: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)
    next_id: dict[str, int] = field(default_factory=dict)
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    faults: list[Rule] = field(default_factory=list)
    log: list[dict[str, Any]] = field(default_factory=list)
    #: Like a real GLPI behind php-fpm: each API request holds one of ``capacity`` workers (0: unlimited) for
    #: ``latency`` seconds plus its own work; requests beyond the pool queue (``make bench``).
    latency: float = 0.0
    capacity: int = 0
    _pool: asyncio.Semaphore | None = None
    #: API requests received and not answered yet (queued for the pool included), and the most seen at once.
    inflight: int = 0
    peak_inflight: int = 0

    @property
    def pool(self) -> asyncio.Semaphore | None:
        if self.capacity and self._pool is None:
            self._pool = asyncio.Semaphore(self.capacity)
        return self._pool

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.items = {name: {} for name in CANONICAL.values()}
        self.next_id = dict.fromkeys(CANONICAL.values(), 1)
        self.items["Entity"][0] = {"id": 0, "name": "Root entity", "completename": "Root entity"}
        self.items["User"][2] = {
            "id": 2,
            "name": "glpi",
            "firstname": "",
            "realname": "",
            "phone": "",
            "mobile": "",
            "is_active": 1,
            "entities_id": 0,
            "is_deleted": 0,
            "api_token": "x",
        }
        self.next_id["User"] = 10
        self.next_id["Ticket"] = 100
        self.log.clear()

    # ------------------------------------------------------------------------------------------ profiles

    @property
    def active_profile(self) -> str:
        return "restricted" if self.restricted_profile else self.profile

    def profile_body(self) -> dict[str, Any]:
        """``getActiveProfile``: rights as GLPI 10 bitmasks (Super-Admin's defaults; narrowed ones)."""
        rights = {
            "super-admin": (4, "Super-Admin", 31, 261151, 15383, 127),
            # An integration profile cloned from Technician: creates users, tickets and followups, but its
            # lifecycle may not reopen a Closed ticket, so GLPI refuses followups there.
            "restricted": (6, "Technician", 31, 1031, 4101, 127),
            "self-service": (1, "Self-Service", 0, 5, 5, 0),
        }[self.active_profile]
        pid, name, user, ticket, followup, contact = rights
        return {
            "id": pid,
            "name": name,
            "interface": "helpdesk" if pid == 1 else "central",
            "user": user,
            "ticket": ticket,
            "followup": followup,
            "contact_enterprise": contact,
        }

    def visible(self, item: dict[str, Any]) -> bool:
        return int(item.get("entities_id", 0) or 0) in self.visible_entities

    # ------------------------------------------------------------------------------------------ text rules

    def encode(self, value: Any) -> Any:
        if self.glpi11 or not isinstance(value, str):
            return value
        if re.search(r"&#(38|60|62);", value) and not re.search(r"[<>]", value):
            return value  # already sanitized text is left as it is
        return value.replace("&", "&#38;").replace("<", "&#60;").replace(">", "&#62;")

    def store_fields(self, itemtype: str, fields: dict[str, Any]) -> dict[str, Any]:
        stored = {}
        for key, value in fields.items():
            if key.startswith("_"):
                continue
            value = self.encode(value)
            if key in VARCHAR.get(itemtype, ()) and isinstance(value, str):
                value = value[:255]
            stored[key] = value
        return stored

    def decode_item(self, item: dict[str, Any]) -> dict[str, Any]:
        return {k: html.unescape(v) if isinstance(v, str) else v for k, v in item.items()}

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
        if not token:
            raise ApiError(400, "ERROR_SESSION_TOKEN_MISSING", "parameter session_token is missing or empty", True)
        session = self.sessions.get(token)
        now = time.monotonic()
        if session is None or now - session["last_seen"] > self.session_ttl:
            self.sessions.pop(token, None)
            raise ApiError(401, "ERROR_SESSION_TOKEN_INVALID", "session_token seems invalid")
        session["last_seen"] = now
        return session

    def init_session(self, params: dict[str, str]) -> dict[str, str]:
        user_token = params.get("user_token")
        if not user_token and not params.get("login"):
            raise ApiError(
                400,
                "ERROR_LOGIN_PARAMETERS_MISSING",
                "parameter(s) login, password or user_token are missing",
                True,
            )
        if params.get("login") and not user_token:
            raise ApiError(
                400,
                "ERROR_LOGIN_WITH_CREDENTIALS_DISABLED",
                "usage of initSession resource with credentials is disabled",
            )
        user_id = self.user_tokens.get(user_token or "")
        if user_id is None:
            raise ApiError(401, "ERROR_GLPI_LOGIN_USER_TOKEN", "parameter user_token seems invalid")
        token = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(26))
        self.sessions[token] = {"user_id": user_id, "last_seen": time.monotonic()}
        return {"session_token": token}

    # ------------------------------------------------------------------------------------------ CRUD

    def new_id(self, itemtype: str) -> int:
        new = self.next_id[itemtype]
        self.next_id[itemtype] += 1
        return new

    def add(self, itemtype: str, fields: Any, session: dict[str, Any]) -> int:
        if not isinstance(fields, dict):
            raise ApiError(400, "ERROR_BAD_ARRAY", "input parameter must be an array of objects", True)
        handler = getattr(self, f"_add_{itemtype.lower()}", None)
        if handler is not None:
            return int(handler(fields, session))
        new = self.new_id(itemtype)
        item = {"id": new, "entities_id": 0, "is_deleted": 0, **self.store_fields(itemtype, fields)}
        self.items[itemtype][new] = item
        return new

    def _add_user(self, fields: dict[str, Any], session: dict[str, Any]) -> int:
        login = str(fields.get("name", ""))
        if not login or not (LOGIN_RE.match(login) or EMAIL_RE.match(login)) or login.startswith("+"):
            raise ApiError(400, "ERROR_GLPI_ADD", "The login is not valid. Unable to add the user.")
        if any(u["name"] == self.encode(login) for u in self.items["User"].values()):
            raise ApiError(400, "ERROR_GLPI_ADD", "Unable to add. The user already exists.")
        new = self.new_id("User")
        item = {
            "id": new,
            "is_active": 1,
            "is_deleted": 0,
            "entities_id": 0,
            "firstname": "",
            "realname": "",
            "phone": "",
            "mobile": "",
            **self.store_fields("User", fields),
        }
        self.items["User"][new] = item
        emails = fields.get("_useremails") or []
        values = list(emails.values()) if isinstance(emails, dict) else list(emails)
        for email in values:
            if email:
                self._add_useremail({"users_id": new, "email": email}, session)
        return new

    def _add_useremail(self, fields: dict[str, Any], session: dict[str, Any]) -> int:
        users_id = fields.get("users_id")
        email = str(fields.get("email", ""))
        if not isinstance(users_id, int) or users_id not in self.items["User"] or not EMAIL_RE.match(email):
            raise ApiError(400, "ERROR_GLPI_ADD", "")
        existing = [e for e in self.items["UserEmail"].values() if e["users_id"] == users_id]
        if any(e["email"] == self.encode(email) for e in existing):
            raise ApiError(400, "ERROR_GLPI_ADD", "")
        new = self.new_id("UserEmail")
        self.items["UserEmail"][new] = {
            "id": new,
            "users_id": users_id,
            "email": self.encode(email)[:255],
            "is_default": 0 if existing else 1,
            "is_dynamic": 0,
        }
        return new

    def _add_ticket(self, fields: dict[str, Any], session: dict[str, Any]) -> int:
        now = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
        date = fields.get("date", now)
        if not re.match(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$", str(date)):
            raise ApiError(400, "ERROR_GLPI_ADD", "Incorrect value for date field.")
        new = self.new_id("Ticket")
        item = {
            "id": new,
            "entities_id": 0,
            "name": "",
            "content": "",
            "status": 1,
            "type": 1,
            "urgency": 3,
            "impact": 3,
            "priority": 3,
            "itilcategories_id": 0,
            "is_deleted": 0,
            "date": date,
            "date_mod": now,
            "users_id_recipient": session["user_id"],
            "solvedate": None,
            "closedate": None,
            **self.store_fields("Ticket", fields),
        }
        for key in ("urgency", "impact", "priority", "type", "status"):
            if not isinstance(item.get(key), int):
                item[key] = {"type": 1, "status": 1}.get(key, 3)
        if item["status"] == 5:
            item["solvedate"] = now
        if not self.visible(item):
            raise ApiError(400, "ERROR_GLPI_ADD", "You don't have permission to perform this action.")
        self.items["Ticket"][new] = item
        link = fields.get("_link")
        linked = self.items["Ticket"].get(link.get("tickets_id_2")) if isinstance(link, dict) else None
        # Ticket::post_addItem links only a ticket the profile may see (else "Unknown ticket", still 201).
        if isinstance(link, dict) and linked is not None and self.visible(linked):
            link_id = self.new_id("Ticket_Ticket")
            self.items["Ticket_Ticket"][link_id] = {
                "id": link_id,
                "tickets_id_1": new,
                "tickets_id_2": link["tickets_id_2"],
                "link": int(link.get("link", 1)),
            }
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

    def _add_ticket_user(self, fields: dict[str, Any], session: dict[str, Any]) -> int:
        tid, uid, kind = fields.get("tickets_id"), fields.get("users_id"), fields.get("type", 1)
        alt = str(fields.get("alternative_email") or "")
        if tid not in self.items["Ticket"] or kind not in (1, 2, 3) or not isinstance(uid, int):
            raise ApiError(400, "ERROR_GLPI_ADD", "")
        if uid == 0:
            if not EMAIL_RE.match(alt):
                raise ApiError(400, "ERROR_GLPI_ADD", "Invalid email address")
        elif uid not in self.items["User"]:
            raise ApiError(400, "ERROR_GLPI_ADD", "")
        for row in self.items["Ticket_User"].values():
            if (
                row["tickets_id"] == tid
                and row["users_id"] == uid
                and row["type"] == kind
                and (uid != 0 or row["alternative_email"] == alt)
            ):
                raise ApiError(400, "ERROR_GLPI_ADD", "")
        new = self.new_id("Ticket_User")
        self.items["Ticket_User"][new] = {
            "id": new,
            "tickets_id": tid,
            "users_id": uid,
            "type": kind,
            "use_notification": int(fields.get("use_notification", 1)),
            "alternative_email": self.encode(alt)[:255],
        }
        if kind == 2 and self.items["Ticket"][tid]["status"] == 1:
            self.items["Ticket"][tid]["status"] = 2
        return new

    def _add_itilfollowup(self, fields: dict[str, Any], session: dict[str, Any]) -> int:
        if fields.get("itemtype") != "Ticket" or fields.get("items_id") not in self.items["Ticket"]:
            raise ApiError(400, "ERROR_GLPI_ADD", "")
        content = fields.get("content")
        if not isinstance(content, str) or not content.strip():
            raise ApiError(400, "ERROR_GLPI_ADD", "You can't add a followup without description")
        ticket = self.items["Ticket"][fields["items_id"]]
        if (ticket["status"] == 6 and self.active_profile != "super-admin") or not self.visible(ticket):
            raise ApiError(400, "ERROR_GLPI_ADD", "You don't have permission to perform this action.")
        now = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
        date = fields.get("date", now)
        if not re.match(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$", str(date)):
            raise ApiError(400, "ERROR_GLPI_ADD", "Incorrect value for date field.")
        new = self.new_id("ITILFollowup")
        self.items["ITILFollowup"][new] = {
            "id": new,
            "itemtype": "Ticket",
            "items_id": fields["items_id"],
            "date": date,
            "users_id": fields.get("users_id", session["user_id"]),
            "users_id_editor": 0,
            "content": self.encode(content),
            "is_private": int(fields.get("is_private", 0)),
            "requesttypes_id": 0,
            "date_mod": now,
            "date_creation": now,
            "timeline_position": 1,
        }
        ticket["date_mod"] = now
        if fields.get("pending") == 1:
            ticket["status"] = 4
        return new

    def _add_itilsolution(self, fields: dict[str, Any], session: dict[str, Any]) -> int:
        tid = fields.get("items_id")
        if fields.get("itemtype") != "Ticket" or tid not in self.items["Ticket"]:
            raise ApiError(400, "ERROR_GLPI_ADD", "")
        new = self.new_id("ITILSolution")
        now = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
        self.items["ITILSolution"][new] = {
            "id": new,
            "itemtype": "Ticket",
            "items_id": tid,
            "content": self.encode(str(fields.get("content", ""))),
            "users_id": fields.get("users_id", session["user_id"]),
            "date_creation": now,
            "date_mod": now,
        }
        self.items["Ticket"][tid]["status"] = 5
        self.items["Ticket"][tid]["date_mod"] = now
        return new

    def update(self, itemtype: str, item_id: int, fields: Any) -> None:
        if not isinstance(fields, dict):
            raise ApiError(400, "ERROR_BAD_ARRAY", "input parameter must be an array of objects", True)
        item = self.items[itemtype].get(item_id)
        if item is None:
            raise ApiError(400, "ERROR_GLPI_UPDATE", None)
        if itemtype == "Ticket" and not self.visible(item):
            raise ApiError(400, "ERROR_GLPI_UPDATE", "You don't have permission to perform this action.")
        if (
            itemtype == "User"
            and "name" in fields
            and any(
                u["name"] == self.encode(str(fields["name"])) and uid != item_id
                for uid, u in self.items["User"].items()
            )
        ):
            raise ApiError(400, "ERROR_GLPI_UPDATE", "Unable to update. The user already exists.")
        item.update(self.store_fields(itemtype, {k: v for k, v in fields.items() if k != "id"}))
        if itemtype == "User" and fields.get("_useremails"):
            emails = fields["_useremails"]
            for email in emails.values() if isinstance(emails, dict) else emails:
                self._add_useremail({"users_id": item_id, "email": email}, {"user_id": 2})
        if itemtype == "Ticket" and "status" in fields:
            now = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
            item["solvedate"] = now if item["status"] == 5 else (item["solvedate"] if item["status"] == 6 else None)
            item["closedate"] = now if item["status"] == 6 else None
            item["date_mod"] = now

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
        return item.get(column)

    def search(self, itemtype: str, query: list[tuple[str, str]]) -> tuple[int, dict[str, Any], dict[str, str]]:
        options = SEARCH_OPTIONS.get(itemtype)
        if options is None:
            raise ApiError(
                400,
                "ERROR_RESOURCE_NOT_FOUND_NOR_COMMONDBTM",
                "resource not found or not an instance of CommonDBTM",
                True,
            )
        criteria: dict[int, dict[str, str]] = {}
        forced: list[int] = []
        rng = None
        for key, value in query:
            match = re.match(r"^criteria\[(\d+)\]\[(\w+)\]$", key)
            if match:
                criteria.setdefault(int(match.group(1)), {})[match.group(2)] = value
            elif re.match(r"^forcedisplay\[\d+\]$", key):
                forced.append(int(value))
            elif key == "range":
                rng = value
        rows = [item for item in self.items[itemtype].values() if not item.get("is_deleted")]
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
        found = sorted(result if result is not None else rows, key=lambda item: str(item.get("name", "")))
        total = len(found)
        start, end = 0, self.list_limit - 1
        if rng:
            start, end = (int(part) for part in rng.split("-"))
        if start > total and total:
            raise ApiError(400, "ERROR_RANGE_EXCEED_TOTAL", f"Provided range exceed total count of data: {total}", True)
        page = found[start : end + 1]
        body: dict[str, Any] = {"totalcount": total, "count": len(page), "sort": [1], "order": ["ASC"]}
        headers: dict[str, str] = {"Accept-Range": f"{itemtype} 1000"}
        if page:
            columns = {1, *forced, *(int(c["field"]) for c in criteria.values())}
            if itemtype == "Ticket":
                columns.add(2)
            body["data"] = [
                {str(col): self.search_value(itemtype, item, options[col]) for col in sorted(columns) if col in options}
                for item in page
            ]
            last = start + len(page) - 1
            body["content-range"] = f"{start}-{last}/{total}"
            headers["Content-Range"] = f"{start}-{last}/{total}"
        else:
            body["content-range"] = "0--1/0"
        status = 206 if len(page) < total else 200
        return status, body, headers

    def _matches(self, itemtype: str, item: dict[str, Any], field_id: int, searchtype: str, value: str) -> bool:
        column = SEARCH_OPTIONS[itemtype][field_id]
        stored = self.search_value(itemtype, item, column)
        values = stored if isinstance(stored, list) else [stored]
        if searchtype == "equals":
            if itemtype == "User" and field_id == 5:
                return False  # observed on GLPI 10.0.12: equals on the email option finds nothing
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
    app = web.Application(client_max_size=16 * 1024 * 1024)
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
    ) -> web.Response:
        try:
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
            else:
                body = None
            params = _params(request, body)
            return _route(emu, request, path, params, body)
        except ApiError as exc:
            message = exc.message
            if exc.suffix and isinstance(message, str):
                message += DOC_SUFFIX.format(base=emu.url_base_api, code=exc.code)
            return _json([exc.code, message], exc.status)

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
        for key in (
            "enable_api",
            "glpi11",
            "session_ttl",
            "url_base_api",
            "list_limit",
            "restricted_profile",
            "profile",
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
        emu.items["Ticket"][int(data["ticket"])]["status"] = int(data["status"])
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

    async def pooled(request: web.Request) -> web.StreamResponse:
        emu.inflight += 1
        emu.peak_inflight = max(emu.peak_inflight, emu.inflight)
        try:
            pool = emu.pool
            if pool is None:
                if emu.latency:
                    await asyncio.sleep(emu.latency)
                return await api(request)
            async with pool:
                if emu.latency:
                    await asyncio.sleep(emu.latency)
                return await api(request)
        finally:
            emu.inflight -= 1

    for prefix in ("/apirest.php", "/api", "/api.php/v1"):
        app.router.add_route("*", prefix + "/{path:.*}", pooled)
    return app


def _route(emu: Emulator, request: web.Request, path: str, params: dict[str, str], body: Any) -> web.Response:
    method = request.method
    if method == "OPTIONS":
        return web.Response(status=200)
    if not path:
        raise ApiError(400, "ERROR_RESOURCE_MISSING", "missing resource", True)
    emu.check_app_token(params)
    if path == "initSession":
        return _json(emu.init_session(params))
    session = emu.session_for(params)
    if path == "killSession":
        emu.sessions.pop(params["session_token"], None)
        return _json(True)
    if path == "getActiveProfile":
        return _json({"active_profile": emu.profile_body()})
    if path == "getMyEntities":
        entities = [emu.items["Entity"][e] for e in sorted(emu.visible_entities) if e in emu.items["Entity"]]
        return _json({"myentities": [{"id": e["id"], "name": e["name"]} for e in entities]})
    if path == "getMyProfiles":
        return _json({"myprofiles": [{"id": 4, "name": "Super-Admin", "entities": [{"id": 0, "name": "Root entity"}]}]})
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
        status, data, headers = emu.search(itemtype, query)
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
    if len(parts) == 1:
        if method == "POST":
            if not isinstance(body, dict) or "input" not in body:
                raise ApiError(400, "ERROR_BAD_ARRAY", "input parameter must be an array of objects", True)
            new_id = emu.add(itemtype, body["input"], session)
            name = emu.items[itemtype][new_id].get("name", "")
            return _json(
                {"id": new_id, "message": f"Item successfully added: {html.unescape(str(name))}"},
                201,
                {"Location": f"{emu.url_base_api}/{itemtype}/{new_id}"},
            )
        if method == "GET":
            rows = [i for i in emu.items[itemtype].values() if not i.get("is_deleted")]
            return _list(emu, itemtype, rows, request, decode)
        raise ApiError(405, "ERROR_METHOD_NOT_ALLOWED", "Method Not Allowed", True)
    if not parts[1].isdigit():
        raise ApiError(400, "ERROR", "Bad Request", True)
    item_id = int(parts[1])
    if len(parts) >= 3 and parts[2]:
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
            raise ApiError(403, "ERROR_RIGHT_MISSING", "You don't have permission to perform this action.")
        if len(parts) >= 4 and parts[3].isdigit():
            child = emu.items[sub].get(int(parts[3]))
            if child is None:
                raise ApiError(404, "ERROR_ITEM_NOT_FOUND", "Item not found")
            return _json(emu.decode_item(child) if decode else child)
        fk = f"{itemtype.lower()}s_id"
        rows = [
            r
            for r in emu.items[sub].values()
            if r.get(fk) == item_id or (r.get("itemtype") == itemtype and r.get("items_id") == item_id)
        ]
        return _list(emu, sub, rows, request, decode)
    if method == "GET":
        item = emu.items[itemtype].get(item_id)
        if item is None:
            raise ApiError(404, "ERROR_ITEM_NOT_FOUND", "Item not found")
        if itemtype == "Ticket" and not emu.visible(item):
            raise ApiError(403, "ERROR_RIGHT_MISSING", "You don't have permission to perform this action.")
        shown = {k: v for k, v in item.items() if k not in ("api_token", "password", "personal_token")}
        return _json(emu.decode_item(shown) if decode else shown)
    if method in ("PUT", "PATCH"):
        if not isinstance(body, dict) or "input" not in body:
            raise ApiError(400, "ERROR_BAD_ARRAY", "input parameter must be an array of objects", True)
        emu.update(itemtype, item_id, body["input"])
        return _json([{str(item_id): True, "message": ""}])
    if method == "DELETE":
        item = emu.items[itemtype].get(item_id)
        if item is None:
            raise ApiError(400, "ERROR_GLPI_DELETE", "Item not found")
        purge = params.get("force_purge") in ("1", "true", "True") or itemtype not in (
            "Ticket",
            "User",
            "Contact",
        )
        if purge:
            del emu.items[itemtype][item_id]
            if itemtype == "Ticket":
                for fid in [f for f, row in emu.items["ITILFollowup"].items() if row["items_id"] == item_id]:
                    del emu.items["ITILFollowup"][fid]
        else:
            item["is_deleted"] = 1
        return _json([{str(item_id): True, "message": ""}])
    raise ApiError(405, "ERROR_METHOD_NOT_ALLOWED", "Method Not Allowed", True)


def _list(emu: Emulator, itemtype: str, rows: list[dict[str, Any]], request: web.Request, decode: bool) -> web.Response:
    column = request.query.get("sort", "id")
    if rows and column not in rows[0]:
        raise ApiError(400, "ERROR", f"sort param is not a field of glpi_{itemtype.lower()}s", True)
    order = request.query.get("order", "ASC")
    if order not in ("ASC", "DESC"):
        raise ApiError(400, "ERROR", "order must be DESC or ASC", True)
    rows = sorted(rows, key=lambda r: (str(r.get(column, "")) if column != "id" else r["id"], r["id"]))
    if order == "DESC":
        rows.reverse()
    if request.query.get("expand_dropdowns") in ("true", "1"):
        users = emu.items["User"]
        rows = [{**r, "users_id": users[r["users_id"]]["name"]} if r.get("users_id") in users else r for r in rows]
    total = len(rows)
    rng = request.query.get("range")
    if rng:
        if not re.match(r"^\d+-\d+$", rng):
            raise ApiError(400, "ERROR", "range must be in format : [start-end] with integers", True)
        start, end = (int(p) for p in rng.split("-"))
        header_end = min(end, total - 1)
    else:
        start, end = 0, emu.list_limit - 1
        header_end = min(emu.list_limit, total - 1) if not emu.glpi11 else min(end, total - 1)  # 10.x off-by-one
    if start > total:
        raise ApiError(400, "ERROR_RANGE_EXCEED_TOTAL", f"Provided range exceed total count of data: {total}", True)
    page = rows[start : end + 1]
    headers = {"Accept-Range": f"{itemtype} 1000"}
    if total:
        headers["Content-Range"] = f"{start}-{header_end}/{total}"
    status = 206 if len(page) < total else 200
    return _json([emu.decode_item(r) if decode else r for r in page], status, headers)


def main() -> None:
    parser = argparse.ArgumentParser(description="GLPI 10 REST API emulator")
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
    args = parser.parse_args()
    emu = Emulator(
        app_tokens={args.app_token},
        user_tokens={args.user_token: 2},
        glpi11=args.glpi11,
        session_ttl=args.session_ttl,
        latency=args.latency,
        capacity=args.capacity,
    )
    context = None
    if args.certfile:
        import ssl

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.certfile, args.keyfile)
    web.run_app(build_app(emu), host=args.host, port=args.port, print=None, ssl_context=context)


if __name__ == "__main__":
    main()
