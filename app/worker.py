"""Composition root: the Faust app, its topics, tables and lanes, the HTTP pages, the resume timer.

Nothing here decides sync rules (``app/sync``) or handles a record (``app/pipeline.py``); it wires them:

- one agent reads the input topic and the co-partitioned control topic with manual acks and hands each record to a
  per-hook lane (``app/lanes.py``), so hooks run concurrently and each hook in order;
- lanes are stopped on partition revoke and before shutdown (faust re-delivers what was not finished);
- a timer sends ``hook_retry`` commands for hooks paused by a transient GLPI outage (and nudges parked queues
  that no drain is working on).

Before any of it, :func:`app.topology.prepare_topics` reads the cluster: the input topic's partition count is the
deployment's, and topics that disagree with it stop the worker with one line per topic and the fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import faust
from faust.types import TP, EventT, StreamT
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from app import logs
from app.dashboard.view import AgentViews
from app.faust_consumer import read_every_record
from app.kafka_io import BrokerUnreachableError, KafkaConnection
from app.lanes import LaneDispatcher, Placement
from app.metrics import Metrics
from app.ops import FORWARDED, Operations, admin_gate
from app.pipeline import DurableTable, Pipeline
from app.pipeline.dead_letters import MAX_REQUEST_BYTES
from app.progress import ProgressMonitor
from app.settings import WorkerSettings
from app.topology import TopologyError, prepare_topics

log = logging.getLogger("cwglpi.worker")


#: Bytes of one partition's records that go to the broker in one produce request.
PRODUCER_BATCH_BYTES = 256 * 1024
#: Table writes that may wait for faust's producer before faust holds back the agent's records.
PRODUCER_BUFFER_MESSAGES = 5000


class SyncApp(faust.App):
    """The Faust app; stops the lanes before faust stops the consumer, closes GLPI sessions after."""

    #: faust's own lines go out under faust's logger names, not under the module this class is defined in.
    logger = logging.getLogger("faust.app")
    pipeline: Pipeline
    lanes: LaneDispatcher
    #: Topics whose every fetched record faust hands to the lanes (:func:`app.faust_consumer.read_every_record`).
    lane_topics: frozenset[str] = frozenset()

    def _new_consumer(self) -> Any:
        consumer = super()._new_consumer()
        read_every_record(consumer, self.lane_topics)
        return consumer

    async def maybe_start_producer(self) -> Any:
        """The started producer, without a trip through the event loop (faust's version always makes one).

        Every table write's changelog record passes here when faust's producer buffer sends it: faust's version
        yields to the loop each time, so the buffer drained one record per loop iteration and, under load, fell
        behind the writes; faust then held back the agent's records and the sync lag grew by seconds.
        """
        producer = self.producer
        if not self.in_transaction and producer.started:
            return producer
        return await super().maybe_start_producer()

    async def on_stop(self) -> None:
        lanes = getattr(self, "lanes", None)
        if lanes is not None:
            await lanes.stop()
        await super().on_stop()
        pipeline = getattr(self, "pipeline", None)
        if pipeline is not None:
            await pipeline.aclose()


def _contained(timer: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    """A timer whose failure is logged and retried at its next tick: faust would crash the whole worker."""

    @functools.wraps(timer)
    async def run() -> None:
        try:
            await timer()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("timer %s failed (it runs again at its next tick)", timer.__name__)

    return run


def build_app(settings: WorkerSettings, registry: CollectorRegistry | None = None) -> SyncApp:
    """Wire the app: topics, tables, agent, lanes, timer, HTTP pages. No I/O happens until the worker starts."""
    registry = registry or CollectorRegistry()
    metrics = Metrics(registry)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = SyncApp(
        settings.app_id,
        broker=settings.broker_url,
        broker_credentials=KafkaConnection.from_settings(settings).faust_credentials(),
        store=settings.store,
        datadir=str(settings.data_dir),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        table_standby_replicas=0,
        web_enabled=True,
        web_port=settings.http_port,
        web_bind=settings.http_host,
        # Only our pages: faust's router, graph, stats and performance pages would show internals to anyone.
        web_tables_enabled=False,
        web_router_enabled=False,
        web_graph_enabled=False,
        web_stats_enabled=False,
        web_metrics_enabled=False,
        web_in_thread=False,
        canonical_url=settings.advertised_url or f"http://{socket.gethostname()}:{settings.http_port}",
        broker_commit_interval=1.0,
        broker_commit_every=10_000,
        stream_buffer_maxsize=256,
        # Lanes hold unfinished events; waiting for them on revoke would stall rebalances (faust-per-hook-lanes.md).
        stream_wait_empty=False,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        # Room for a dead letter of the biggest record the input accepts (app/pipeline/dead_letters.py).
        producer_max_request_size=MAX_REQUEST_BYTES,
        # No on_leader timers: no assignor leader topic to create or to list in topics.yaml.
        topic_disable_leader=True,
        # Tansu: end_offsets() is wrong after multi-record batches, so table recovery would lose records.
        # A batch holds the records of one partition sent in one request: aiokafka waits for each request to a
        # broker before the next, so 16 kB batches capped the changelog at a few MB/s (conversations carry their
        # trace). Bigger batches carry more per round trip; a lone record still goes at once (no linger).
        producer_max_batch_size=1 if settings.embedded_broker else PRODUCER_BATCH_BYTES,
        # Tansu makes a group join wait half the session timeout.
        broker_session_timeout=6.0 if settings.embedded_broker else settings.session_timeout,
        consumer_group_instance_id=settings.group_instance_id or None,
        broker_heartbeat_interval=1.0 if settings.embedded_broker else min(3.0, settings.session_timeout / 6),
        table_cleanup_interval=3600,
        topic_allow_declare=settings.create_topics,
        Table=DurableTable,
    )
    # faust stops handing records to the agent while more than this many table writes wait for the producer
    # (100 by default): a burst of changelog records then paused fetching for a second or more, and the sync lag
    # of a steady stream grew by that much each time. The writes are small; a deeper buffer absorbs the bursts.
    app.producer.buffer.max_messages = PRODUCER_BUFFER_MESSAGES
    pipeline = Pipeline(app, settings, metrics)

    def place(event: EventT[Any]) -> Placement:
        """A hook's events by conversation or contact (``app/sync/ordering.py``); the record key is the hook."""
        prepared = pipeline.prepare(event)
        return Placement(prepared.record.key or b"", prepared.lane, prepared)

    lanes = LaneDispatcher(
        app,
        pipeline.handle,
        place=place,
        max_inflight=settings.max_inflight,
        per_partition=settings.max_inflight_per_partition,
        group_concurrency=settings.hook_event_concurrency,
    )
    app.pipeline = pipeline
    app.lanes = lanes
    app.lane_topics = frozenset({settings.topic, settings.control_topic})
    ops = Operations(app, settings, pipeline)
    monitor = ProgressMonitor(app, settings, lanes, metrics)
    source = app.topic(
        settings.topic, settings.control_topic, key_serializer="raw", value_serializer="raw", internal=False
    )

    @app.agent(source, name="sync")
    async def sync_agent(stream: StreamT[Any]) -> None:
        async for event in cast(Any, stream).noack().events():
            await lanes.dispatch(event)

    async def on_revoked(sender: Any, revoked: Any, **kwargs: Any) -> None:
        # Eager rebalance: faust re-seeks every partition afterwards, so every lane stops (not only revoked ones).
        await lanes.stop()
        pipeline.lanes_stopped()

    app.on_partitions_revoked.connect(cast(Any, on_revoked))

    async def on_assigned(sender: Any, assigned: Any, **kwargs: Any) -> None:
        lanes.assigned({TP(tp.topic, tp.partition) for tp in assigned})

    app.on_partitions_assigned.connect(cast(Any, on_assigned))

    async def resume_paused_hooks() -> None:
        if app.rebalancing:
            return
        pipeline.status.refresh_gauges()
        for hook in pipeline.requests.hooks_to_retry():
            await pipeline.requests.request_drain(hook, "timer")

    cast(Any, app).timer(interval=settings.resume_interval)(_contained(resume_paused_hooks))

    async def sample_progress() -> None:
        lanes.resume_drained()
        monitor.sample()
        await monitor.watch_stuck_work()
        if monitor.ready() and not monitor.announced:
            monitor.announced = True
            assigned = sorted(tp.partition for tp in app.consumer.assignment() if tp.topic == settings.topic)
            log.info(
                "ready: %d partitions (this worker holds %s), topics %s, %s and %s, HTTP on %s:%d",
                settings.partitions,
                ", ".join(map(str, assigned)) or "none yet",
                settings.topic,
                settings.control_topic,
                settings.dlq_topic,
                settings.http_host,
                settings.http_port,
            )

    cast(Any, app).timer(interval=5.0)(_contained(sample_progress))

    async def poll_two_way_hooks() -> None:
        if app.rebalancing:
            return
        for hook in pipeline.requests.hooks_to_poll():
            await pipeline.requests.request_poll(hook)

    cast(Any, app).timer(interval=settings.two_way_poll_seconds)(_contained(poll_two_way_hooks))

    async def forget_old_deliveries() -> None:
        if settings.redelivery_window_hours > 0 and not app.rebalancing:
            pipeline.store.forget_deliveries(time.time() - settings.redelivery_window_hours * 3600)

    cast(Any, app).timer(interval=600.0)(_contained(forget_old_deliveries))

    admin_token = settings.admin_secret()

    def page(path: str) -> Callable[[Any], Any]:
        decorator: Callable[[Any], Any] = cast(Any, app).page(path)
        return decorator

    def reply(view: Any, status: int, body: Any) -> Any:
        return view.json(body, status=status)

    def refused(view: Any, request: Any) -> Any | None:
        """The answer for a request without the admin token (None when it carries it)."""
        denied = admin_gate(request.headers.get("Authorization"), admin_token)
        return reply(view, *denied) if denied else None

    async def routed(view: Any, request: Any, hook_id: str, local: Callable[[int], Any]) -> Any:
        hid = int(hook_id)
        forwarded = FORWARDED in request.headers
        return reply(view, *await ops.routed(hid, request.path, lambda: local(hid), forwarded))

    @page("/state/hooks")
    async def hooks_page(view: Any, request: Any) -> Any:
        if (denied := refused(view, request)) is not None:
            return denied
        if request.query.get("all"):
            return reply(view, 200, {"hooks": await ops.all_hooks(), "workers": ops.worker_urls()})
        return reply(view, *await ops.local_hooks())

    @page("/state/workers")
    async def workers_page(view: Any, request: Any) -> Any:
        if (denied := refused(view, request)) is not None:
            return denied
        body = {"self": ops.self_url, "workers": ops.worker_urls(), "partitions": ops.distribution()}
        stuck = [partition.as_json() for partition in monitor.stuck]
        return reply(view, 200, {**body, "lanes": lanes.describe(), "stuck": stuck})

    @page("/state/hook/{hook_id}")
    async def hook_page(view: Any, request: Any, hook_id: str) -> Any:
        return refused(view, request) or await routed(view, request, hook_id, ops.hook_state)

    @page("/state/hook/{hook_id}/test")
    async def hook_test_page(view: Any, request: Any, hook_id: str) -> Any:
        return refused(view, request) or await routed(view, request, hook_id, ops.glpi_check)

    @page("/state/hook/{hook_id}/command/{event_id}")
    async def command_page(view: Any, request: Any, hook_id: str, event_id: str) -> Any:
        return refused(view, request) or await routed(
            view, request, hook_id, lambda hid: ops.command_result(hid, event_id)
        )

    @page("/state/hook/{hook_id}/contact/{contact_id}")
    async def contact_page(view: Any, request: Any, hook_id: str, contact_id: str) -> Any:
        return refused(view, request) or await routed(
            view, request, hook_id, lambda hid: ops.contact_state(hid, int(contact_id))
        )

    @page("/state/hook/{hook_id}/conversation/{conversation_id}")
    async def conversation_page(view: Any, request: Any, hook_id: str, conversation_id: str) -> Any:
        return refused(view, request) or await routed(
            view, request, hook_id, lambda hid: ops.conversation_state(hid, int(conversation_id))
        )

    agent_views = AgentViews(pipeline.store, pipeline.clients, pipeline.user_names)
    dashboard_token = settings.dashboard_secret()

    def refused_to_dashboard(view: Any, request: Any) -> Any | None:
        """Like :func:`refused`, but the dashboard token opens it too."""
        if dashboard_token and admin_gate(request.headers.get("Authorization"), dashboard_token) is None:
            return None
        return refused(view, request)

    @page("/state/hook/{hook_id}/dashboard")
    async def dashboard_page(view: Any, request: Any, hook_id: str) -> Any:
        """What the ingress needs to serve the hook's dashboard app: the Chatwoot that may frame it."""
        return refused_to_dashboard(view, request) or await routed(view, request, hook_id, agent_views.frame)

    @page("/state/hook/{hook_id}/conversation/{conversation_id}/agent")
    async def agent_page(view: Any, request: Any, hook_id: str, conversation_id: str) -> Any:
        """What the dashboard app shows of a conversation."""
        return refused_to_dashboard(view, request) or await routed(
            view, request, hook_id, lambda hid: agent_views.view(hid, int(conversation_id))
        )

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        return web.bytes(generate_latest(registry), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/health/live")
    async def live_page(web: Any, request: Any) -> Any:
        ok, details = monitor.live()
        return web.json({"live": ok, **details}, status=200 if ok else 503)

    @app.page("/health/ready")
    async def ready_page(web: Any, request: Any) -> Any:
        ready = monitor.ready()
        return web.json({"ready": ready}, status=200 if ready else 503)

    return app


#: Exit status of a worker that refused its configuration or the cluster's topic layout, or cannot reach Kafka.
EXIT_CONFIG, EXIT_UNREACHABLE = 2, 3


def _refuse(lines: list[str], status: int) -> int:
    for line in lines:
        sys.stderr.write(f"glpi-sync worker: {line}\n")
    log.critical("refusing to start: %s", "; ".join(lines))
    return status


def _stop_overdue(seconds: float) -> None:
    """A clean stop took longer than ``GLPI_SYNC_STOP_TIMEOUT``: exit now (as safe as a kill -9, by design)."""
    log.warning(
        "stopping took longer than %.0f s (a rebalance or a broker that does not answer): exiting now; "
        "unfinished events were not acknowledged and are read again by the next owner",
        seconds,
    )
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)


def run_worker(settings: WorkerSettings) -> int:
    """Check the configuration and the topics, then run the worker in the foreground until SIGTERM/SIGINT."""
    logs.configure(settings.log_level, settings.log_format)
    try:
        from app.secrets import token_vault

        token_vault(settings)
        settings.admin_secret()
        KafkaConnection.from_settings(settings)
    except (OSError, ValueError) as exc:
        return _refuse([str(exc)], EXIT_CONFIG)
    # The topics exist before faust's consumer reads metadata: a changelog created during start-up can be missing
    # from the consumer's metadata and make the first table write fail (PartitionsMismatch).
    try:
        plan = asyncio.run(prepare_topics(settings))
    except TopologyError as exc:
        return _refuse(exc.lines, EXIT_CONFIG)
    except BrokerUnreachableError as exc:
        return _refuse([str(exc)], EXIT_UNREACHABLE)
    if plan.partitions != settings.partitions:
        log.info(
            "the input topic %s has %d partitions: using that (GLPI_SYNC_PARTITIONS=%d only sizes a new topic)",
            settings.topic,
            plan.partitions,
            settings.partitions,
        )
    settings = settings.model_copy(update={"partitions": plan.partitions})
    app = build_app(settings)

    class _Worker(faust.Worker):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.spinner = None  # its cursor escape codes would end up in the logs

        def _setup_logging(self) -> None:
            logs.configure(settings.log_level, settings.log_format)

        def _schedule_shutdown(self, signal: Any) -> None:
            if not self._signal_stop_time:
                watchdog = threading.Timer(settings.stop_timeout, _stop_overdue, args=(settings.stop_timeout,))
                watchdog.daemon = True
                watchdog.start()
            super()._schedule_shutdown(signal)

    worker = _Worker(app, loglevel=settings.log_level.lower(), quiet=True)
    worker.execute_from_commandline()  # runs until a signal, then exits the process (typed NoReturn)
    raise AssertionError("unreachable")  # pragma: no cover
