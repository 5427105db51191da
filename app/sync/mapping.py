"""Pure translations from Chatwoot values to GLPI values: status, urgency, names, logins, HTML, dates.

Text rule (GLPI 10 stores ``&<>`` as ``&#38;&#60;&#62;`` and decodes them once when showing; 11 stores raw text):
- plain fields (ticket title, names, phone) are sent raw, so what the technician reads is what the customer wrote;
- rich-text fields (ticket and followup ``content``) are HTML: customer text is HTML-escaped inside ``<p>``.
"""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import phonenumbers

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

#: Chatwoot conversation status → GLPI ticket status (2 Processing, 4 Pending, 5 Solved).
TICKET_STATUS = {"open": 2, "pending": 4, "snoozed": 4, "resolved": 5}

#: Chatwoot priority → GLPI urgency (1 very low … 5 very high); no priority → 3 (medium).
URGENCY = {"low": 2, "medium": 3, "high": 4, "urgent": 5}

#: varchar columns hold 255 characters (GLPI 10 counts them after its HTML encoding, 11 raw).
GLPI_VARCHAR = 255

# Chatwoot names anonymous widget visitors like "quiet-river-512" until they identify themselves.
_GENERATED_VISITOR_NAME = re.compile(r"^[a-z]+-[a-z]+-\d+$")
_LOGIN_OK = re.compile(r"^[\w'@.\- ]+$")


def urgency_for(priority: str | None) -> int:
    return URGENCY.get(priority or "", 3)


def real_name(name: str | None) -> str | None:
    """The contact's name, or None when empty or a Chatwoot-generated visitor placeholder."""
    cleaned = " ".join((name or "").split())
    if not cleaned or _GENERATED_VISITOR_NAME.match(cleaned):
        return None
    return cleaned


def split_name(name: str | None) -> tuple[str, str]:
    """``(firstname, realname)``: split on the first space; a single word is the last name."""
    cleaned = real_name(name) or ""
    first, _, last = cleaned.partition(" ")
    return (first, last) if last else ("", first)


def normalise_phone(phone: str | None, region: str | None = None) -> str | None:
    """E.164 (``+351912345678``); None when there are no digits.

    ``+351 912 345 678``, ``00351912345678`` and (with the hook's default ``region`` ``PT``) ``912 345 678`` are
    one number. A number :mod:`phonenumbers` cannot read keeps its digits (with a leading ``+`` if it had one).
    """
    if not phone:
        return None
    text = phone.strip()
    if text.startswith("00"):
        text = "+" + text[2:]  # the international prefix of most countries, without needing a region
    try:
        number = phonenumbers.parse(text, region.upper() if region else None)
        if phonenumbers.is_possible_number(number):
            return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))
    except phonenumbers.NumberParseException:
        pass
    digits = re.sub(r"\D", "", phone)
    if not digits:
        return None
    return ("+" if text.startswith("+") else "") + digits


def normalise_email(email: str | None) -> str | None:
    cleaned = (email or "").strip().lower()
    return cleaned or None


def user_login(account_id: int, contact_id: int, email: str | None, phone: str | None) -> str:
    """Email, else the phone's digits (GLPI refuses a login starting with ``+``), else a stable synthetic login."""
    if email and _LOGIN_OK.match(email):
        return email[:GLPI_VARCHAR]
    if phone:
        return re.sub(r"\D", "", phone)
    return f"chatwoot-{account_id}-{contact_id}"


def encoded_length(text: str) -> int:
    """Length of ``text`` once GLPI 10 has encoded ``&``, ``<`` and ``>`` (each becomes 5 characters)."""
    return len(text) + 4 * sum(text.count(c) for c in "&<>")


def fit_varchar(text: str, limit: int = GLPI_VARCHAR, *, encoded: bool = True) -> str:
    """Shorten on a character boundary so the stored text fits ``limit`` (ellipsis when cut).

    ``encoded``: GLPI 10 counts the stored length after encoding ``&<>`` (5 characters each) and would cut in the
    middle of an entity; GLPI 11 stores and counts raw characters.
    """
    if (encoded_length(text) if encoded else len(text)) <= limit:
        return text
    out = []
    used = 1  # room for the ellipsis
    for char in text:
        cost = 5 if encoded and char in "&<>" else 1
        if used + cost > limit:
            break
        out.append(char)
        used += cost
    return "".join(out).rstrip() + "…"


