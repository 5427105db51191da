"""Every ``cwglpi_`` metric, registered on a registry passed in (one per worker; tests make their own).

Labels are bounded: event types come from a closed list, GLPI operations are path templates (``Ticket/{id}``),
outcomes and reasons are short fixed strings. No label ever holds a contact, conversation or message id.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

from app.chatwoot.webhooks import IGNORED_EVENTS
from app.events import CHATWOOT_EVENTS, CONTROL_COMMANDS, CONTROL_EVENTS

# No ``*_created`` series: they double every counter's lines on /metrics and no alert or panel uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]

LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
KNOWN_EVENT_TYPES = frozenset((*CHATWOOT_EVENTS, *CONTROL_EVENTS, *CONTROL_COMMANDS))


def event_type_label(name: str | None) -> str:
    """Closed set: a known event name, ``unknown`` or ``invalid`` (unparseable envelope)."""
    if name is None:
        return "invalid"
    return name if name in KNOWN_EVENT_TYPES else "unknown"


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._hook_labels: set[str] = set()
        self.events = Counter(
            "cwglpi_events_processed",
            "Events finished, by event type and outcome (synced, skipped, parked, set_aside, dead_lettered).",
            ["event_type", "outcome"],
            registry=registry,
        )
        self.skips = Counter(
            "cwglpi_events_skipped",
            "Skipped events by reason class (unknown_hook, hook_disabled, feature_missing, noise, ...).",
            ["reason"],
            registry=registry,
        )
        self.sync_lag = Histogram(
            "cwglpi_sync_lag_seconds",
            "Age of an event (now minus its occurred_at, else its Kafka timestamp) when its GLPI effect is done.",
            ["event_type"],
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        self.glpi_requests = Counter(
            "cwglpi_glpi_requests",
            "GLPI HTTP requests by operation, method and HTTP status (0 = no response).",
            ["operation", "method", "status"],
            registry=registry,
        )
        self.glpi_duration = Histogram(
            "cwglpi_glpi_request_duration_seconds",
            "GLPI request duration by operation.",
            ["operation"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.glpi_errors = Counter(
            "cwglpi_glpi_errors", "GLPI error responses by GLPI error code.", ["code"], registry=registry
        )
        self.sessions_opened = Counter(
            "cwglpi_glpi_sessions_opened", "GLPI sessions opened (initSession).", registry=registry
        )
        self.retries = Counter(
            "cwglpi_retries",
            "GLPI calls retried after a transient error, by error code.",
            ["code"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "cwglpi_dlq_events",
            "Events sent to the dead-letter topic, by error class.",
            ["error_class"],
            registry=registry,
        )
        self.hooks_paused = Gauge(
            "cwglpi_hooks_paused",
            "Hooks whose events are parked, by pause kind (transient, auth, operator).",
            ["kind"],
            registry=registry,
        )
        self.parked = Counter(
            "cwglpi_events_parked",
            "Events parked because their hook was paused, by pause kind.",
            ["kind"],
            registry=registry,
        )
        self.parked_pending = Gauge(
            "cwglpi_parked_events", "Events waiting in parked queues of this worker's hooks.", registry=registry
        )
        self.consumer_lag = Gauge(
            "cwglpi_consumer_lag_messages",
            "High-water mark minus committed offset, per input partition.",
            ["topic", "partition"],
            registry=registry,
        )
        self.oldest_pending_age = Gauge(
            "cwglpi_oldest_pending_event_age_seconds",
            "Age of the oldest event not yet finished, per partition (grows while the worker is stuck; 0 when idle).",
            ["topic", "partition"],
            registry=registry,
        )
        self.inflight = Gauge(
            "cwglpi_inflight_events", "Events dispatched to lanes and not yet finished.", registry=registry
        )
        self.hook_last_synced = Gauge(
            "cwglpi_hook_last_synced_timestamp_seconds",
            "Unix time of the last event synced to GLPI, per hook (at most GLPI_SYNC_PER_HOOK_METRICS_LIMIT hooks).",
            ["hook_id"],
            registry=registry,
        )
        self.commit_stalled = Gauge(
            "cwglpi_commit_stalled_seconds",
            "Longest time a partition with lag has gone without its committed offset moving.",
            registry=registry,
        )
        self.stuck_work = Gauge(
            "cwglpi_stuck_work_seconds",
            "Seconds a partition's records past its committed offset have made no progress, once past "
            "GLPI_SYNC_STUCK_SECONDS (absent otherwise).",
            ["topic", "partition"],
            registry=registry,
        )
        self.stuck_recoveries = Counter(
            "cwglpi_stuck_work_recoveries",
            "Stuck partitions read again from their committed offset (nothing of them was held by the worker).",
            registry=registry,
        )
        self.misrouted = Counter(
            "cwglpi_records_misrouted",
            "Records dead-lettered because their key is not their hook id (null_key, wrong_key).",
            ["reason"],
            registry=registry,
        )
        self.files = Counter(
            "cwglpi_files",
            "Files moved or kept as links, by direction (to_glpi, to_chatwoot) and outcome (moved, adopted, or "
            "why one stayed a link: too_large, unreachable, not_allowed, refused, channel).",
            ["direction", "outcome"],
            registry=registry,
        )
        self.file_bytes = Counter(
            "cwglpi_file_bytes", "Bytes of files moved, by direction.", ["direction"], registry=registry
        )
        self.twoway = Counter(
            "cwglpi_twoway_applied",
            "GLPI changes applied to Chatwoot by the two-way sync (glpi_followup_added, glpi_solution_added, ...).",
            ["kind"],
            registry=registry,
        )
        self.twoway_lag = Histogram(
            "cwglpi_twoway_lag_seconds",
            "Two-way: from the GLPI followup's or solution's date to the message posted in Chatwoot.",
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        self.redeliveries = Counter(
            "cwglpi_redeliveries_skipped",
            "Events skipped because their event_id was handled already for the hook (a retried webhook, a re-run).",
            registry=registry,
        )
        self.duplicates_removed = Counter(
            "cwglpi_duplicates_removed",
            "Objects GLPI committed late after an uncertain create, removed because the retry made them again.",
            ["itemtype"],
            registry=registry,
        )
        self.state_rebuilds = Counter(
            "cwglpi_state_rebuilds",
            "Table partitions rebuilt from their changelog because the local state was ahead of it.",
            ["table"],
            registry=registry,
        )
        self.build = Gauge("cwglpi_build_info", "Build information.", ["version"], registry=registry)
        self.build.labels("0.1.0").set(1)
        self.last_success = Gauge(
            "cwglpi_last_synced_event_timestamp_seconds",
            "Unix time of the last event synced to GLPI.",
            registry=registry,
        )

    def mark_hook_synced(self, hook_id: int, now: float, limit: int) -> None:
        """Per-hook freshness, bounded: hooks beyond ``limit`` (0 = off) are not labelled."""
        label = str(hook_id)
        if limit <= 0:
            return
        known = self._hook_labels
        if label not in known:
            if len(known) >= limit:
                return
            known.add(label)
        self.hook_last_synced.labels(label).set(now)

    def observe_glpi_request(self, op: str, method: str, status: int, seconds: float, code: str | None) -> None:
        self.glpi_requests.labels(op, method, str(status)).inc()
        self.glpi_duration.labels(op).observe(seconds)
        if code:
            self.glpi_errors.labels(code[:60]).inc()


def skip_reason_class(reason: str) -> str:
    """Bounded label for a skip reason (the full reason goes to the log line)."""
    for prefix, label in (
        ("unknown event", "unknown_event"),
        ("unknown hook", "unknown_hook"),
        ("hook disabled", "hook_disabled"),
        ("account lacks", "feature_missing"),
        ("event account", "account_mismatch"),
        ("noise", "noise"),
        ("contact not identifiable", "not_identifiable"),
    ):
        if reason.startswith(prefix):
            return label
    return "already_synced"


#: Request latency of the ingress: a delivery is answered after the broker acknowledged it (acks=all).
INGRESS_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def ingress_event_label(name: str) -> str:
    """Closed set for ignored events: Chatwoot's known noise by name, anything else ``other``."""
    return name if name in IGNORED_EVENTS else "other"


