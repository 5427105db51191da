"""The ingress's HTTP service: ``POST /webhooks/chatwoot/{hook_id}`` → a record on the input topic, keyed by hook.

Answers, in the order they are checked:

- **404** the hook has no secret and no URL token here (or the URL token is wrong: nothing tells a prober which);
- **413** the body is over ``GLPI_SYNC_INGRESS_MAX_BODY_BYTES``;
- **401** a signature that is missing or wrong, or a timestamp more than 5 minutes off;
- **400** the body is not a JSON object with an ``event`` name;
- **200** ``{"ignored": ...}`` for events the sync never uses (counted, not produced);
- **200** ``{"accepted": ...}`` only after the broker acknowledged the record (acks=all, idempotent producer);
- **503** with ``Retry-After`` when Kafka is unreachable or slower than the deadline, so Chatwoot retries (with the
  same delivery id, which the worker recognises).

``POST /webhooks/glpi/{hook_id}`` takes GLPI 11's signed webhooks for two-way hooks and turns each into a poll of
that hook (a ``hook_poll`` on the control topic), so technicians' answers go back at once instead of at the next
timed poll.

``GET /dashboard/{hook_id}`` serves the Chatwoot dashboard app behind the hook's key (:mod:`app.ingress.dashboard`).

Stateless: replicas share nothing. On SIGTERM the listener closes, requests in flight finish, the producer
flushes, then the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import socket
import time
from typing import Any

import orjson
from aiohttp import web
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from app.chatwoot.webhooks import DELIVERY_HEADER, envelope_for, is_synced_event, verify, verify_glpi
from app.ingress.dashboard import Dashboard
from app.ingress.secrets import WebhookSecrets
from app.kafka_io import KafkaConnection
from app.metrics import IngressMetrics, ingress_event_label
from app.settings import IngressSettings

log = logging.getLogger("cwglpi.ingress")
#: How often the producer's connection and the input topic are checked for ``/health/ready``.
READY_CHECK_SECONDS = 5.0
#: A refusal of one kind for one hook is logged at most this often (a 401 storm must not flood the logs).
LOG_EVERY_SECONDS = 60.0


class Ingress:
    """One ingress process: the producer, the secrets, the metrics and the request handlers."""

    def __init__(
        self, settings: IngressSettings, secrets: WebhookSecrets, registry: CollectorRegistry | None = None
    ) -> None:
        self.settings = settings
        self.secrets = secrets
        self.registry = registry or CollectorRegistry()
        self.metrics = IngressMetrics(self.registry)
        self.connection = KafkaConnection.from_settings(settings)
        self.producer: AIOKafkaProducer | None = None
        self.ready_reason = "starting: not connected to Kafka yet"
        self.stopping = False
        self._tasks: list[asyncio.Task[Any]] = []
        self._logged: dict[tuple[int, str], float] = {}

    # ------------------------------------------------------------------------------------------- lifecycle

    def application(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.ingress_max_body_bytes + 1)
        app.router.add_post("/webhooks/chatwoot/{hook_id}", self.chatwoot)
        app.router.add_post("/webhooks/chatwoot/{hook_id}/{url_token}", self.chatwoot)
        app.router.add_post("/webhooks/glpi/{hook_id}", self.glpi)
        app.router.add_get("/health/live", self.live)
        app.router.add_get("/health/ready", self.ready)
        app.router.add_get("/metrics", self.metrics_page)
        Dashboard(self.settings, self.secrets).add_routes(app)
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_startup(self, _: web.Application) -> None:
        self._tasks.append(asyncio.create_task(self._keep_connected()))

    async def _on_shutdown(self, _: web.Application) -> None:
        self.stopping = True
        self.ready_reason = "shutting down"
        self.metrics.producer_up.set(0)

    async def _on_cleanup(self, _: web.Application) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.producer.stop(), 30)  # flushes what is still buffered
        log.info("ingress stopped")

    def _new_producer(self) -> AIOKafkaProducer:
        # The demo's embedded broker (Tansu) takes one record per batch and no idempotent producer.
        embedded = self.settings.embedded_broker
        return AIOKafkaProducer(
            **self.connection.kwargs(),
            acks="all",
            enable_idempotence=not embedded,
            linger_ms=0 if embedded else 2,
            max_batch_size=1024 if embedded else 16384,
            max_request_size=1_048_576,
            request_timeout_ms=int(self.settings.ingress_produce_timeout * 1000),
        )

    async def _keep_connected(self) -> None:
        """Start the producer (retrying while Kafka is down) and keep ``ready_reason`` current."""
        while not self.stopping:
            try:
                if self.producer is None:
                    producer = self._new_producer()
                    try:
                        await asyncio.wait_for(producer.start(), 30)
                    except BaseException:
                        with contextlib.suppress(Exception):
                            await producer.stop()
                        raise
                    self.producer = producer
                metadata = await asyncio.wait_for(self.producer.client.fetch_all_metadata(), 10)
                if self.settings.topic not in metadata.topics():
                    self._not_ready(
                        f"input topic {self.settings.topic} does not exist: start a worker first (it creates it)"
                    )
                elif self.ready_reason:
                    self.ready_reason = ""
                    self.metrics.producer_up.set(1)
                    log.info("ready: producing to %s at %s", self.settings.topic, self.connection.bootstrap)
            except asyncio.CancelledError:
                raise
            except (KafkaError, OSError, TimeoutError) as exc:
                self._not_ready(self.connection.unreachable(exc).args[0])
            await asyncio.sleep(READY_CHECK_SECONDS)

    def _not_ready(self, reason: str) -> None:
        if reason != self.ready_reason:
            log.warning("not ready: %s", reason)
        self.ready_reason = reason
        self.metrics.producer_up.set(0)

    # ------------------------------------------------------------------------------------------- pages

    async def live(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "live"})

    async def ready(self, _: web.Request) -> web.Response:
        if self.ready_reason:
            return web.json_response({"status": "not ready", "reason": self.ready_reason}, status=503)
        return web.json_response({"status": "ready", "topic": self.settings.topic})

    async def metrics_page(self, _: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(self.registry))
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return response

    # ------------------------------------------------------------------------------------------- deliveries

    def _answer(self, status: int, started: float, body: dict[str, Any], **headers: str) -> web.Response:
        self.metrics.requests.labels(str(status)).inc()
        self.metrics.latency.observe(time.monotonic() - started)
        return web.Response(
            status=status, body=orjson.dumps(body), content_type="application/json", headers=headers or None
        )

    def _refused(self, hook_id: int, reason: str, detail: str, started: float) -> web.Response:
        self.metrics.signature_failures.labels(reason).inc()
        now = time.monotonic()
        if now - self._logged.get((hook_id, reason), -LOG_EVERY_SECONDS) >= LOG_EVERY_SECONDS:
            self._logged[(hook_id, reason)] = now
            log.warning(
                "hook %d: delivery refused (%s): %s (further ones for a minute are only counted)",
                hook_id,
                reason,
                detail,
                extra={"hook_id": hook_id},
            )
        return self._answer(401, started, {"error": detail})

    @staticmethod
    def _hook_id(request: web.Request) -> int | None:
        text = request.match_info["hook_id"]
        return int(text) if text.isdigit() and len(text) < 12 else None

    async def _body(self, request: web.Request) -> bytes | None:
        """The raw body, or None when it is over the cap (answered 413)."""
        if request.content_length is not None and request.content_length > self.settings.ingress_max_body_bytes:
            return None
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            return None

    def _too_large(self, started: float) -> web.Response:
        return self._answer(413, started, {"error": f"body over {self.settings.ingress_max_body_bytes} bytes"})

    async def chatwoot(self, request: web.Request) -> web.Response:
        started = time.monotonic()
        hook_id = self._hook_id(request)
        secrets = self.secrets.secrets_for(hook_id) if hook_id is not None else []
        url_token = self.secrets.url_token_for(hook_id) if hook_id is not None else None
        given_token = request.match_info.get("url_token")
        if hook_id is None or not (secrets or url_token):
            return self._answer(404, started, {"error": "unknown hook"})
        if given_token is not None and not (
            url_token and hmac.compare_digest(given_token.encode(), url_token.encode())
        ):
            self.metrics.signature_failures.labels("bad_url_token").inc()
            return self._answer(404, started, {"error": "unknown hook"})
        raw = await self._body(request)
        if raw is None:
            return self._too_large(started)
        if secrets:  # a signing secret is configured: every delivery must be signed, whatever the path
            verdict = verify(
                secrets,
                request.headers.get("X-Chatwoot-Signature"),
                request.headers.get("X-Chatwoot-Timestamp"),
                raw,
                time.time(),
            )
            if verdict.refusal is not None:
                return self._refused(hook_id, verdict.refusal, verdict.detail, started)
        elif given_token is None:
            return self._answer(404, started, {"error": "unknown hook"})
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return self._answer(400, started, {"error": "body is not JSON"})
        if not isinstance(body, dict) or not isinstance(body.get("event"), str) or not body["event"]:
            return self._answer(400, started, {"error": "body must be a JSON object with an 'event' name"})
        event = body["event"]
        if not is_synced_event(event):
            self.metrics.ignored.labels(ingress_event_label(event)).inc()
            return self._answer(200, started, {"ignored": event[:60]})
        delivery = request.headers.get("X-Chatwoot-Delivery", "").strip()[:100] or None
        value = envelope_for(hook_id, body, raw, delivery, request.headers.get("X-Chatwoot-Timestamp"))
        return await self._produce(hook_id, value, delivery, started)

    async def glpi(self, request: web.Request) -> web.Response:
        """A GLPI 11 webhook (two-way): verified, then a ``hook_poll`` for the hook on the control topic.

        The poll finds what changed on our tickets with the cursor and the mapping the worker keeps; the webhook's
        body itself is only authenticated, never trusted as data, so a replay or a forged body at most causes a poll.
        """
        started = time.monotonic()
        hook_id = self._hook_id(request)
        secrets = self.secrets.glpi_secrets_for(hook_id) if hook_id is not None else []
        if hook_id is None or not secrets:
            return self._answer(404, started, {"error": "unknown hook"})
        raw = await self._body(request)
        if raw is None:
            return self._too_large(started)
        verdict = verify_glpi(
            secrets,
            request.headers.get("X-GLPI-signature"),
            request.headers.get("X-GLPI-timestamp"),
            raw,
            time.time(),
            self.settings.glpi_webhook_max_age,
        )
        if verdict.refusal is not None:
            return self._refused(hook_id, f"glpi_{verdict.refusal}", verdict.detail, started)
        command = {"event": "hook_poll", "hook_id": hook_id, "payload": {"requested_by": "glpi-webhook"}}
        return await self._produce(hook_id, orjson.dumps(command), None, started, self.settings.control_topic)

    async def _produce(
        self, hook_id: int, value: bytes, delivery: str | None, started: float, topic: str | None = None
    ) -> web.Response:
        retry = {"Retry-After": str(self.settings.ingress_retry_after)}
        producer = self.producer
        if producer is None or self.stopping:
            self.metrics.produce_errors.labels("not_connected").inc()
            reason = self.ready_reason or "shutting down"
            return self._answer(503, started, {"error": f"Kafka not available: {reason}"[:300]}, **retry)
        headers = [("cwglpi.source", b"ingress")]
        if delivery:
            headers.append((DELIVERY_HEADER, delivery.encode()))
        try:
            async with asyncio.timeout(self.settings.ingress_produce_timeout):
                sent = await producer.send(
                    topic or self.settings.topic, value, key=str(hook_id).encode(), headers=headers
                )
                await asyncio.shield(sent)
        except TimeoutError:
            self.metrics.produce_errors.labels("timeout").inc()
            log.warning("hook %d: Kafka did not acknowledge a delivery in time: answered 503", hook_id)
            return self._answer(503, started, {"error": "Kafka did not acknowledge in time"}, **retry)
        except KafkaError as exc:
            self.metrics.produce_errors.labels("broker_error").inc()
            log.warning("hook %d: Kafka refused a delivery (%s): answered 503", hook_id, type(exc).__name__)
            return self._answer(503, started, {"error": "Kafka refused the record"}, **retry)
        return self._answer(200, started, {"accepted": delivery or True})


def run_ingress(settings: IngressSettings, port: int | None = None) -> int:
    """Serve until SIGTERM or SIGINT; returns the exit code."""
    secrets = WebhookSecrets(directory=settings.webhook_secrets_dir)
    problems = secrets.problems()
    if problems:
        for line in problems:
            log.error("invalid configuration: %s", line)
        return 2
    if not secrets.any_configured():
        log.warning(
            "no webhook secret is configured (GLPI_SYNC_WEBHOOK_SECRET_<hook id>, or files in %s): every delivery "
            "will be answered 404 until one is",
            settings.webhook_secrets_dir,
        )
    ingress = Ingress(settings, secrets)
    host, bound = settings.ingress_host, settings.ingress_port if port is None else port
    try:
        listener = socket.create_server((host, bound), reuse_port=False)
    except OSError as exc:
        log.error(
            "cannot listen on %s:%d: %s (choose another with --port or GLPI_SYNC_INGRESS_PORT)",
            host,
            bound,
            exc.strerror or exc,
        )
        return 2
    log.info("ingress listening on %s:%d, producing to %s", host, bound, settings.topic)
    web.run_app(
        ingress.application(),
        sock=listener,
        shutdown_timeout=settings.ingress_shutdown_timeout,
        access_log=None,
        print=None,
    )
    return 0
