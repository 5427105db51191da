"""Operations: state inspection routed to the owning worker, GLPI checks for a hook, progress and liveness.

- A hook's state lives on the worker that owns the hook's partition (``murmur2(hook id) % partitions``, the
  producers' partitioner). :meth:`Operations.owner_url` finds that worker from faust's assignment; any worker
  answers ``/state/...`` by reading locally or proxying the request once to the owner.
- Token values never leave the worker: inline tokens are shown as ``***``, references as they are.
- :class:`ProgressMonitor` samples consumer lag, the age of the oldest unfinished event and commit progress;
  liveness fails only when a partition with lag has not committed for ``GLPI_SYNC_LIVENESS_STALL_SECONDS``
  (never because of GLPI: a GLPI outage parks hooks, it does not stop commits).
"""

from __future__ import annotations

import html
import time
from typing import Any, cast
from urllib.parse import urlsplit

import aiohttp
from aiokafka.partitioner import DefaultPartitioner
from faust.types import TP, AppT

from app.glpi import GlpiAuthError, GlpiClient, GlpiError, missing_rights
from app.glpi.rights import needed_rights
from app.lanes import LaneDispatcher
from app.metrics import Metrics
from app.pipeline import HookConfigError, Pipeline, resolve_token
from app.settings import WorkerSettings
from app.sync.decide import validate_hook_settings
from app.sync.state import AnyHook, HookRecord

FORWARDED = "X-Cwglpi-Forwarded"


def hook_partition(hook_id: int, partitions: int) -> int:
    """The partition a producer using the Java-compatible partitioner puts hook ``hook_id`` on."""
    return int(DefaultPartitioner()(str(hook_id).encode(), list(range(partitions)), list(range(partitions))))


def public_settings(hook: HookRecord) -> dict[str, Any]:
    """Hook settings with inline token values hidden (references are not secrets)."""
    settings = hook.settings.model_dump(mode="json")
    for name in ("app_token", "user_token"):
        if isinstance(settings.get(name), str):
            settings[name] = "***"
    return settings


def hook_view(slot: AnyHook) -> dict[str, Any]:
    """What ``/state/hook/N`` shows of a hook: configuration (tokens hidden), pause, queues, partition."""
    view: dict[str, Any] = {
        "hook_id": slot.hook_id,
        "status": slot.status,
        "parked_events": slot.parked,
        "set_aside_events": slot.set_aside,
        "partition": slot.partition,
    }
    if isinstance(slot, HookRecord):
        view.update(
            account_id=slot.account_id,
            account_features=list(slot.account_features),
            settings=public_settings(slot),
            pause=slot.pause.model_dump(mode="json") if slot.pause else None,
            rebuilding=slot.rebuilding,
            head_failures=slot.head_failures,
        )
    else:
        view.update(account_id=None, settings=None, pause=None, rebuilding=False)
    return view


