"""One record to one outcome, in small rooms; each takes the collaborators it uses, never the :class:`Pipeline`.

- :mod:`~app.pipeline.records`: the route (:class:`Pipeline`, which also builds the rooms): parse, key, topic
  rules, hook configuration, admission, then a room below;
- :mod:`~app.pipeline.syncing`: an admitted event's GLPI steps, and what their failures mean for the hook;
- :mod:`~app.pipeline.parking` and :mod:`~app.pipeline.draining`: hooks' parked queues, and syncing them in order;
- :mod:`~app.pipeline.commands`: operator commands from the control topic; :mod:`~app.pipeline.resync` re-sync;
- :mod:`~app.pipeline.twoway`: two-way sync's polls of GLPI and posts to Chatwoot;
- :mod:`~app.pipeline.write_back`: the ticket's number, status and technicians on its Chatwoot conversation;
  :mod:`~app.pipeline.chatwoot`: a hook's Chatwoot client, shared by both;
- :mod:`~app.pipeline.requests`: the drains and polls a worker queues for its hooks;
  :mod:`~app.pipeline.hook_status`: pauses and the hook gauges;
- :mod:`~app.pipeline.store`: the tables and records (:class:`SyncStore`, :class:`DurableTable`);
- :mod:`~app.pipeline.clients`: GLPI clients per hook, token references, probes;
- :mod:`~app.pipeline.dead_letters`: the dead-letter writer; :mod:`~app.pipeline.outcomes`: the one log line and
  the counters of every outcome, and the results of commands for ``--wait``.
"""

from app.pipeline.records import Pipeline
from app.pipeline.source import SourceRecord
from app.pipeline.store import DurableTable, SyncStore

__all__ = ["DurableTable", "Pipeline", "SourceRecord", "SyncStore"]
