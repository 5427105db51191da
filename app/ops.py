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

import hmac
from typing import Any, cast

import aiohttp
from aiokafka.partitioner import DefaultPartitioner
from faust.types import AppT

from app.chatwoot.api import ChatwootClient, ChatwootError, ChatwootRefusedError, missing_definitions
from app.events import TOKEN_FIELDS, TokenEncrypted, TokenFromEnv, TokenFromFile
from app.glpi_checks import Check, glpi_checks
from app.pipeline import Pipeline
from app.pipeline.clients import glpi_ssl_context
from app.secrets import HookConfigError, TokenVault, resolve_token
from app.settings import WorkerSettings
from app.sync.hook_config import validate_hook_settings
from app.sync.state import AnyHook, ContactRecord, ConversationRecord, HookPolicy, HookRecord
from app.twoway.attributes import DEFINITIONS

FORWARDED = "X-Cwglpi-Forwarded"


def admin_gate(authorization: str | None, token: str | None) -> tuple[int, dict[str, str]] | None:
    """Why a request to a state or admin endpoint is refused (None when it carries the admin token).

    With no token configured those endpoints are off, not open. The comparison takes the same time whatever the
    token sent (``hmac.compare_digest``).
    """
    if not token:
        return 403, {
            "error": "the state and admin endpoints are off: set GLPI_SYNC_ADMIN_TOKEN (or GLPI_SYNC_ADMIN_TOKEN_FILE) "
            "on the workers and where the CLI runs"
        }
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        return 401, {"error": "a valid admin token is required (Authorization: Bearer <GLPI_SYNC_ADMIN_TOKEN>)"}
    return None


def mask_email(email: str) -> str:
    """``m***@example.org``: enough to tell two addresses apart, not to read one."""
    local, _, domain = email.partition("@")
    return f"{local[:1]}***@{domain}" if domain else "***"


def mask_phone(phone: str) -> str:
    return f"{phone[:4]}…{phone[-3:]}" if len(phone) > 7 else "***"


def contact_view(contact: ContactRecord) -> dict[str, Any]:
    """A contact's mapping as ``/state`` shows it: ids and intents; names, emails and phones masked."""
    view = contact.model_dump(mode="json")
    view["name"] = "***" if contact.name else None
    view["phone"] = mask_phone(contact.phone) if contact.phone else None
    view["emails"] = [mask_email(e) for e in contact.emails]
    return view


def conversation_view(conv: ConversationRecord) -> dict[str, Any]:
    """A conversation's mapping without the texts kept for resync (the customer's first message)."""
    return conv.model_dump(mode="json", exclude={"ticket_input"})


def hook_partition(hook_id: int, partitions: int) -> int:
    """The partition a producer using the Java-compatible partitioner puts hook ``hook_id`` on."""
    return int(DefaultPartitioner()(str(hook_id).encode(), list(range(partitions)), list(range(partitions))))


def public_settings(hook: HookRecord) -> dict[str, Any]:
    """Hook settings with inline token values hidden (references are not secrets)."""
    settings = hook.settings.model_dump(mode="json")
    for name in TOKEN_FIELDS:
        if isinstance(settings.get(name), str):
            settings[name] = "***"
    return settings


def hook_state(slot: AnyHook) -> str:
    """One word (and the pause kind) for what the hook is doing now: the ``STATE`` column of ``hook list``.

    ``unconfigured`` / ``removed``: no usable configuration, events are parked. ``disabled``: events are set aside.
    ``paused (kind)``: events wait for a resume or the pause's self-healing. ``retrying``: the head event failed and
    is retried with back-off (``head_failures``). ``draining``: parked events are being replayed. ``running``.
    """
    if not isinstance(slot, HookRecord):
        return slot.status
    if slot.status == "disabled":
        return "disabled"
    if slot.pause is not None:
        return f"paused ({slot.pause.kind})"
    if slot.head_failures:
        return "retrying"
    return "draining" if slot.parked else "running"