class IngressMetrics:
    """The ``cwglpi_ingress_`` metrics of ``glpi-sync ingress`` (its own process, its own registry)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "cwglpi_ingress_requests",
            "Webhook deliveries answered, by HTTP status (200 produced or ignored, 401, 404, 413, 400, 503).",
            ["status"],
            registry=registry,
        )
        self.latency = Histogram(
            "cwglpi_ingress_request_seconds",
            "Time from a delivery's arrival to its answer (includes the broker's acknowledgement).",
            buckets=INGRESS_BUCKETS,
            registry=registry,
        )
        self.produce_errors = Counter(
            "cwglpi_ingress_produce_errors",
            "Deliveries answered 503 because Kafka did not acknowledge them in time (timeout, broker error).",
            ["reason"],
            registry=registry,
        )
        self.signature_failures = Counter(
            "cwglpi_ingress_signature_failures",
            "Deliveries refused with 401 (missing_signature, bad_signature, stale_timestamp, bad_url_token, ...).",
            ["reason"],
            registry=registry,
        )
        self.ignored = Counter(
            "cwglpi_ingress_ignored_events",
            "Deliveries answered 200 and not produced: events the sync never uses (typing, widget, inbox).",
            ["event"],
            registry=registry,
        )
        self.producer_up = Gauge(
            "cwglpi_ingress_producer_up",
            "1 when the Kafka producer is connected and the input topic exists (the ingress is ready).",
            registry=registry,
        )