#: The varchar(255) columns the product writes, by itemtype (logins are shortened where they are made).
VARCHAR_FIELDS: dict[str, tuple[str, ...]] = {
    "Ticket": ("name",),
    "User": ("firstname", "realname", "phone", "mobile"),
    "Contact": ("name", "firstname", "phone", "mobile", "email"),
}


def fit_fields(itemtype: str, fields: dict[str, Any], *, encoded: bool) -> dict[str, Any]:
    """``fields`` with every varchar value of ``itemtype`` fitted to what this GLPI stores (see :func:`fit_varchar`)."""
    names = VARCHAR_FIELDS.get(itemtype, ())
    if not any(isinstance(fields.get(name), str) for name in names):
        return fields
    return {
        key: fit_varchar(value, encoded=encoded) if key in names and isinstance(value, str) else value
        for key, value in fields.items()
    }


def first_line(text: str | None, limit: int = 80) -> str:
    """The first non-empty line of ``text``, cut at a word boundary to ``limit`` characters (ellipsis when cut)."""
    line = next((" ".join(raw.split()) for raw in (text or "").splitlines() if raw.strip()), "")
    if len(line) <= limit:
        return line
    cut = line[: limit - 1]
    if " " in cut and not line[limit - 1].isspace():
        cut = cut.rsplit(" ", 1)[0]  # never end in the middle of a word
    return cut.rstrip(" ,;:.-") + "…"


def html_paragraphs(text: str | None) -> str:
    """Escape customer text and keep its line breaks: blank lines split paragraphs, newlines become ``<br>``."""
    if not text or not text.strip():
        return ""
    blocks = re.split(r"\n\s*\n", text.replace("\r\n", "\n").strip())
    return "".join(
        "<p>" + "<br>".join(html.escape(line, quote=False) for line in block.split("\n")) + "</p>" for block in blocks
    )


#: Texts kept in the sync state for ``resync`` are cut to this many characters (the full text is in Chatwoot).
STORED_TEXT_LIMIT = 16_000
_OPEN_TAG_OR_ENTITY = re.compile(r"(<[^>]*|&[#\w]*)$")


def stored_input(fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` as kept in a table record: long ``content`` cut on a tag and entity boundary, with a note.

    Table records must stay small (a Kafka record holds 1 MB; customers paste far more), and ``resync`` only
    needs enough to rebuild a ticket or followup that was deleted in GLPI.
    """
    content = fields.get("content")
    if not isinstance(content, str) or len(content) <= STORED_TEXT_LIMIT:
        return fields
    cut = _OPEN_TAG_OR_ENTITY.sub("", content[:STORED_TEXT_LIMIT])
    note = f"<p><em>(cut at {STORED_TEXT_LIMIT} of {len(content)} characters; the full text is in Chatwoot)</em></p>"
    return {**fields, "content": cut + note}


def html_text(text: str) -> str:
    return html.escape(text, quote=False)


def html_link(url: str, label: str) -> str:
    return f'<a href="{html.escape(url, quote=True)}">{html.escape(label, quote=False)}</a>'


def glpi_datetime(moment: datetime, timezone: str = "UTC") -> str:
    """GLPI's ``Y-m-d H:i:s`` in the GLPI server's time zone (no zone suffix)."""
    zone = UTC if timezone == "UTC" else ZoneInfo(timezone)
    return moment.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")


def ticket_marker(account_id: int, conversation_id: int) -> str:
    """Deterministic, searchable, free of ``&<>`` so GLPI 10 stores it unchanged."""
    return f"[cw:{account_id}/{conversation_id}]"


def contact_marker(account_id: int, contact_id: int) -> str:
    """Written into a GLPI Contact's comment, so a lost create's contact is found exactly."""
    return f"[cw-contact:{account_id}/{contact_id}]"


def followup_marker(message_id: int, purpose: str = "message") -> str:
    return f"[cw-msg:{message_id}]" if purpose == "message" else f"[cw-del:{message_id}]"


def conversation_url(base_url: str | None, account_id: int, conversation_id: int) -> str | None:
    if not base_url:
        return None
    return f"{base_url.rstrip('/')}/app/accounts/{account_id}/conversations/{conversation_id}"
