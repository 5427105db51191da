"""The GLPI emulator answers as a real GLPI 10.0.12 and 11.0.8 answered: every recorded group, both versions.

``tests/glpi_transcripts/`` holds what two real GLPIs answered to every request the product makes, plus probes
(README there). For each recorded exchange this test builds, in a fresh emulator of the same version, the world the
exchange needed (the objects it names, with the state its case says: closed, purged, in the trash, ...), sends the
same request with the same headers and flags (wrong tokens, a technician's session, no sanitized header), and
compares what matters: the status, the error array, ``Content-Range``/``Location``/``Link``, the keys and JSON types
of the body, the values (texts as encoded, which fields are names and which are ids), dates by format only.

Differences kept on purpose are listed in :data:`KEPT`, in one place, each with its reason.
"""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from tests.glpi_emulator import SEARCH_OPTIONS, Emulator, build_app
from tests.harness import free_port

TRANSCRIPTS = Path(__file__).resolve().parent.parent / "glpi_transcripts"
FILES = {"10": TRANSCRIPTS / "glpi-10.0.12.jsonl", "11": TRANSCRIPTS / "glpi-11.0.8.jsonl"}
BASES = {"10": "http://127.0.0.1:18080/apirest.php", "11": "http://127.0.0.1:18081/api.php/v1"}

#: Recorded groups the emulator answers differently on purpose (group key prefix → why). Nothing else may differ.
KEPT: dict[str, str] = {
    "GET /listSearchOptions/": "search option lists are not served: the product's option ids are fixed in code",
    "GET /getFullSession": "GLPI's session dump is not emulated: the product never reads it",
    "GET /initSession?get_full_session=true": "GLPI's session dump is not emulated: the product never reads it",
    "GET /Ticket/{id}?with_logs=true": "no history log is kept: the product never reads it",
}
#: Within compared groups: parts of an answer that cannot match (random or environment-bound), compared by form.
#: - dates and durations depend on when the exchange ran: compared as "a date" (or null where GLPI's status rules
#:   make them null: ``solvedate``, ``closedate``);
#: - GLPI 11's database errors quote the whole SQL statement GLPI built: compared up to the SQL;
#: - an upload's generated file name prefix, tag and ids are random in GLPI too;
#: - ``GET /`` returns GLPI's 60 kB API documentation: compared as text of the same content type.
DATE = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
DATE_KEY = re.compile(r"date(_\w+)?|\w*date|\w+_date|last_login|(internal_)?time_to_\w+|\w+_begin_date")
STRICT_DATES = {"solvedate", "closedate"}
RANDOM_KEYS = {"tag", "prefix", "name@upload", "url", "deleteUrl", "id@upload"}
#: The columns a creator sets, by itemtype; the emulator fills in every other column itself.
SEED_KEYS = {
    "User": ("name", "firstname", "realname", "phone", "phone2", "mobile", "is_active", "entities_id", "comment"),
    "Contact": ("name", "firstname", "email", "phone", "phone2", "mobile", "comment", "entities_id"),
    "Ticket": ("name", "content", "status", "type", "urgency", "impact", "priority", "entities_id", "date",
               "is_deleted", "itilcategories_id", "users_id_recipient", "users_id_lastupdater", "requesttypes_id"),
    "ITILFollowup": ("itemtype", "items_id", "content", "is_private", "users_id", "date"),
    "ITILSolution": ("itemtype", "items_id", "content", "users_id", "status"),
    "UserEmail": ("users_id", "email", "is_default"),
    "Ticket_User": ("tickets_id", "users_id", "type", "use_notification", "alternative_email"),
    "Ticket_Ticket": ("tickets_id_1", "tickets_id_2", "link"),
    "ITILCategory": ("name", "completename", "entities_id", "is_recursive"),
    "Document": ("name", "filename", "filepath", "mime", "users_id", "sha1sum", "entities_id"),
    "Document_Item": ("documents_id", "items_id", "itemtype", "users_id", "entities_id"),
}  # fmt: skip
#: Which itemtype a referencing column points to.
REFERENCES = {"users_id": "User", "tickets_id": "Ticket", "tickets_id_1": "Ticket", "tickets_id_2": "Ticket",
              "documents_id": "Document", "itilcategories_id": "ITILCategory"}  # fmt: skip
MISSING_CASES = ("does not exist", "purged")


def _lines() -> Iterator[tuple[str, int, dict[str, Any]]]:
    for version, path in FILES.items():
        for index, raw in enumerate(path.read_text().splitlines()):
            yield version, index, orjson.loads(raw)


LINES = list(_lines())


def _case(group: str) -> str:
    match = re.search(r" \{([^{}]*)\} -> \d+$", group)
    return match.group(1) if match else ""