def hook_view(slot: AnyHook) -> dict[str, Any]:
    """What ``/state/hook/N`` shows of a hook: configuration (tokens hidden), pause, queues, partition."""
    view: dict[str, Any] = {
        "hook_id": slot.hook_id,
        "state": hook_state(slot),
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
        self._admin_token = settings.admin_secret()
        self._dashboard_token = settings.dashboard_secret()

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
            http.get(f"{url}{path}", headers=self._forward_headers(), timeout=aiohttp.ClientTimeout(total=30)) as resp,
        ):
            return resp.status, await resp.json()

    def _forward_headers(self) -> dict[str, str]:
        headers = {FORWARDED: self.self_url}
        token = self._admin_token or self._dashboard_token  # a worker with only the latter forwards dashboard views
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

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
        view["glpi_requests"] = self.pipeline.clients.request_limits().get(hook_id)
        return 200, view

    async def contact_state(self, hook_id: int, contact_id: int) -> tuple[int, Any]:
        hook = self.pipeline.store.hook(hook_id)
        if hook is None:
            return 404, {"error": f"hook {hook_id} is not configured"}
        contact = self.pipeline.store.contact(hook.account_id, contact_id)
        if contact is None:
            return 404, {"error": f"contact {contact_id} of account {hook.account_id} was never synced"}
        return 200, {"hook_id": hook_id, "contact": contact_view(contact)}

    async def conversation_state(self, hook_id: int, conversation_id: int) -> tuple[int, Any]:
        hook = self.pipeline.store.hook(hook_id)
        if hook is None:
            return 404, {"error": f"hook {hook_id} is not configured"}
        store = self.pipeline.store
        conv = store.conversation(hook.account_id, conversation_id)
        trace = store.trace_of(hook.account_id, conversation_id)
        if conv is None and not trace:
            return 404, {"error": f"conversation {conversation_id} of account {hook.account_id} was never synced"}
        if conv is None:  # its events were only parked or skipped so far: the trace says why
            conv = ConversationRecord(account_id=hook.account_id, conversation_id=conversation_id)
        messages = [
            m.model_dump(mode="json", exclude={"followup_input"})
            for m in store.messages_of(hook.account_id, conversation_id)
        ]
        shown = {**conversation_view(conv), "history": trace}
        return 200, {"hook_id": hook_id, "conversation": shown, "messages": messages}

    async def command_result(self, hook_id: int, event_id: str) -> tuple[int, Any]:
        """Whether the owning worker applied command ``event_id`` yet, and how it ended."""
        result = self.pipeline.results.get(event_id)
        if result is None:
            return 404, {"applied": False, "hook_id": hook_id}
        return 200, {"applied": True, "hook_id": hook_id, **result}

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
        checks = await check_glpi(hook, self.settings, self.pipeline.ctx.hook_policy, self.pipeline.vault)
        return 200, {"hook_id": hook_id, "checks": checks}


def token_source(ref: Any) -> str:
    """Where a hook's token comes from, for operators (never its value)."""
    if isinstance(ref, TokenFromEnv):
        return f"environment variable {ref.env}"
    if isinstance(ref, TokenFromFile):
        return f"file {ref.file}"
    if isinstance(ref, TokenEncrypted):
        return "inline, stored encrypted"
    return "inline" if ref else "none"


def _pause_fix(hook: HookRecord) -> str:
    pause = hook.pause
    if pause is None:
        return ""
    resume = f"glpi-sync hook resume --hook-id {hook.hook_id}"
    return {
        "auth": f"fix the credentials or rights (lines below), then run glpi-sync hook set --hook-id {hook.hook_id} "
        f"… again: a new configuration resumes the hook (or {resume})",
        "endpoint": f"fix what answers at {hook.settings.api_url} (proxy, SSO, URL); the worker retries on its own",
        "transient": "GLPI did not answer: the worker retries on its own (see GLPI reachable below)",
        "operator": f"paused on purpose; {resume} when ready",
    }[pause.kind]


