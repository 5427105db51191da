"""The shell around the core: run the core's commands on GLPI, with the retry policy, until the event is done.

``sync_event`` is the whole life of one event:

    loop: step = decide(view, event, ctx)           (pure)
          Finished?  -> return
          outcome = await executor.run(step, before_post)
                        before every create POST: view = with_intent(view, cmd, now); persist(durable)
          view = record(view, step, outcome, now); persist(buffered)

**Creates that GLPI finishes after we gave up.** GLPI (PHP) keeps working on a request whose client timed out, and a
proxy's 502/504 says nothing about what PHP did: the insert can land seconds later. So after a create whose outcome
is unknown, the executor never POSTs again until that attempt can no longer land (its start plus the late-commit
window): meanwhile it keeps looking for the object and adopts it when it appears. Each POST's start is made durable
first (the intent's ``attempt_at``), so a restarted worker waits too. A create made after such a wait is then checked:
exactly one object may carry its marker, and a late duplicate we made is removed (tickets and contacts to GLPI's
trash, followups purged).

**Failures leave as two shell-level exceptions**, classified here and nowhere else:

| failure                                                | raised as                                       |
|--------------------------------------------------------|-------------------------------------------------|
| GLPI refused the data (400 ``ERROR_GLPI_ADD``, ...)     | :class:`EventRejected`: the event is dead-lettered |
| auth, rights or a non-GLPI answer; the probe fails     | :class:`HookUnavailable`: the hook is paused     |
| the same, the probe passes (a closed ticket, an entity) | the ticket is replaced, else :class:`EventRejected` |
| transient past the budget; the probe fails             | :class:`HookUnavailable` ``transient``           |
| GLPI's own 5xx past the budget; the probe passes       | :class:`EventRejected` (GLPI cannot handle it)    |
| timeouts past the budget; the probe passes             | :class:`HookUnavailable`, ``request_specific``   |

The probe (:func:`probe_hook`) asks GLPI for something every event of the hook needs (the session, the profile's
rights, the hook's entity): never the error message, which is the same for one closed ticket and a whole profile.
"""

from app.execute.event import EventResult, Persist, Probe, describe_step, probe_hook, sync_event
from app.execute.executor import (
    CreateOutcomeUnknownError,
    EventRejected,
    GlpiExecutor,
    HookUnavailable,
    OperatorInterrupt,
    RetryPolicy,
)

__all__ = [
    "CreateOutcomeUnknownError",
    "EventRejected",
    "EventResult",
    "GlpiExecutor",
    "HookUnavailable",
    "OperatorInterrupt",
    "Persist",
    "Probe",
    "RetryPolicy",
    "describe_step",
    "probe_hook",
    "sync_event",
]
