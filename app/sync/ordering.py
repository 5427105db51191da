"""Which events of one hook must run in order, and which may run side by side (the lanes of ``app/lanes.py``).

Chatwoot's order matters **within a conversation** (followups in order, a status after the ticket exists) and
**within a contact** (one find-or-create of its GLPI user). So:

| event                                               | lane                           |
|-----------------------------------------------------|--------------------------------|
| ``conversation_*``, ``message_*``                   | ``("conversation", id)``       |
| ``contact_*``                                       | ``("contact", id)``            |
| ``glpi_*`` (two-way: a GLPI change for Chatwoot)    | ``("conversation", id)``       |
| ``hook_poll`` (two-way: look in GLPI for changes)   | ``("poll", 0)``                |
| an event name we never sync (skipped)               | ``("unsynced", 0)``            |
| ``hook_configured``, ``hook_removed``, other commands | none: a **barrier** of the hook |

Lanes of one hook run concurrently; a barrier waits for all of them and holds back what follows. A conversation's
events also touch its sender's contact record (the contact step of every event): the pipeline serialises those by
contact (:func:`contact_of`) so that two new conversations of a new contact still make one GLPI user.
"""

from __future__ import annotations

from app.events import (
    ContactEvent,
    ControlCommand,
    ConversationEvent,
    GlpiChange,
    KnownEvent,
    MessageEvent,
    UnknownEvent,
)
from app.sync.decide import record_ids

LaneKey = tuple[str, int]


def lane_of(event: KnownEvent | UnknownEvent) -> LaneKey | None:
    """The lane of ``event`` inside its hook, or None for a barrier (see the table above)."""
    match event:
        case ConversationEvent():
            return ("conversation", event.payload.id)
        case MessageEvent():
            return ("conversation", event.payload.conversation.id)
        case ContactEvent():
            return ("contact", event.payload.id)
        case GlpiChange():  # a technician's change goes back after the conversation's own events
            return ("conversation", event.payload.conversation_id)
        case ControlCommand(event="hook_poll"):  # a two-way poll reads GLPI beside the hook's lanes, not between them
            return ("poll", 0)
        case UnknownEvent():
            return ("unsynced", 0)
        case _:
            return None


def contact_of(event: KnownEvent | UnknownEvent) -> int | None:
    """The contact whose record ``event`` may read and write (its lock makes find-or-create happen once)."""
    return record_ids(event)[0]