def _flags(group: str) -> set[str]:
    match = re.search(r" \[([^\]]*)\]( |$)", group.split(" -> ")[0] + " ")
    return set(match.group(1).split()) if match else set()


def _kept(group: str) -> str | None:
    return next((why for prefix, why in KEPT.items() if group.startswith(prefix)), None)


# ------------------------------------------------------------------------------------------------- the world


def _order(line: dict[str, Any], index: int) -> tuple[str, int]:
    return (line["at"], index)


class Known:
    """Every object the recorded exchanges before a moment showed, as it was then (creates, reads, updates, deletes).

    The transcript keeps its lines grouped by request, so "before" is by the recorded time (``at``), then position.
    """

    def __init__(self, version: str, before: tuple[str, int]) -> None:
        self.version = version
        self.objects: dict[tuple[str, int], dict[str, Any]] = {}
        earlier = [(line, n) for v, n, line in LINES if v == version and _order(line, n) < before]
        for line, _ in sorted(earlier, key=lambda entry: _order(*entry)):
            self._learn(line)

    def of(self, itemtype: str) -> dict[int, dict[str, Any]]:
        return {key[1]: fields for key, fields in self.objects.items() if key[0] == itemtype}

    def _put(self, itemtype: str, item_id: Any, fields: dict[str, Any]) -> None:
        if isinstance(item_id, int) and not isinstance(item_id, bool):
            self.objects.setdefault((itemtype, item_id), {}).update(fields)

    def _learn(self, line: dict[str, Any]) -> None:
        request, response, group = line["request"], line["response"], line["group"]
        flags = _flags(group)
        parts = [p for p in request["path"].split("/") if p]
        body, status, method = response["body"], response["status"], request["method"]
        if not parts or status >= 300:
            return
        inputs = request["body"].get("input") if isinstance(request["body"], dict) else None
        if method == "POST" and status == 201:
            answers = body if isinstance(body, list) else [body]
            for fields, answer in zip(inputs if isinstance(inputs, list) else [inputs], answers, strict=False):
                if isinstance(fields, dict) and isinstance(answer, dict):
                    self._created(parts[0], answer["id"], fields)
        elif method == "PUT" and isinstance(inputs, dict) and len(parts) == 2:
            self._put(parts[0], int(parts[1]), inputs)
        elif method == "DELETE" and len(parts) == 2:
            key = (parts[0], int(parts[1]))
            if any(q == ["force_purge", "true"] for q in request["query"]):
                self.objects.pop(key, None)
                if parts[0] == "Ticket":
                    for child in [k for k, v in self.objects.items() if v.get("items_id") == key[1]]:
                        if child[0] in ("ITILFollowup", "ITILSolution"):
                            self.objects.pop(child, None)
            elif key in self.objects:
                self.objects[key]["is_deleted"] = 1
        elif (
            method == "GET"
            and not ({"sanitized:absent", "sanitized:true"} & flags)
            and "expand_dropdowns=true" not in group
        ):
            self._read(parts, body)

    def _created(self, itemtype: str, item_id: int, fields: dict[str, Any]) -> None:
        self._put(itemtype, item_id, {k: v for k, v in fields.items() if not k.startswith("_")})
        if itemtype == "User":
            for n, address in enumerate(fields.get("_useremails") or []):
                self._put("UserEmail", 100000 + item_id * 10 + n, {"users_id": item_id, "email": address})
        if itemtype == "Ticket":
            requester = fields.get("_users_id_requester")
            notif = fields.get("_users_id_requester_notif") or {}
            if isinstance(requester, int) and (requester == 0 or ("User", requester) in self.objects or requester < 10):
                actor = {"tickets_id": item_id, "users_id": requester, "type": 1}
                actor["alternative_email"] = notif.get("alternative_email", "") if isinstance(notif, dict) else ""
                self._put("Ticket_User", 200000 + item_id, actor)
            link = fields.get("_link")
            if isinstance(link, dict) and (("Ticket", link.get("tickets_id_2")) in self.objects):
                self._put("Ticket_Ticket", 300000 + item_id, {"tickets_id_1": item_id, **{
                    k: link[k] for k in ("tickets_id_2", "link") if k in link}})  # fmt: skip

    def _read(self, parts: list[str], body: Any) -> None:
        if parts[0] == "search" and isinstance(body, dict):
            options = SEARCH_OPTIONS.get(parts[1], {})
            for row in body.get("data", []):
                if "2" not in row:
                    continue
                fields = {options[int(k)]: self._plain(v) for k, v in row.items() if int(k) in options}
                self._put(parts[1], row["2"], {k: v for k, v in fields.items() if not k.startswith("_")})
            return
        itemtype = parts[-1] if len(parts) in (1, 3) else parts[-2] if len(parts) == 4 else parts[0]
        if len(parts) == 3 and isinstance(body, list):  # a parent's children, as they are now
            fk = f"{parts[0].lower()}s_id"
            for key in [k for k, v in self.objects.items() if k[0] == itemtype and v.get(fk) == int(parts[1])]:
                self.objects.pop(key)
        for row in body if isinstance(body, list) else [body]:
            if isinstance(row, dict) and isinstance(row.get("id"), int):
                self._put(itemtype, row["id"], {k: v for k, v in row.items() if k != "links"})

    def _plain(self, value: Any) -> Any:
        """A search cell as stored text (GLPI 10's search output is encoded whatever the header)."""
        return html.unescape(value) if isinstance(value, str) and self.version == "10" else value


