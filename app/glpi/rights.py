"""GLPI profile rights the sync needs, by name (GLPI 10 bit values, ``inc/define.php`` and the item classes).

A profile's rights come from ``getActiveProfile``: one integer bitmask per right name (``ticket``, ``followup``,
``user``, ``contact_enterprise``). :func:`missing_rights` names what a profile lacks, never a raw bitmask.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

CREATE = 4  # CommonDBTM CREATE
UPDATE = 2  # CommonDBTM UPDATE
FOLLOWUP_ADD_ALL = 4096  # ITILFollowup::ADDALLTICKET


@dataclass(frozen=True)
class Right:
    """One right: ``field`` in the profile, the ``bit`` it needs, and a name people read."""

    name: str
    field: str
    bit: int


CREATE_TICKETS = Right("create tickets", "ticket", CREATE)
UPDATE_TICKETS = Right("update tickets", "ticket", UPDATE)
ADD_FOLLOWUPS = Right("add followups to any ticket", "followup", FOLLOWUP_ADD_ALL)
CREATE_USERS = Right("create users", "user", CREATE)
CREATE_CONTACTS = Right("create contacts", "contact_enterprise", CREATE)


def needed_rights(sync_type: str) -> tuple[Right, ...]:
    """The rights a hook of ``sync_type`` (``user`` or ``contact``) needs in its entity."""
    people = CREATE_USERS if sync_type == "user" else CREATE_CONTACTS
    return (people, CREATE_TICKETS, UPDATE_TICKETS, ADD_FOLLOWUPS)


def missing_rights(profile: Mapping[str, Any], rights: Iterable[Right]) -> list[Right]:
    """The rights of ``rights`` that ``profile`` (a ``getActiveProfile`` body) does not grant."""
    missing = []
    for right in rights:
        value = profile.get(right.field)
        if not (isinstance(value, int) and value & right.bit):
            missing.append(right)
    return missing