async def check_glpi(
    hook: HookRecord, settings: WorkerSettings, policy: HookPolicy, vault: TokenVault | None = None
) -> list[dict[str, Any]]:
    """Every per-hook line of the health checklist, in order; stops at the first line that blocks the next."""
    hid = hook.hook_id
    checks = [
        Check("enabled", "ok", "enabled")
        if hook.status == "enabled"
        else Check("enabled", "fail", hook.status, f"glpi-sync hook enable --hook-id {hid}"),
        Check("crm_integration feature", "ok", ", ".join(hook.account_features))
        if "crm_integration" in hook.account_features
        else Check(
            "crm_integration feature",
            "fail",
            ", ".join(hook.account_features) or "none",
            f"enable CRM integration for account {hook.account_id} in Chatwoot (it sends a new hook_configured)",
        ),
        Check("not paused", "ok", "running")
        if hook.pause is None
        else Check("not paused", "fail", f"{hook.pause.kind}: {hook.pause.reason}", _pause_fix(hook)),
    ]
    _, problems = validate_hook_settings(hook.settings, allow_http=settings.allow_http)
    checks.append(
        Check("api_url well-formed", "ok" if not problems else "fail", hook.settings.api_url, "; ".join(problems))
    )
    sources = (
        f"app token: {token_source(hook.settings.app_token)}; user token: {token_source(hook.settings.user_token)}"
    )
    try:
        app_token = resolve_token(hook.settings.app_token, "app_token", policy, vault)
        user_token = resolve_token(hook.settings.user_token, "user_token", policy, vault)
        context = glpi_ssl_context(settings.glpi_ca_file)
    except HookConfigError as exc:
        checks.append(
            Check("tokens resolvable", "fail", f"{exc} ({sources})", "set the variable or mount the file on the worker")
        )
        return [c.as_dict() for c in checks]
    checks.append(Check("tokens resolvable", "ok", sources))
    assert user_token is not None
    checks += await glpi_checks(
        hook.settings,
        app_token,
        user_token,
        hook_hint=f"run glpi-sync hook set --hook-id {hid} … again",
        timeout_s=min(settings.glpi_timeout, 10.0),
        ssl_context=context,
        ca_label=str(settings.glpi_ca_file) if settings.glpi_ca_file else "the system trust store",
    )
    if hook.settings.two_way or hook.settings.writes_back:
        checks += await chatwoot_checks(hook, policy, vault, min(settings.chatwoot_timeout, 10.0))
    return [c.as_dict() for c in checks]


async def chatwoot_checks(
    hook: HookRecord, policy: HookPolicy, vault: TokenVault | None, seconds: float
) -> list[Check]:
    """Chatwoot reachable, the agent's token valid and a member of the hook's account.

    Also: inboxes to post in (two-way), and write-back's attribute definitions in place.
    """
    fix = f"glpi-sync hook set --hook-id {hook.hook_id} --chatwoot-url … --chatwoot-token-file … again"
    try:
        token = resolve_token(hook.settings.chatwoot_token, "chatwoot_token", policy, vault)
    except HookConfigError as exc:
        return [
            Check("Chatwoot token resolvable", "fail", str(exc), "set the variable or mount the file on the worker")
        ]
    if not token or not hook.settings.chatwoot_url:
        return [Check("Chatwoot settings", "fail", "two-way needs chatwoot_url and chatwoot_token", fix)]
    checks = [Check("Chatwoot token resolvable", "ok", token_source(hook.settings.chatwoot_token))]
    try:
        async with ChatwootClient(hook.settings.chatwoot_url, hook.account_id, token, timeout=seconds) as client:
            profile = await client.profile()
            checks.append(
                Check("Chatwoot reachable, token valid", "ok", f"{hook.settings.chatwoot_url}: {profile.get('name')}")
            )
            accounts = [a.get("id") for a in profile.get("accounts", []) if isinstance(a, dict)]
            if hook.account_id not in accounts:
                checks.append(
                    Check("Chatwoot account", "fail", f"the agent is not a member of account {hook.account_id}", fix)
                )
                return checks
            checks.append(Check("Chatwoot account", "ok", f"the agent is a member of account {hook.account_id}"))
            inboxes = await client.inboxes()
            checks.append(
                Check("Chatwoot inboxes", "ok", f"{len(inboxes)} inbox(es) the agent may post in")
                if inboxes
                else Check(
                    "Chatwoot inboxes",
                    "fail",
                    "the agent sees no inbox: it cannot post",
                    "add the agent to the inboxes",
                )
            )
            missing = await missing_definitions(client, DEFINITIONS)
            checks.append(
                Check("Chatwoot attribute definitions", "ok", "the GLPI attributes are defined")
                if not missing
                else Check(
                    "Chatwoot attribute definitions",
                    "warn",
                    f"not defined yet: {', '.join(missing)} (hook set defines them; until then agents see raw values)",
                    fix,
                )
            )
    except ChatwootRefusedError as exc:
        checks.append(Check("Chatwoot reachable, token valid", "fail", str(exc), fix))
    except (ChatwootError, aiohttp.ClientError, OSError) as exc:
        checks.append(
            Check(
                "Chatwoot reachable, token valid",
                "fail",
                f"{hook.settings.chatwoot_url}: {exc}"[:300],
                "check the URL and the network",
            )
        )
    return checks
