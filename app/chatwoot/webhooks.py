"""Chatwoot account webhooks: signature checks and the envelope a delivery becomes. Pure: no I/O, no clock.

Chatwoot v4.11.2 and later sign every delivery (chatwoot-events.md §1)::

    X-Chatwoot-Signature: sha256=<hex HMAC-SHA256(secret, "{X-Chatwoot-Timestamp}.{raw body}")>
    X-Chatwoot-Timestamp: <unix seconds>
    X-Chatwoot-Delivery:  <uuid, kept on retries>

:func:`verify` checks one delivery against the hook's secrets (several during a rotation), in constant time, over
the raw bytes. :func:`envelope_for` turns an accepted body into our envelope, spliced around the raw body so the
payload reaches Kafka byte for byte as Chatwoot sent it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from app.events import CHATWOOT_EVENTS

#: Deliveries whose timestamp is further than this from our clock are refused (a replayed capture).
MAX_SKEW_SECONDS = 300
#: The header that carries Chatwoot's delivery id on the Kafka record (also the envelope's ``event_id``).
DELIVERY_HEADER = "chatwoot-delivery"
#: Events Chatwoot sends that the sync never uses: answered 200 and counted, never produced.
IGNORED_EVENTS = frozenset(
    {
        "conversation_typing_on",
        "conversation_typing_off",
        "webwidget_triggered",
        "inbox_created",
        "inbox_updated",
        "conversation_opened",
        "conversation_resolved",
    }
)

Refusal = Literal["missing_signature", "bad_signature", "missing_timestamp", "stale_timestamp"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """``refusal`` is None when the delivery is authentic; otherwise why not (a metric label and a 401 reason)."""

    refusal: Refusal | None
    detail: str = ""


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Chatwoot-Signature`` value Chatwoot sends for ``body`` at ``timestamp``."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify(secrets: Iterable[str], signature: str | None, timestamp: str | None, body: bytes, now: float) -> Verdict:
    """Whether ``body`` was signed at ``timestamp`` with one of ``secrets``, close enough to ``now``.

    The timestamp must be within :data:`MAX_SKEW_SECONDS`. Every secret is tried (no early exit on the first
    mismatch reveals which one is current).
    """
    if not signature:
        return Verdict("missing_signature", "no X-Chatwoot-Signature header")
    if not timestamp:
        return Verdict("missing_timestamp", "no X-Chatwoot-Timestamp header")
    try:
        sent = int(timestamp.strip())
    except ValueError:
        return Verdict("missing_timestamp", "X-Chatwoot-Timestamp is not unix seconds")
    if abs(now - sent) > MAX_SKEW_SECONDS:
        return Verdict("stale_timestamp", f"timestamp is {int(now - sent)} s off (at most {MAX_SKEW_SECONDS})")
    given = signature.strip().encode()
    matched = False
    for secret in secrets:
        matched |= hmac.compare_digest(sign(secret, timestamp.strip(), body).encode(), given)
    return Verdict(None) if matched else Verdict("bad_signature", "signature does not match the hook's secret")


def verify_glpi(
    secrets: Iterable[str], signature: str | None, timestamp: str | None, body: bytes, now: float, max_age: float
) -> Verdict:
    """A GLPI 11 webhook: ``X-GLPI-signature`` = hex HMAC-SHA256(secret, raw body + ``X-GLPI-timestamp``).

    GLPI stamps a webhook when it queues it and its cron sends (and retries) it later, so the age allowed is
    ``max_age`` (hours, not Chatwoot's minutes); a replay only triggers a poll, which is idempotent.
    """
    if not signature:
        return Verdict("missing_signature", "no X-GLPI-signature header")
    if not timestamp or not timestamp.strip().isdigit():
        return Verdict("missing_timestamp", "no X-GLPI-timestamp header in unix seconds")
    if abs(now - int(timestamp.strip())) > max_age:
        return Verdict("stale_timestamp", f"timestamp is {int(now - int(timestamp.strip()))} s off")
    given = signature.strip().lower().removeprefix("sha256=").encode()
    matched = False
    for secret in secrets:
        expected = hmac.new(secret.encode(), body + timestamp.strip().encode(), hashlib.sha256).hexdigest()
        matched |= hmac.compare_digest(expected.encode(), given)
    return Verdict(None) if matched else Verdict("bad_signature", "signature does not match the GLPI webhook secret")


def account_of(body: dict[str, Any]) -> int | None:
    """The account id a Chatwoot body carries (``account.id``, ``account_id``, ``messages[0].account_id``), or None.

    Conversation bodies carry none; the worker then takes the hook's account (chatwoot-events.md §6.2).
    """
    account = body.get("account")
    candidates = [account.get("id") if isinstance(account, dict) else None, body.get("account_id")]
    messages = body.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[0], dict):
        candidates.append(messages[0].get("account_id"))
    for value in candidates:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


def occurred_at(timestamp: str | None) -> str | None:
    """``X-Chatwoot-Timestamp`` as ISO-8601 UTC (None when absent or not a number)."""
    try:
        return datetime.fromtimestamp(int(str(timestamp).strip()), tz=UTC).isoformat() if timestamp else None
    except (ValueError, OverflowError, OSError):
        return None


def is_synced_event(name: str) -> bool:
    """Events the worker acts on; every other name (noise, a fork's additions) is answered 200 and counted."""
    return name in CHATWOOT_EVENTS


def envelope_for(hook_id: int, body: dict[str, Any], raw: bytes, delivery: str | None, timestamp: str | None) -> bytes:
    """The Kafka record value for an accepted delivery: our envelope with ``raw`` spliced in as ``payload``."""
    head: dict[str, Any] = {"event": body["event"], "hook_id": hook_id}
    account = account_of(body)
    if account is not None:
        head["account_id"] = account
    if delivery:
        head["event_id"] = delivery
    when = occurred_at(timestamp)
    if when:
        head["occurred_at"] = when
    return orjson.dumps(head)[:-1] + b',"payload":' + raw.strip() + b"}"