class Operations:
    def __init__(self, app: AppT, settings: WorkerSettings, pipeline: Pipeline) -> None:
        self.app = app
        self.settings = settings
        self.pipeline = pipeline

    # ---------------------------------------------------------------------------------------------- routing

    @property
    def self_url(self) -> str:
        return str(self.app.conf.canonical_url).rstrip("/")

    def worker_urls(self) -> list[str]:
        """Every worker of the group, as faust's assignor last distributed the table partitions."""
        urls = {str(url).rstrip("/") for url in self.app.assignor.tables_metadata()}
        urls.add(self.self_url)
        return sorted(urls)

    def distribution(self) -> dict[str, list[int]]:
        """Worker URL → the input partitions it owns (from the hooks table's changelog assignment)."""
        changelog = f"{self.settings.app_id}-hooks-changelog"
        return {
            str(url).rstrip("/"): sorted(topics.get(changelog, ()))
            for url, topics in self.app.assignor.tables_metadata().items()
        }

    def owner_url(self, hook_id: int) -> str | None:
        partition = hook_partition(hook_id, self.settings.partitions)
        changelog = f"{self.settings.app_id}-hooks-changelog"
        for url, topics in self.app.assignor.tables_metadata().items():
            if partition in topics.get(changelog, ()):
                return str(url).rstrip("/")
        return None

    async def forward(self, url: str, path: str) -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                f"{url}{path}", headers={FORWARDED: self.self_url}, timeout=aiohttp.ClientTimeout(total=30)
            ) as resp,
        ):
            return resp.status, await resp.json()

    async def routed(self, hook_id: int, path: str, local: Any, forwarded: bool) -> tuple[int, Any]:
        """Answer locally when this worker owns the hook, else ask the owner (once: no forwarding loops)."""
        if self.app.rebalancing or not cast(Any, self.app.tables).recovery.completed.is_set():
            return 503, {"error": "the group is rebalancing or recovering its tables; retry in a few seconds"}
        owner = self.owner_url(hook_id)
        if owner is None or owner == self.self_url or forwarded:
            status, body = await local()
            if isinstance(body, dict):
                body.setdefault("served_by", self.self_url)
            return status, body
        try:
            return await self.forward(owner, path)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return 502, {"error": f"owner {owner} did not answer: {type(exc).__name__}"}

    # ---------------------------------------------------------------------------------------------- state

    async def hook_state(self, hook_id: int) -> tuple[int, Any]:
        slot = self.pipeline.store.slot(hook_id)
        if slot is None:
            return 404, {"error": f"hook {hook_id} is not configured (or its partition is not on this worker)"}
        view = hook_view(slot)
        view["glpi_session_open"] = self.pipeline.clients.sessions().get(hook_id, False)
        return 200, view

    async def contact_state(self, hook_id: int, contact_id: int) -> tuple[int, Any]:
        hook = self.pipeline.store.hook(hook_id)
        if hook is None:
            return 404, {"error": f"hook {hook_id} is not configured"}
        contact = self.pipeline.store.contact(hook.account_id, contact_id)
        if contact is None:
            return 404, {"error": f"contact {contact_id} of account {hook.account_id} was never synced"}
        return 200, {"hook_id": hook_id, "contact": contact.model_dump(mode="json")}

    async def conversation_state(self, hook_id: int, conversation_id: int) -> tuple[int, Any]:
        hook = self.pipeline.store.hook(hook_id)
        if hook is None:
            return 404, {"error": f"hook {hook_id} is not configured"}
        conv = self.pipeline.store.conversation(hook.account_id, conversation_id)
        if conv is None:
            return 404, {"error": f"conversation {conversation_id} of account {hook.account_id} was never synced"}
        messages = [
            m.model_dump(mode="json") for m in self.pipeline.store.messages_of(hook.account_id, conversation_id)
        ]
        return 200, {"hook_id": hook_id, "conversation": conv.model_dump(mode="json"), "messages": messages}

    async def local_hooks(self) -> tuple[int, Any]:
        return 200, {"worker": self.self_url, "hooks": [hook_view(h) for h in self.pipeline.store.slots()]}

    async def all_hooks(self) -> list[dict[str, Any]]:
        hooks: dict[int, dict[str, Any]] = {}
        for url in self.worker_urls():
            if url == self.self_url:
                _, body = await self.local_hooks()
            else:
                try:
                    _, body = await self.forward(url, "/state/hooks")
                except (aiohttp.ClientError, TimeoutError):
                    continue
            for hook in body.get("hooks", []):
                hooks[hook["hook_id"]] = {**hook, "served_by": body.get("worker", url)}
        return [hooks[k] for k in sorted(hooks)]

    # ---------------------------------------------------------------------------------------------- GLPI check

    async def glpi_check(self, hook_id: int) -> tuple[int, Any]:
        """The guide's ``validate_and_test``, run where the tokens are resolved: the owning worker."""
        hook = self.pipeline.store.hook(hook_id)
        if hook is None:
            return 404, {"error": f"hook {hook_id} is not configured"}
        return 200, {"hook_id": hook_id, "checks": await check_glpi(hook, self.settings)}


def _check(name: str, ok: bool, detail: str, fix: str = "") -> dict[str, Any]:
    return {"check": name, "ok": ok, "detail": detail, "fix": "" if ok else fix}