class World:
    """The objects one exchange needs, built in a fresh emulator before the request is sent."""

    def __init__(self, emu: Emulator, version: str, index: int, line: dict[str, Any]) -> None:
        self.emu, self.version, self.line = emu, version, line
        self.known = Known(version, _order(line, index))
        self.group = line["group"]
        self.case = _case(self.group)
        self.seeded: set[tuple[str, int]] = set()
        self.absent: set[tuple[str, int]] = set()

    # ----------------------------------------------------------------------------------------- seeding

    def seed(self, itemtype: str, item_id: int, fields: dict[str, Any] | None = None) -> None:
        """Make ``itemtype`` ``item_id`` exist as it was (with the objects it refers to)."""
        key = (itemtype, item_id)
        if key in self.seeded or key in self.absent or itemtype not in SEED_KEYS:
            return
        if itemtype == "User" and item_id < 10:
            return  # GLPI's own users exist in every emulator
        self.seeded.add(key)
        known = {**self.known.objects.get(key, {}), **(fields or {})}
        chosen = {k: known[k] for k in SEED_KEYS[itemtype] if k in known}
        for column, value in chosen.items():
            target = REFERENCES.get(column) or (chosen.get("itemtype") if column == "items_id" else None)
            if target and isinstance(value, int) and value > 0:
                self.seed(str(target), value)
        if itemtype == "Ticket":
            chosen.setdefault("name", f"Ticket {item_id}")
        row = self.emu.new_row(itemtype, chosen)
        row["id"] = item_id
        if itemtype == "Ticket" and row.get("status") in (5, 6):
            row["solvedate"] = row["date_mod"]
            row["closedate"] = row["date_mod"] if row["status"] == 6 else None
        if isinstance(known.get("date_mod"), str):
            row["date_mod"] = known["date_mod"]
        self.emu.items[itemtype][item_id] = row
        self.emu.next_id[itemtype] = max(self.emu.next_id[itemtype], item_id + 1)
        if itemtype == "User":
            for email_id, email in self.known.of("UserEmail").items():
                if email.get("users_id") == item_id:
                    self.seed("UserEmail", email_id)

    def fillers(self, itemtype: str, count: int, like: dict[str, Any], after: int) -> None:
        """``count`` more objects like ``like`` that sort after the recorded page (older, later ids, later names)."""
        for n in range(count):
            fields = {**like, "date_mod": "2000-01-01 00:00:00", "date": "2000-01-01 00:00:00"}
            if isinstance(fields.get("name"), str):
                fields["name"] = f"{fields['name']}~{n:04d}"
            self.seed(itemtype, after + 1000 + n, fields)

    # ----------------------------------------------------------------------------------------- the line

    def build(self) -> None:
        request, response = self.line["request"], self.line["response"]
        method, body, status = request["method"], response["body"], response["status"]
        parts = [p for p in request["path"].split("/") if p]
        code = body[0] if isinstance(body, list) and body and isinstance(body[0], str) else None
        missing_target = any(word in self.case for word in MISSING_CASES) or (
            code in ("ERROR_ITEM_NOT_FOUND", "ERROR_GLPI_UPDATE", "ERROR_GLPI_DELETE")
            and (code != "ERROR_GLPI_DELETE" or body[1] == "Item not found")
        )
        path_ids = [(parts[i - 1], int(p)) for i, p in enumerate(parts) if p.isdigit() and i > 0 and int(p) > 0]
        if path_ids and missing_target and method in ("GET", "PUT", "DELETE") and status >= 400:
            self.absent.add(path_ids[-1] if len(parts) != 3 else path_ids[0])
        if parts and parts[0] == "search":
            self._search(parts[1])
        elif method == "GET" and len(parts) == 3 and not parts[2].isdigit() and ("", 0) not in self.absent:
            self._children(parts, body if isinstance(body, list) else [])
        elif method == "GET" and status in (200, 206) and isinstance(body, list) and "{id 0}" not in self.group:
            self._list(parts, body)
        if code == "ERROR_RANGE_EXCEED_TOTAL" and len(parts) == 1:
            total = int(re.findall(r"data: (\d+)", body[1])[0])
            self.fillers(parts[0], total, {}, 90000)
        for itemtype, item_id in path_ids:
            shown = method == "GET" and isinstance(body, dict) and body.get("id") == item_id
            fields = self._unexpand(itemtype, body) if shown else {}
            self.seed(itemtype, item_id, self._state(fields))
        if method == "POST" and isinstance(request["body"], dict):
            self._post(parts[0], request["body"].get("input"), body, missing_target)
        elif method == "POST" and status == 201 and isinstance(body, dict):
            self.emu.next_id[parts[0]] = body["id"]
        if method in ("PUT", "DELETE") and path_ids:
            self._put_case(*path_ids[-1])
        if "{id 0}" in self.group:
            self._list(["Ticket"], body if isinstance(body, list) else [])

    def _state(self, fields: dict[str, Any] | None) -> dict[str, Any]:
        """The recorded object, with the state its case gives it."""
        state = dict(fields or {})
        if "ticket closed" in self.case or self.case == "closed" or "closed, after" in self.case:
            state.setdefault("status", 6)
        if "ticket solved" in self.case:
            state.setdefault("status", 5)
        if "ticket in trash" in self.case:
            state["is_deleted"] = 1
        return state

    def _unexpand(self, itemtype: str, row: dict[str, Any]) -> dict[str, Any]:
        """An answer's row with its foreign keys as ids again (an ``expand_dropdowns`` answer names them)."""
        fields = {k: v for k, v in row.items() if k != "links"}
        linked = {}
        for link in row.get("links") or []:
            tail = link["href"].rpartition("/")[2]
            if tail.isdigit():
                linked.setdefault(link["rel"], int(tail))
        logins = {2: "glpi", 3: "post-only", 4: "tech", 5: "normal", 6: "glpi-system"}
        logins |= {uid: u.get("name") for uid, u in self.known.of("User").items()}
        by_login = {name: uid for uid, name in logins.items()}
        for key, value in row.items():
            if not isinstance(value, str) or key in ("name", "content", "comment", "itemtype"):
                continue
            if key.startswith("users_id") and value in by_login:
                fields[key] = by_login[value]
            elif key == "entities_id":
                fields[key] = 0
            elif key == "requesttypes_id":
                fields[key] = {"Helpdesk": 1}.get(value, 1)
            elif key in ("items_id", "tickets_id", "itilcategories_id"):
                target = {"itilcategories_id": "ITILCategory"}.get(key, "Ticket")
                if key == "items_id":
                    target = str(row.get("itemtype") or "Ticket")
                named = [i for i, o in self.known.of(target).items() if o.get("name") == value]
                fields[key] = linked.get(target) or (named[0] if named else 1)
                self.seed(target, fields[key], {"name": value})
        return fields

    def _list(self, parts: list[str], rows: list[Any]) -> None:
        itemtype = parts[-1] if len(parts) in (1, 3) else parts[0]
        if len(parts) >= 2:
            self.seed(parts[0], int(parts[1]))
        for row in rows:
            if isinstance(row, dict) and isinstance(row.get("id"), int):
                self.seed(itemtype, row["id"], self._unexpand(itemtype, row))
        total = _total(self.line["response"]["headers"].get("Content-Range"))
        if total is not None and rows and total > len(rows) and len(parts) in (1, 3):
            like = {k: v for k, v in self._unexpand(itemtype, rows[-1]).items() if k in SEED_KEYS.get(itemtype, ())}
            parent = self._parent(parts)
            self.fillers(itemtype, total - len(rows), {**like, **parent}, max(r["id"] for r in rows))

    def _children(self, parts: list[str], rows: list[Any]) -> None:
        """A parent's children as they were: those shown as shown, and as many others as GLPI counted."""
        parent, parent_id, itemtype = parts[0], int(parts[1]), parts[2]
        if (parent, parent_id) in self.absent:
            return
        self.seed(parent, parent_id)
        link = self._parent(parts)
        response = self.line["response"]
        total = _total(response["headers"].get("Content-Range"))
        if (
            total is None
            and isinstance(response["body"], list)
            and response["body"][:1] == ["ERROR_RANGE_EXCEED_TOTAL"]
        ):
            total = int(re.findall(r"data: (\d+)", response["body"][1])[0])
        total = len(rows) if total is None else total
        for row in rows:
            if isinstance(row, dict):
                self.seed(itemtype, row["id"], self._unexpand(itemtype, row))
        shown = {row["id"] for row in rows if isinstance(row, dict)}
        for child_id, row in list(self.emu.items[itemtype].items()):
            if child_id not in shown and all(row.get(k) == v for k, v in link.items() if k in row):
                del self.emu.items[itemtype][child_id]  # seeded with its parent, and not listed
                self.seeded.discard((itemtype, child_id))
        others = [
            child_id
            for child_id, fields in sorted(self.known.of(itemtype).items())
            if child_id not in shown
            and all(fields.get(k) == v for k, v in link.items() if k in fields)
            and any(k in fields for k in link)
        ]
        for child_id in others[: max(0, total - len(shown))]:
            self.seed(itemtype, child_id)
        missing = total - len(shown) - len(others[: max(0, total - len(shown))])
        if missing > 0:
            like = {**link, "content": "<p>x</p>"} if itemtype == "ITILFollowup" else dict(link)
            self.fillers(itemtype, missing, like, max([*shown, *others, 0]))

    def _parent(self, parts: list[str]) -> dict[str, Any]:
        if len(parts) == 3 and parts[0] == "Ticket":
            if parts[2] == "Ticket_Ticket":
                return {"tickets_id_1": int(parts[1])}
            if parts[2] == "Ticket_User":
                return {"tickets_id": int(parts[1])}
            return {"itemtype": "Ticket", "items_id": int(parts[1])}
        if len(parts) == 3 and parts[2] == "Document_Item":
            return {"itemtype": parts[0], "items_id": int(parts[1])}
        if len(parts) == 3 and parts[0] == "User":
            return {"users_id": int(parts[1])}
        return {}

    def _search(self, itemtype: str) -> None:
        body = self.line["response"]["body"]
        rows = body.get("data", []) if isinstance(body, dict) else []
        if not rows:
            # Found nothing (or a range beyond the total): everything that existed then, for GLPI not to find.
            for item_id in self.known.of(itemtype):
                self.seed(itemtype, item_id)
            if itemtype == "Ticket":
                for actor_id in self.known.of("Ticket_User"):
                    self.seed("Ticket_User", actor_id)
            return
        options = SEARCH_OPTIONS[itemtype]
        for n, row in enumerate(rows):
            shown = {options[int(k)]: self.known._plain(v) for k, v in row.items() if int(k) in options}
            fields = {k: v for k, v in shown.items() if not k.startswith("_") and k != "id"}
            item_id = row.get("2")
            if not isinstance(item_id, int):  # a view without the id column: found by login or name
                everyone = {2: "glpi", 3: "post-only", 4: "tech", 5: "normal", 6: "glpi-system"}
                everyone |= {i: o.get("name") for i, o in self.known.of(itemtype).items()}
                named = [i for i, name in everyone.items() if name == fields.get("name")]
                item_id = named[0] if named else 5000 + n
            self.seed(itemtype, item_id, self._state(fields))
            known_email = any(e["users_id"] == item_id for e in self.emu.items["UserEmail"].values())
            if itemtype == "User" and isinstance(shown.get("_emails"), str) and not known_email:
                self.emu.items["UserEmail"][6000 + n] = self.emu.new_row(
                    "UserEmail", {"users_id": item_id, "email": shown["_emails"], "is_default": 1}
                ) | {"id": 6000 + n}
            if itemtype == "Ticket":
                self._ticket_extras(item_id, row)
            if itemtype == "User" and isinstance(row.get("5"), str):
                emails = [e for e in self.emu.items["UserEmail"].values() if e["users_id"] == item_id]
                for email in emails:
                    if email["email"] != self.known._plain(row["5"]):
                        del self.emu.items["UserEmail"][email["id"]]  # GLPI showed the one it matched
        extra = body.get("totalcount", 0) - len(rows) if isinstance(body, dict) else 0
        if extra > 0:
            last = rows[-1].get("2", 5000 + len(rows))
            known = self.known.objects.get((itemtype, last), {})
            self.fillers(itemtype, extra, {k: known[k] for k in SEED_KEYS[itemtype] if k in known}, int(last))

    def _ticket_extras(self, ticket_id: int, row: dict[str, Any]) -> None:
        """What a ticket search row shows beside the ticket: requester (4), alternative email (34), followups (25)."""
        if isinstance(row.get("4"), str) and row["4"].isdigit():
            self.seed("User", int(row["4"]))
            actor = {"tickets_id": ticket_id, "users_id": int(row["4"]), "type": 1}
            self.emu.items["Ticket_User"][8000] = self.emu.new_row("Ticket_User", actor) | {"id": 8000}
        if isinstance(row.get("34"), str):
            actor = {
                "tickets_id": ticket_id,
                "users_id": 0,
                "type": 1,
                "alternative_email": self.known._plain(row["34"]),
            }
            self.emu.items["Ticket_User"][8001] = self.emu.new_row("Ticket_User", actor) | {"id": 8001}
        texts = row.get("25") if isinstance(row.get("25"), list) else [row.get("25")]
        for n, text in enumerate(t for t in texts if isinstance(t, str)):
            fields = {"itemtype": "Ticket", "items_id": ticket_id, "content": self.known._plain(text)}
            self.seed("ITILFollowup", 7000 + n, fields)

    def _post(self, itemtype: str, inputs: Any, answer: Any, missing_target: bool) -> None:
        for fields in inputs if isinstance(inputs, list) else [inputs]:
            if not isinstance(fields, dict):
                continue
            refs = {k: v for k, v in fields.items() if k in REFERENCES or k == "items_id"}
            link = fields.get("_link")
            if isinstance(link, dict):
                refs["tickets_id_2"] = link.get("tickets_id_2")
            requester = fields.get("_users_id_requester")
            if isinstance(requester, int) and requester > 0:
                refs["users_id"] = requester
            for column, value in refs.items():
                target = REFERENCES.get(column) or fields.get("itemtype")
                if not isinstance(value, int) or value <= 0 or not target:
                    continue
                if missing_target and self._refers_to_missing(column):
                    continue
                self.seed(str(target), value, self._state(None) if target == "Ticket" else None)
            if itemtype == "ITILSolution" and "solved" not in self.case and "closed" not in self.case:
                ticket = self.emu.items["Ticket"].get(fields.get("items_id"))  # type: ignore[arg-type]
                if ticket is not None and ticket["status"] in (5, 6):
                    ticket.update(status=2, solvedate=None, closedate=None)  # solved by this very request
            self._post_case(itemtype, fields)
        answers = answer if isinstance(answer, list) else [answer]
        ids = [a.get("id") for a in answers if isinstance(a, dict) and isinstance(a.get("id"), int)]
        if ids and self.line["response"]["status"] == 201:
            self.emu.next_id[itemtype] = min(ids)
            for new_id in ids:  # made by this very request: not there before it
                self.emu.items[itemtype].pop(new_id, None)

    def _refers_to_missing(self, column: str) -> bool:
        if "user id" in self.case or "requester id" in self.case:
            return column == "users_id"
        if "purged" in self.case and "_link" in self.case:
            return column == "tickets_id_2"
        return column in ("items_id", "tickets_id")

    def _post_case(self, itemtype: str, fields: dict[str, Any]) -> None:
        message = self.line["response"]["body"]
        duplicate = "duplicate" in self.case or (
            isinstance(message, list) and len(message) > 1 and message[1] == "Unable to add. The user already exists."
        )
        if not duplicate:
            return
        if itemtype == "User":
            self.seed("User", 9990, {"name": fields["name"], "realname": "Existing"})
        elif itemtype == "UserEmail":
            row = self.emu.new_row("UserEmail", {"users_id": fields["users_id"], "email": fields["email"]})
            self.emu.items["UserEmail"][8600] = row | {"id": 8600}
        elif itemtype == "Ticket_User":
            row = self.emu.new_row("Ticket_User", {**fields, "use_notification": fields.get("use_notification", 1)})
            self.emu.items["Ticket_User"][8500] = row | {"id": 8500}

    def _put_case(self, itemtype: str, item_id: int) -> None:
        row = self.emu.items.get(itemtype, {}).get(item_id)
        if row is None:
            return
        status = {"ticket closed": 6, "ticket solved": 5, "ticket already reopened": 2, "status 6 from new": 1}
        for case, value in status.items():
            if case in self.case:
                row["status"] = value
        if "ticket in trash" in self.case:
            row["is_deleted"] = 1


