"""Worker configuration from the environment, validated once at start-up.

Every variable is documented in README.md ("Configuration"). Invalid values stop the worker with a message that
names the variable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GLPI_SYNC_", extra="ignore", frozen=True)

    kafka_bootstrap_servers: str = Field(
        "127.0.0.1:9092",
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "GLPI_SYNC_KAFKA_BOOTSTRAP_SERVERS"),
    )
    topic: str = "chatwoot.events"
    dlq_topic: str = "chatwoot.events.dlq"
    control_topic: str = "chatwoot.events.control"
    partitions: int = Field(8, ge=1, le=1000)
    app_id: str = "chatwoot-glpi-sync"
    data_dir: Path = Path("./data")
    store: str = "rocksdb://"
    http_port: int = Field(6066, ge=0, le=65535)
    http_host: str = "0.0.0.0"
    allow_http: bool = False
    chatwoot_url: str | None = None
    glpi_timeout: float = Field(15.0, gt=0)
    retry_budget: float = Field(45.0, ge=0)
    retry_base: float = Field(0.5, gt=0)
    resume_interval: float = Field(15.0, gt=0)
    session_timeout: float = Field(30.0, ge=6, le=300)
    max_inflight: int = Field(2000, ge=1)
    #: Events of one partition held in memory before its fetching pauses (a slow head holds back its acks).
    max_inflight_per_partition: int = Field(250, ge=2)
    create_topics: bool = True
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
    #: RocksDB memory per table partition (faust's defaults are a 2 GiB block cache and 3 x 64 MiB write buffers
    #: for *each* partition of *each* table; our tables are small).
    rocksdb_block_cache_mb: int = Field(8, ge=1)
    rocksdb_write_buffer_mb: int = Field(4, ge=1)
    liveness_stall_seconds: float = Field(600.0, gt=0)
    advertised_url: str | None = None
    #: Where the CLI (inspect, doctor, hook test, reset) reaches a worker; any worker of the group will do.
    worker_url: str = "http://127.0.0.1:6066"
    embedded_broker: bool = False
    replication_factor: int = Field(1, ge=1)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _strip_scheme(cls, value: str) -> str:
        return value.removeprefix("kafka://").strip()

    @property
    def broker_url(self) -> str:
        return ";".join(f"kafka://{server.strip()}" for server in self.kafka_bootstrap_servers.split(","))
