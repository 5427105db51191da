"""Configuration from the environment, validated once at start-up.

Every variable is documented in README.md ("Configuration"). :class:`ToolSettings` holds what every command needs
(Kafka, topics, the worker's URL, the admin token, the hook-secret policy); :class:`WorkerSettings` adds what only
the worker uses, so a bad worker-only value never stops ``doctor`` or the other commands. :func:`load` turns
pydantic's errors into one line per variable: its name, what it accepts, and what it got.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.files.policy import MIB, FilePolicy

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


def _kafka(name: str) -> Any:
    """The usual Kafka variable ``KAFKA_<NAME>``, or ``GLPI_SYNC_KAFKA_<NAME>``."""
    return AliasChoices(f"KAFKA_{name}", f"GLPI_SYNC_KAFKA_{name}")


class ToolSettings(BaseSettings):
    """What the worker and every command share."""

    model_config = SettingsConfigDict(env_prefix="GLPI_SYNC_", extra="ignore", frozen=True)

    kafka_bootstrap_servers: str = Field("127.0.0.1:9092", validation_alias=_kafka("BOOTSTRAP_SERVERS"))
    kafka_security_protocol: SecurityProtocol = Field("PLAINTEXT", validation_alias=_kafka("SECURITY_PROTOCOL"))
    kafka_sasl_mechanism: SaslMechanism = Field("SCRAM-SHA-512", validation_alias=_kafka("SASL_MECHANISM"))
    kafka_sasl_username: str | None = Field(None, validation_alias=_kafka("SASL_USERNAME"))
    kafka_sasl_password: str | None = Field(None, validation_alias=_kafka("SASL_PASSWORD"), repr=False)
    kafka_sasl_password_file: Path | None = Field(None, validation_alias=_kafka("SASL_PASSWORD_FILE"))
    kafka_ssl_ca_file: Path | None = Field(None, validation_alias=_kafka("SSL_CA_FILE"))
    kafka_ssl_cert_file: Path | None = Field(None, validation_alias=_kafka("SSL_CERT_FILE"))
    kafka_ssl_key_file: Path | None = Field(None, validation_alias=_kafka("SSL_KEY_FILE"))
    kafka_ssl_key_password: str | None = Field(None, validation_alias=_kafka("SSL_KEY_PASSWORD"), repr=False)
    kafka_ssl_check_hostname: bool = Field(True, validation_alias=_kafka("SSL_CHECK_HOSTNAME"))

    topic: str = Field("chatwoot.events", min_length=1)
    #: Derived from ``topic`` (``<topic>.dlq``, ``<topic>.control``) unless set, so two deployments on one
    #: cluster never share them.
    dlq_topic: str = ""
    control_topic: str = ""
    partitions: int = Field(8, ge=1, le=1000)
    app_id: str = Field("chatwoot-glpi-sync", min_length=1)
    allow_http: bool = False
    glpi_timeout: float = Field(15.0, gt=0)
    #: CA bundle for GLPI's certificate (a private CA); the system's trust store when unset.
    glpi_ca_file: Path | None = None
    #: Where the CLI reaches a worker (inspect, doctor, hook test, reset); any worker of the group will do.
    worker_url: str = "http://127.0.0.1:6066"
    #: Webhook ingresses ``glpi-sync doctor`` checks (comma-separated base URLs); empty: not checked.
    ingress_url: str = ""
    admin_token: str | None = Field(None, repr=False)
    admin_token_file: Path | None = None
    #: What the ingress's dashboard app reads workers with: the conversation views only (never the admin token).
    dashboard_token: str | None = Field(None, repr=False)
    dashboard_token_file: Path | None = None
    #: Token references a hook may name: environment variables with this prefix, files under this directory.
    hook_secret_env_prefix: str = Field("GLPI_SYNC_HOOK_SECRET_", min_length=1)
    hook_secrets_dir: Path = Path("/run/secrets/glpi-sync")
    #: ``any``: hooks may be configured from the producers' topic and the control topic; ``control``: only from
    #: the control topic (``glpi-sync hook set``), so a producer can never point a hook at a server of its choosing.
    hook_config_source: Literal["any", "control"] = "any"
    #: GLPI hosts hooks may use (``host`` or ``host:port``, comma-separated); empty: any host.
    allowed_glpi_hosts: str = ""
    #: Chatwoot hosts hooks may send their Chatwoot token to (write-back, two-way); empty: any host.
    allowed_chatwoot_hosts: str = ""
    embedded_broker: bool = False
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _strip_scheme(cls, value: str) -> str:
        return value.removeprefix("kafka://").strip()

    @field_validator("log_level", "kafka_security_protocol", "kafka_sasl_mechanism", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("log_format", "hook_config_source", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _derive_topics(self) -> ToolSettings:
        # Frozen model: derived defaults are set once, here, and never change afterwards.
        if not self.dlq_topic:
            object.__setattr__(self, "dlq_topic", f"{self.topic}.dlq")
        if not self.control_topic:
            object.__setattr__(self, "control_topic", f"{self.topic}.control")
        return self

    @property
    def broker_url(self) -> str:
        return ";".join(f"kafka://{server.strip()}" for server in self.kafka_bootstrap_servers.split(","))

    @property
    def glpi_hosts(self) -> frozenset[str]:
        return frozenset(h.strip().lower() for h in self.allowed_glpi_hosts.split(",") if h.strip())

    @property
    def chatwoot_hosts(self) -> frozenset[str]:
        return frozenset(h.strip().lower() for h in self.allowed_chatwoot_hosts.split(",") if h.strip())

    def admin_secret(self) -> str | None:
        """The admin token (the file wins); None when neither is set: state and admin endpoints are then off."""
        if self.admin_token_file is not None:
            return self.admin_token_file.read_text(encoding="utf-8").strip() or None
        return self.admin_token or None

    def dashboard_secret(self) -> str | None:
        """The dashboard token (the file wins); None when neither is set: the dashboard app is then off."""
        if self.dashboard_token_file is not None:
            return self.dashboard_token_file.read_text(encoding="utf-8").strip() or None
        return self.dashboard_token or None


class WorkerSettings(ToolSettings):
    """What only ``glpi-sync worker`` uses, on top of :class:`ToolSettings`."""

    data_dir: Path = Path("./data")
    store: str = "rocksdb://"
    http_port: int = Field(6066, ge=0, le=65535)
    http_host: str = "0.0.0.0"
    chatwoot_url: str | None = None
    retry_budget: float = Field(45.0, ge=0)
    retry_base: float = Field(0.5, gt=0)
    resume_interval: float = Field(15.0, gt=0)
    session_timeout: float = Field(30.0, ge=6, le=300)
    #: Seconds a SIGTERM or SIGINT waits for a clean stop before the worker exits anyway (a stop caught in a
    #: rebalance or a broker outage can otherwise take minutes); what was unfinished is read again, as after kill -9.
    stop_timeout: float = Field(30.0, gt=0)
    max_inflight: int = Field(2000, ge=1)
    #: Events of one partition held in memory before its fetching pauses (a slow head holds back its acks).
    max_inflight_per_partition: int = Field(250, ge=2)
    #: The most GLPI requests one hook runs at once. Different conversations of a hook sync side by side; how many
    #: requests run at once follows the GLPI's latency (``app/glpi/limiter.py``: it grows while GLPI answers as
    #: fast as when idle and shrinks as soon as requests queue), never above this. 1 runs a hook strictly in order.
    hook_concurrency: int = Field(32, ge=1, le=256)
    create_topics: bool = True
    #: Kafka static group membership (``group.instance.id``, e.g. the pod name of a StatefulSet): a worker that
    #: restarts within the session timeout gets its partitions back without a rebalance of the whole group.
    group_instance_id: str = ""
    #: Seconds after a create's POST during which GLPI may still commit it (a timeout is not a refusal): no new
    #: POST of the same object before then. Set it above PHP's max_execution_time plus any proxy queueing.
    late_commit_window: float = Field(120.0, ge=0)
    #: A ticket not seen usable for this long is read before a followup or status is written (it may be closed).
    ticket_recheck_seconds: float = Field(600.0, ge=0)
    #: Events a hook may hold before its hook_configured arrives; later ones are set aside (dead-lettered).
    unconfigured_park_limit: int = Field(1000, ge=0)
    #: Unconfigured hooks that may hold events at once (a producer writing random hook ids cannot fill the disk).
    max_unconfigured_hooks: int = Field(100, ge=0)
    #: Drains in a row in which one parked event fails on its own (GLPI answers others) before it is dead-lettered.
    max_event_failures: int = Field(5, ge=1)
    per_hook_metrics_limit: int = Field(200, ge=0)
    #: Seconds per Chatwoot API request of the two-way sync (a post that times out is looked for before a retry).
    chatwoot_timeout: float = Field(15.0, gt=0)
    #: Files both ways (app/files/): off keeps attachments as links, as before files travelled.
    files: bool = True
    #: The largest file moved either way, in MiB (GLPI's own document_max_size also applies towards GLPI).
    file_max_mb: int = Field(20, ge=1, le=1024)
    #: Bytes per second of files per hook, in MiB (one large file does not hold up the hook's text); 0: no limit.
    file_rate_mb: float = Field(4.0, ge=0)
    #: Seconds one file may take to download or upload.
    file_timeout: float = Field(120.0, gt=0)
    #: Files moved per message; the others stay links.
    files_per_message: int = Field(10, ge=0, le=100)
    #: Hosts (host or host:port, comma-separated) attachments may be downloaded from beside the Chatwoot URLs.
    file_hosts: str = ""
    #: Seconds between two-way polls of each two-way hook's GLPI (a few GET requests each).
    two_way_poll_seconds: float = Field(30.0, ge=1)
    #: Hours an envelope's ``event_id`` is remembered per hook: a record with the same id in that window is a
    #: redelivery (a webhook retried by Chatwoot, a backfill run twice) and is skipped. 0 turns the check off.
    redelivery_window_hours: float = Field(72.0, ge=0)
    #: RocksDB memory per table partition (faust's defaults are a 2 GiB block cache and 3 x 64 MiB write buffers
    #: for *each* partition of *each* table; our tables are small).
    rocksdb_block_cache_mb: int = Field(8, ge=1)
    rocksdb_write_buffer_mb: int = Field(4, ge=1)
    liveness_stall_seconds: float = Field(600.0, gt=0)
    #: Seconds without progress after which a partition's waiting records are stuck work (app/progress.py).
    stuck_seconds: float = Field(120.0, gt=0)
    advertised_url: str | None = None
    replication_factor: int = Field(1, ge=1)
    #: Inline tokens in hook configurations: ``encrypt`` them in the hook table (needs a token key), ``refuse``
    #: them (references only), or ``allow`` them in clear.
    inline_tokens: Literal["allow", "encrypt", "refuse"] = "allow"
    #: Fernet keys for inline tokens at rest, comma-separated, newest first (older ones still decrypt).
    token_keys: str | None = Field(None, repr=False)
    token_keys_file: Path | None = None

    @property
    def file_policy(self) -> FilePolicy:
        hosts = frozenset(h.strip().lower() for h in self.file_hosts.split(",") if h.strip())
        return FilePolicy(
            enabled=self.files,
            max_bytes=self.file_max_mb * MIB,
            max_per_message=self.files_per_message,
            extra_hosts=hosts,
        )

    @field_validator("store")
    @classmethod
    def _known_store(cls, value: str) -> str:
        if not (value.startswith("rocksdb://") or value.startswith("memory://")):
            raise ValueError("must be rocksdb:// (the default, on a persistent volume) or memory:// (experiments)")
        return value

    @field_validator("inline_tokens", mode="before")
    @classmethod
    def _lower_inline(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @property
    def hook_event_concurrency(self) -> int:
        """Events of one hook in progress at once.

        Twice its GLPI requests, so that the waits of some (a changelog acknowledgement, a retry's pause) do not
        leave GLPI slots idle; 1 when the hook runs strictly in order.
        """
        return 1 if self.hook_concurrency == 1 else 2 * self.hook_concurrency


class IngressSettings(ToolSettings):
    """What only ``glpi-sync ingress`` uses, on top of :class:`ToolSettings`."""

    ingress_host: str = "0.0.0.0"
    ingress_port: int = Field(8080, ge=0, le=65535)
    #: Files ``<hook id>`` (signing secrets) and ``<hook id>.url-token`` (unsigned deliveries); environment
    #: variables ``GLPI_SYNC_WEBHOOK_SECRET_<ID>`` and ``GLPI_SYNC_WEBHOOK_URL_TOKEN_<ID>`` win.
    webhook_secrets_dir: Path = Path("/run/secrets/glpi-sync-webhooks")
    #: Bodies above this are answered 413 (a Chatwoot delivery is a few kB; the envelope must stay under 1 MB).
    ingress_max_body_bytes: int = Field(900_000, ge=1024, le=990_000)
    #: Seconds a delivery may wait for the broker's acknowledgement before it is answered 503 (Chatwoot retries).
    ingress_produce_timeout: float = Field(10.0, gt=0, le=120)
    #: Age a GLPI 11 webhook may have (GLPI stamps it when queued; its cron sends and retries it later).
    glpi_webhook_max_age: float = Field(86400.0, gt=0)
    #: ``Retry-After`` seconds sent with a 503.
    ingress_retry_after: int = Field(30, ge=1)
    #: Seconds a SIGTERM waits for requests in flight before the producer is flushed and the process exits.
    ingress_shutdown_timeout: float = Field(20.0, ge=0)
    #: The dashboard app may be framed by this Chatwoot when the hook names none (its ``chatwoot_url`` wins).
    chatwoot_url: str | None = None


class SettingsError(Exception):
    """The environment holds values the product cannot use; ``lines`` name each variable and what it accepts."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("; ".join(lines))
        self.lines = lines


S = TypeVar("S", bound=ToolSettings)


def _variable(model: type[BaseSettings], field: str) -> str:
    """The variable the user set for ``field`` (a field read from one of several variables names the one set)."""
    for info in model.model_fields.values():
        alias = info.validation_alias
        if not isinstance(alias, AliasChoices):
            continue
        choices = [str(choice).upper() for choice in alias.choices]
        if field.upper() in choices:
            present = {name.upper() for name in os.environ}
            return next((choice for choice in choices if choice in present), choices[0])
    return "GLPI_SYNC_" + field.upper()


def load(model: type[S], **overrides: Any) -> S:
    """``model`` read from the environment; raises :class:`SettingsError` with one readable line per variable."""
    try:
        return model(**overrides)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else ""
            got = error.get("input")
            shown = f" (got {got!r})" if isinstance(got, str | int | float) and "password" not in field else ""
            message = str(error["msg"]).removeprefix("Value error, ")
            lines.append(f"{_variable(model, field)}: {message}{shown}")
        raise SettingsError(lines) from None