def _total(content_range: str | None) -> int | None:
    if not content_range or "/" not in content_range:
        return None
    return int(content_range.rsplit("/", 1)[1])


# ------------------------------------------------------------------------------------------------- comparing


def differences(expected: Any, actual: Any, where: str = "body", key: str = "") -> list[str]:
    """What ``actual`` gets wrong against the recorded ``expected``: keys, JSON types, values (dates by form)."""
    if isinstance(expected, str) and expected in ("<session_token>", "<redacted>"):
        return [] if isinstance(actual, str) else [f"{where}: {actual!r} is not a string"]
    if key in RANDOM_KEYS:
        return [] if type(actual) is type(expected) else [f"{where}: {type(actual).__name__}, not {type(expected)}"]
    if DATE_KEY.fullmatch(key) and not key.endswith("update"):
        if expected is None and actual is None:
            return []
        if key in STRICT_DATES and (expected is None) != (actual is None):
            return [f"{where}: {actual!r}, recorded {expected!r}"]
        if (isinstance(actual, str) and DATE.match(actual)) or actual is None:
            return []
        return [f"{where}: {actual!r} is not a date"]
    if key.endswith("_delay_stat") or key in ("waiting_duration", "sla_waiting_duration"):
        return [] if isinstance(actual, int) else [f"{where}: {actual!r} is not a number"]
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{where}: a {type(actual).__name__}, recorded an object"]
        found = []
        missing, extra = expected.keys() - actual.keys(), actual.keys() - expected.keys()
        if missing:
            found.append(f"{where}: missing keys {sorted(missing)}")
        if extra:
            found.append(f"{where}: extra keys {sorted(extra)}")
        for name in expected.keys() & actual.keys():
            found += differences(expected[name], actual[name], f"{where}.{name}", name)
        return found
    if isinstance(expected, list):
        if not isinstance(actual, list):
            return [f"{where}: a {type(actual).__name__}, recorded a list"]
        if len(expected) != len(actual):
            return [f"{where}: {len(actual)} elements, recorded {len(expected)}"]
        found = []
        for n, (e, a) in enumerate(zip(expected, actual, strict=True)):
            found += differences(e, a, f"{where}[{n}]", key)
        return found
    if type(expected) is not type(actual):
        return [f"{where}: {actual!r} ({type(actual).__name__}), recorded {expected!r} ({type(expected).__name__})"]
    if expected != actual:
        return [f"{where}: {actual!r}, recorded {expected!r}"]
    return []


