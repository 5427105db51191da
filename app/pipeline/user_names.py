"""GLPI users' display names by id, read with ``GET /User/{id}`` and kept for an hour (a bounded cache).

Two-way signs messages with them, write-back and the dashboard show technicians and requesters by them. Rows are
always read with ids (an expanded row names its ticket instead of giving its id), so names are read here, apart.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from app.glpi import GlpiError, GlpiNotFoundError
from app.twoway.plan import display_name

if TYPE_CHECKING:
    from app.glpi.client import GlpiClient

log = logging.getLogger("cwglpi.worker")
#: Names are read once per this many seconds (a renamed technician shows up within the hour).
NAME_SECONDS = 3600.0
#: Names kept per worker (beyond it the oldest are read again when needed).
NAMES_KEPT = 2000


class UserNames:
    """Display names of GLPI users, per hook (each hook has its own GLPI)."""

    def __init__(self) -> None:
        #: (hook, GLPI user id) → (display name or None, read at).
        self._names: dict[tuple[int, int], tuple[str | None, float]] = {}

    async def names(self, client: GlpiClient, hook_id: int, user_ids: Iterable[object]) -> dict[int, str]:
        """The display names of ``user_ids`` (anything that is not a positive id is ignored).

        A user GLPI no longer has is left out (and not asked again within the hour); one that cannot be read now
        is left out and asked again next time: a missing name never holds anything back.
        """
        now = time.monotonic()
        found: dict[int, str] = {}
        for user_id in set(user_ids):
            if not isinstance(user_id, int) or isinstance(user_id, bool) or user_id <= 0:
                continue
            cached = self._names.get((hook_id, user_id))
            if cached is None or now - cached[1] > NAME_SECONDS:
                try:
                    name = display_name(await client.get_item("User", user_id))
                except GlpiNotFoundError:
                    name = None
                except GlpiError as exc:
                    log.warning("name of GLPI user %s not read: %s", user_id, exc, extra={"hook_id": hook_id})
                    continue
                if len(self._names) >= NAMES_KEPT:
                    self._names.pop(next(iter(self._names)))
                cached = self._names[(hook_id, user_id)] = (name, now)
            if cached[0]:
                found[user_id] = cached[0]
        return found