async def check_glpi(hook: HookRecord, settings: WorkerSettings) -> list[dict[str, Any]]:
    """Every per-hook line of the health checklist, in order; stops at the first line that blocks the next."""
    checks = [
        _check("enabled", hook.status == "enabled", hook.status, "glpi-sync hook enable --hook-id N"),
        _check(
            "crm_integration feature",
            "crm_integration" in hook.account_features,
            ", ".join(hook.account_features) or "none",
            "enable crm_integration for the account in Chatwoot",
        ),
        _check(
            "not paused",
            hook.pause is None,
            f"{hook.pause.kind}: {hook.pause.reason}" if hook.pause else "running",
            "fix the cause, then glpi-sync hook resume --hook-id N",
        ),
    ]
    _, problems = validate_hook_settings(hook.settings, allow_http=settings.allow_http)
    checks.append(_check("api_url well-formed", not problems, hook.settings.api_url, "; ".join(problems)))
    https = urlsplit(hook.settings.api_url).scheme == "https"
    try:
        app_token = resolve_token(hook.settings.app_token)
        user_token = resolve_token(hook.settings.user_token)
    except HookConfigError as exc:
        checks.append(_check("tokens resolvable", False, str(exc), "set the variable or mount the file on the worker"))
        return checks
    checks.append(_check("tokens resolvable", True, "inline or resolved from env/file"))
    assert user_token is not None
    async with aiohttp.ClientSession() as http:
        client = GlpiClient(
            hook.settings.api_url,
            app_token=app_token,
            user_token=user_token,
            http=http,
            timeout=min(settings.glpi_timeout, 10.0),
        )
        try:
            started = time.monotonic()
            await client.open()
            elapsed = time.monotonic() - started
        except GlpiAuthError as exc:
            which = "app token" if "APP_TOKEN" in exc.code else ("user token" if "USER_TOKEN" in exc.code else "API")
            checks.append(_check("GLPI reachable", True, "answered"))
            checks.append(
                _check(
                    f"{which} valid",
                    False,
                    f"{exc.code}: {exc.message}",
                    "regenerate it in GLPI and run glpi-sync hook set",
                )
            )
            return checks
        except GlpiError as exc:
            detail = f"{exc.code}: {exc.message}"
            fix = "check DNS, firewall and the certificate (see docs/troubleshooting.md)"
            checks.append(_check("GLPI reachable", False, detail, fix))
            if https and "SSL" in exc.message.upper():
                checks.append(_check("TLS certificate valid", False, detail, "install a valid certificate"))
            return checks
        checks.append(_check("GLPI reachable", True, f"initSession in {elapsed * 1000:.0f} ms"))
        if https:
            checks.append(_check("TLS certificate valid", True, "verified"))
        else:
            detail = "plain http (GLPI_SYNC_ALLOW_HTTP is on)" if settings.allow_http else "plain http"
            checks.append(_check("TLS certificate valid", settings.allow_http, detail, "use https"))
        checks.append(_check("app token valid", True, "accepted"))
        checks.append(_check("user token valid", True, "accepted"))
        try:
            profile = await client.get_active_profile()
        finally:
            await client.close()
    name = html.unescape(str(profile.get("name", "?")))
    missing = missing_rights(profile, needed_rights(hook.settings.sync_type))
    for right in needed_rights(hook.settings.sync_type):
        ok = right not in missing
        checks.append(
            _check(
                f"profile may {right.name}",
                ok,
                f"profile {name}: {'granted' if ok else 'not granted'}",
                f"grant {right.name!r} to profile {name} in GLPI (Administration > Profiles > {name})",
            )
        )
    return checks


class ProgressMonitor:
    """Samples lag, the oldest unfinished event and commit progress every few seconds."""

    def __init__(self, app: AppT, settings: WorkerSettings, lanes: LaneDispatcher, metrics: Metrics) -> None:
        self.app = app
        self.settings = settings
        self.lanes = lanes
        self.metrics = metrics
        self._commits: dict[TP, tuple[int | None, float]] = {}
        self.stalled_for = 0.0
        self.last_sample = time.time()

    def sample(self) -> None:
        now = time.time()
        consumer = self.app.consumer
        oldest = self.lanes.oldest_pending()
        worst = 0.0
        self.metrics.consumer_lag.clear()
        self.metrics.oldest_pending_age.clear()
        for tp in sorted(consumer.assignment()):
            if tp.topic not in (self.settings.topic, self.settings.control_topic):
                continue
            committed = cast(Any, consumer)._committed_offset.get(tp)  # faust exposes no public getter
            try:
                highwater = consumer.highwater(tp)
            except Exception:  # highwater is unknown until the first fetch
                highwater = None
            lag = max(0, (highwater or 0) - (committed or 0)) if highwater is not None else 0
            if tp.topic == self.settings.topic:
                self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(lag)
            event = oldest.get(tp)
            age = max(0.0, now - float(event.message.timestamp)) if event is not None else 0.0
            self.metrics.oldest_pending_age.labels(tp.topic, str(tp.partition)).set(age)
            previous = self._commits.get(tp)
            if previous is None or previous[0] != committed or lag == 0:
                self._commits[tp] = (committed, now)
            else:
                worst = max(worst, now - previous[1])
        self.stalled_for = worst
        self.metrics.commit_stalled.set(worst)
        self.metrics.inflight.set(self.lanes.inflight)
        self.last_sample = now

    def live(self) -> tuple[bool, dict[str, Any]]:
        """Not live when commits stopped with lag, or when the sampling timer itself stopped (loop wedged)."""
        sample_age = time.time() - self.last_sample
        ok = self.stalled_for < self.settings.liveness_stall_seconds and sample_age < 120
        return ok, {"commit_stalled_seconds": round(self.stalled_for, 1), "last_sample_age": round(sample_age, 1)}