def compare(line: dict[str, Any], status: int, headers: dict[str, str], body: Any) -> list[str]:
    recorded = line["response"]
    found = []
    if status != recorded["status"]:
        found.append(f"status {status}, recorded {recorded['status']} (body {str(body)[:300]})")
        return found
    for name in ("Content-Range", "Location", "Link", "Accept-Range"):
        if name in recorded["headers"] and headers.get(name) != recorded["headers"][name]:
            found.append(f"header {name}: {headers.get(name)!r}, recorded {recorded['headers'][name]!r}")
        if name != "Accept-Range" and name not in recorded["headers"] and name in headers:
            found.append(f"header {name}: {headers[name]!r}, recorded none")
    if ("Last-Modified" in recorded["headers"]) != ("Last-Modified" in headers):
        found.append("header Last-Modified: present in one answer only")
    expected_type = recorded["headers"].get("Content-Type", "").split(";")[0]
    if expected_type and headers.get("Content-Type", "").split(";")[0] != expected_type:
        found.append(f"Content-Type {headers.get('Content-Type')!r}, recorded {expected_type!r}")
    expected = recorded["body"]
    if line["request"]["path"] == "/":
        return found + ([] if isinstance(body, str) and body.startswith("# GLPI REST API") else ["not the API page"])
    for trimmed in line.get("trimmed") or []:
        cut = re.match(r"body: list cut to (\d+) of (\d+)", trimmed)
        if cut and isinstance(body, list):
            if len(body) != int(cut.group(2)):
                found.append(f"{len(body)} elements, recorded {cut.group(2)}")
            body = body[: int(cut.group(1))]
    database_error = isinstance(expected, list) and len(expected) == 2 and isinstance(expected[0], str)
    database_error = database_error and str(expected[1]).startswith("MySQL query error:")
    if database_error and isinstance(body, list) and len(body) == 2 and isinstance(body[1], str):
        sql = " in SQL query "
        expected, body = [expected[0], expected[1].split(sql)[0]], [body[0], body[1].split(sql)[0]]
    if line["request"]["path"] == "/Document" and isinstance(expected, dict) and "upload_result" in expected:
        expected = _mark_upload(expected)
        body = _mark_upload(body) if isinstance(body, dict) else body
    if isinstance(expected, dict) and isinstance(body, dict) and isinstance(body.get("data"), list):
        rows = expected.get("data") or []
        if rows and all("2" not in row for row in rows):  # ordered by ids the view does not show
            expected = {**expected, "data": sorted(rows, key=orjson.dumps)}
            body = {**body, "data": sorted(body["data"], key=orjson.dumps)}
    sort = dict(line["request"]["query"]).get("sort")
    rows_of = all(isinstance(row, dict) for row in [*expected, *body]) if isinstance(expected, list) else False
    if sort and rows_of and isinstance(body, list):
        body = _in_recorded_order(expected, body, sort)
    return found + differences(expected, body)


