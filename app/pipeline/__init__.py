"""One record to one outcome, in small rooms.

- :mod:`~app.pipeline.records`: the router (:class:`Pipeline`): parse, key, topic rules, admission, sync, drain;
- :mod:`~app.pipeline.store`: the tables and records (:class:`SyncStore`, :class:`DurableTable`);
- :mod:`~app.pipeline.parking`: hooks' parked queues;
- :mod:`~app.pipeline.dead_letters`: the dead-letter writer;
- :mod:`~app.pipeline.commands`: operator commands from the control topic; :mod:`~app.pipeline.resync` re-sync;
- :mod:`~app.pipeline.clients`: GLPI clients per hook, token references, probes;
- :mod:`~app.pipeline.outcomes`: the one log line and the counters of every outcome.
"""

from app.pipeline.records import Pipeline
from app.pipeline.source import SourceRecord
from app.pipeline.store import DurableTable, SyncStore

__all__ = ["DurableTable", "Pipeline", "SourceRecord", "SyncStore"]
