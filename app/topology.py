"""The topics a deployment uses, how many partitions each must have, and the start-up check that enforces it.

The input topic decides. Producers usually create it before the worker ever runs, so when it exists its partition
count is the deployment's, whatever ``GLPI_SYNC_PARTITIONS`` says; that setting only sizes an input topic the worker
creates itself. The control topic and every changelog must have the same count as the input: faust tables are
co-partitioned with their source, and operator commands must land on their hook's partition. Topics that exist
with another count cannot be fixed by the worker (Kafka cannot shrink a topic, and growing one moves keys), so the
worker refuses to start and says which topic is wrong and what to do.

:func:`plan_layout` is the pure decision; :func:`prepare_topics` reads the cluster, applies the plan (creating what is
missing when allowed) and returns the partition count, or raises :class:`TopologyError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from app.settings import ToolSettings, WorkerSettings

#: The worker's tables, one compacted changelog topic each (``<app_id>-<table>-changelog``).
TABLES = ("hooks", "contacts", "conversations", "messages", "parked", "deliveries", "replies", "traces")
COMPACTED = {"cleanup.policy": "compact", "retention.ms": "-1"}
Role = Literal["input", "control", "dlq", "changelog"]


@dataclass(frozen=True)
class TopicSpec:
    """One topic of the deployment: ``co_partitioned`` topics must have the input topic's partition count."""

    name: str
    role: Role
    config: Mapping[str, str] = field(default_factory=dict)

    @property
    def co_partitioned(self) -> bool:
        return self.role != "dlq"


def changelog_topic(app_id: str, table: str) -> str:
    return f"{app_id}-{table}-changelog"


def topic_specs(settings: ToolSettings) -> list[TopicSpec]:
    """Every topic the worker reads or writes, input first."""
    specs = [
        TopicSpec(settings.topic, "input"),
        TopicSpec(settings.control_topic, "control"),
        TopicSpec(settings.dlq_topic, "dlq"),
    ]
    specs += [TopicSpec(changelog_topic(settings.app_id, table), "changelog", COMPACTED) for table in TABLES]
    return specs


@dataclass(frozen=True)
class LayoutPlan:
    """What the start-up check found: the deployment's partition count, what to create, and what is wrong."""

    partitions: int
    to_create: list[tuple[TopicSpec, int]]
    mismatched: list[str]
    missing: list[str]

    @property
    def ok(self) -> bool:
        return not self.mismatched and not self.missing

    @property
    def problems(self) -> list[str]:
        """One line per wrong topic, then the fix; empty when the layout works."""
        lines = self.mismatched + self.missing
        if self.mismatched:
            lines.append(
                "fix: these topics were made for another partition count. If they hold the state of a deployment "
                "you still run, give this one its own GLPI_SYNC_APP_ID and GLPI_SYNC_CONTROL_TOPIC; otherwise "
                "delete them (kafka-topics.sh --delete --topic NAME) and start the worker again: it recreates "
                f"them with {self.partitions} partitions (mappings are then rebuilt by lookups in GLPI, never "
                "duplicated)"
            )
        return lines


def plan_layout(existing: Mapping[str, int], settings: WorkerSettings) -> LayoutPlan:
    """Decide the partition count and the topics to create from ``existing`` (topic name → partition count)."""
    specs = topic_specs(settings)
    input_name = specs[0].name
    partitions = existing.get(input_name, settings.partitions)
    source = (
        f"the input topic {input_name} has {partitions}"
        if input_name in existing
        else f"GLPI_SYNC_PARTITIONS is {partitions} (the input topic does not exist yet)"
    )
    to_create: list[tuple[TopicSpec, int]] = []
    mismatched: list[str] = []
    missing: list[str] = []
    for spec in specs:
        count = existing.get(spec.name)
        wanted = partitions if spec.co_partitioned else 1
        if count is None and settings.create_topics:
            to_create.append((spec, wanted))
        elif count is None:
            missing.append(
                f"topic {spec.name} is missing and GLPI_SYNC_CREATE_TOPICS is false: create it with {wanted} "
                "partition(s) (deploy/k8s/components/strimzi-topics/topics.yaml) or let the worker create it"
            )
        elif spec.co_partitioned and count != partitions:
            mismatched.append(f"topic {spec.name} has {count} partition(s), but {source}")
    return LayoutPlan(partitions, to_create, mismatched, missing)


class TopologyError(Exception):
    """The topics on the cluster cannot work together; ``lines`` say which and how to fix it."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("; ".join(lines))
        self.lines = lines


async def prepare_topics(settings: WorkerSettings) -> LayoutPlan:
    """Read the cluster, create what is missing (when allowed) and return the plan; raises TopologyError."""
    from app.kafka_io import KafkaConnection, ensure_topics, topic_partitions

    conn = KafkaConnection.from_settings(settings)
    names = [spec.name for spec in topic_specs(settings)]
    plan = plan_layout(await topic_partitions(conn, names), settings)
    if not plan.ok:
        raise TopologyError(plan.problems)
    if plan.to_create:
        await ensure_topics(
            conn,
            {spec.name: count for spec, count in plan.to_create},
            replication=settings.replication_factor,
            configs={spec.name: dict(spec.config) for spec, _ in plan.to_create},
        )
        # Another worker may have created the same topics at the same moment with another count: check again.
        again = plan_layout(await topic_partitions(conn, names), settings)
        if again.mismatched:
            raise TopologyError(again.problems)
    return plan