def _in_recorded_order(expected: list[Any], actual: list[Any], sort: str) -> list[Any]:
    """``actual`` with rows of equal sort values in the recorded order (GLPI leaves their order to the database)."""
    position = {row.get("id"): n for n, row in enumerate(expected) if isinstance(row, dict)}
    keys = [row.get(sort) if isinstance(row, dict) else None for row in actual]
    if keys != [row.get(sort) if isinstance(row, dict) else None for row in expected]:
        return actual  # the sort itself differs: reported as it is
    runs: dict[Any, list[Any]] = {}
    for row in actual:
        runs.setdefault(row.get(sort), []).append(row)
    ordered = []
    for value in dict.fromkeys(keys):
        ordered += sorted(runs[value], key=lambda row: position.get(row.get("id"), len(position)))
    return ordered


def _mark_upload(answer: dict[str, Any]) -> dict[str, Any]:
    """The upload description with its random parts under keys the comparison takes by form."""
    marked = dict(answer)
    files = [
        {(f"{k}@upload" if k in ("name", "id") else k): v for k, v in entry.items()}
        for entry in answer.get("upload_result", {}).get("filename", [])
    ]
    marked["upload_result"] = {"filename": files}
    return marked


# ------------------------------------------------------------------------------------------------- replaying


def _headers(emu: Emulator, line: dict[str, Any], session: str) -> dict[str, str]:
    recorded = line["request"]["headers"]
    flags = _flags(line["group"])
    who = "emulator-tech-token" if "as:tech" in flags else "emulator-user-token"
    headers: dict[str, str] = {}
    if "App-Token" in recorded:
        headers["App-Token"] = "a-wrong-app-token" if "app-token:wrong" in flags else "emulator-app-token"
    if "Authorization" in recorded:
        auth = recorded["Authorization"]
        if auth.startswith("Basic"):
            headers["Authorization"] = "Basic Z2xwaTp3cm9uZw=="
        else:
            headers["Authorization"] = "user_token " + ("a-wrong-user-token" if "wrong" in auth else who)
    if "Session-Token" in recorded:
        if "session-token:never-issued" in flags:
            headers["Session-Token"] = "q7e3lmv0d6a9ovl2c5rjk4hq3b"
        else:
            headers["Session-Token"] = session
    for name in ("Content-Type", "X-GLPI-Sanitized-Content", "Origin"):
        if name in recorded:
            headers[name] = recorded[name]
    return headers


async def _session(http: aiohttp.ClientSession, base: str, who: str, killed: bool) -> str:
    auth = {"App-Token": "emulator-app-token", "Authorization": f"user_token {who}"}
    async with http.get(f"{base}/initSession", headers=auth) as resp:
        token = str((await resp.json())["session_token"])
    if killed:
        async with http.get(f"{base}/killSession", headers={"App-Token": "emulator-app-token", "Session-Token": token}):
            pass
    return token


def _multipart(line: dict[str, Any]) -> aiohttp.FormData:
    """The recorded upload (its body is not in the transcript): a manifest and a 21-byte text file."""
    name = re.sub(r"^[0-9a-f]+\.\d+", "", line["response"]["body"]["upload_result"]["filename"][0]["name"])
    form = aiohttp.FormData()
    manifest = {"input": {"name": name, "_filename": [name]}}
    form.add_field("uploadManifest", orjson.dumps(manifest).decode(), content_type="application/json")
    form.add_field("filename[0]", b"probe file, 21 bytes.", filename=name, content_type="text/plain")
    return form


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.mark.parametrize(
    ("version", "index", "line"),
    LINES,
    ids=[f"{v}-{i}:{line['group'][:70]}" for v, i, line in LINES],
)
async def test_the_emulator_answers_as_glpi_answered(
    http: aiohttp.ClientSession, version: str, index: int, line: dict[str, Any]
) -> None:
    if (why := _kept(line["group"])) is not None:
        pytest.skip(f"kept difference: {why}")
    emu = Emulator(glpi11=version == "11", url_base_api=BASES[version], db_name=f"glpi{version}")
    World(emu, version, index, line).build()
    runner = web.AppRunner(build_app(emu))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        base = f"http://127.0.0.1:{port}/apirest.php"
        flags = _flags(line["group"])
        who = "emulator-tech-token" if "as:tech" in flags else "emulator-user-token"
        session = await _session(http, base, who, killed="session-token:killed" in flags)
        request = line["request"]
        query = [(k, v) for k, v in request["query"]]
        headers = _headers(emu, line, session)
        data: Any = None
        if "multipart" in flags:
            headers.pop("Content-Type", None)
            data = _multipart(line)
        elif request["body"] is not None:
            data = request["body"] if isinstance(request["body"], str) else orjson.dumps(request["body"])
        url = base + request["path"].rstrip("/") if request["path"] != "/" else base + "/"
        async with http.request(request["method"], url, params=query, headers=headers, data=data) as resp:
            raw = await resp.read()
            answer_headers = dict(resp.headers)
            status = resp.status
        body: Any = raw.decode()
        if "json" in answer_headers.get("Content-Type", ""):
            body = orjson.loads(raw)
        problems = compare(line, status, answer_headers, body)
        assert not problems, f"{line['group']} ({line.get('note')}):\n  " + "\n  ".join(problems[:15])
    finally:
        await runner.cleanup()
