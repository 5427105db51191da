"""deploy/: manifests validate against the Kubernetes schemas (offline), CRDs have the fields their operators need,
the dashboard and alert queries name metrics the worker really exports, and the manifests agree with the code."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from app.metrics import IngressMetrics, Metrics
from app.settings import IngressSettings, WorkerSettings
from app.topology import TABLES, plan_layout, topic_specs

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.31.0"


OVERLAY = K8S / "overlays" / "strimzi-prometheus-operator"
EXAMPLES = K8S / "examples"


def kustomized(directory: Path) -> list[dict[str, Any]]:
    """The documents a kustomization lists (resources and components, followed into directories); no transforms."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for name in [*kustomization.get("resources", []), *kustomization.get("components", [])]:
        path = (directory / name).resolve()
        if path.is_dir():
            docs += kustomized(path)
        else:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def resources() -> list[dict[str, Any]]:
    """The overlay with every component, and the examples an operator edits and applies beside it."""
    examples = [d for f in sorted(EXAMPLES.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    return kustomized(OVERLAY) + examples


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in resources() if d["kind"] == kind]


CRD_SCHEMAS: dict[str, dict[str, Any]] = {
    # The fields the operators read (prometheus-operator, Strimzi); the rest of the CRD is optional.
    "ServiceMonitor": {
        "type": "object",
        "required": ["apiVersion", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "spec": {
                "type": "object",
                "required": ["selector", "endpoints"],
                "properties": {
                    "endpoints": {"type": "array", "minItems": 1, "items": {"type": "object", "required": ["port"]}}
                },
            },
        },
    },
    "PrometheusRule": {
        "type": "object",
        "required": ["apiVersion", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "spec": {
                "type": "object",
                "required": ["groups"],
                "properties": {
                    "groups": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["name", "rules"],
                            "properties": {
                                "rules": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["alert", "expr", "annotations"],
                                        "properties": {"for": {"type": "string", "pattern": "^[0-9]+[smh]$"}},
                                    },
                                }
                            },
                        },
                    }
                },
            },
        },
    },
    "KafkaTopic": {
        "type": "object",
        "required": ["apiVersion", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "kafka.strimzi.io/v1beta2"},
            "metadata": {
                "type": "object",
                "required": ["name", "labels"],
                "properties": {"labels": {"type": "object", "required": ["strimzi.io/cluster"]}},
            },
            "spec": {
                "type": "object",
                "required": ["topicName", "partitions", "replicas", "config"],
                "properties": {
                    "partitions": {"type": "integer", "minimum": 1},
                    "replicas": {"type": "integer", "minimum": 1},
                },
            },
        },
    },
}


@pytest.mark.parametrize("doc", resources(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_every_manifest_validates(doc: dict[str, Any]) -> None:
    if doc["kind"] in CRD_SCHEMAS:
        jsonschema.validate(doc, CRD_SCHEMAS[doc["kind"]])
    else:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def settings_from_configmap() -> WorkerSettings:
    (configmap,) = of_kind("ConfigMap")
    data = configmap["data"]
    fields = {name.upper() for name in WorkerSettings.model_fields}
    unknown = [k for k in data if k != "KAFKA_BOOTSTRAP_SERVERS" and k.removeprefix("GLPI_SYNC_") not in fields]
    assert unknown == []
    return WorkerSettings(
        _env_file=None,
        **{  # type: ignore[call-arg]
            ("kafka_bootstrap_servers" if k == "KAFKA_BOOTSTRAP_SERVERS" else k.removeprefix("GLPI_SYNC_").lower()): v
            for k, v in data.items()
        },
    )


def test_topics_match_what_the_worker_uses() -> None:
    settings = settings_from_configmap()
    declared = {t["spec"]["topicName"]: t["spec"] for t in of_kind("KafkaTopic")}
    for spec in topic_specs(settings):
        assert spec.name in declared, spec.name
        if spec.co_partitioned:
            assert declared[spec.name]["partitions"] == settings.partitions, spec.name
        for key, value in spec.config.items():
            assert declared[spec.name]["config"].get(key) == value, (spec.name, key)
    assert len([t for t in declared if t.endswith("-changelog")]) == len(TABLES)
    # The worker started against exactly these topics (GLPI_SYNC_CREATE_TOPICS=false) accepts them.
    existing = {name: spec["partitions"] for name, spec in declared.items()}
    assert plan_layout(existing, settings).problems == []


def test_the_ingress_deployment_reads_its_webhook_secrets_where_it_looks_and_drains_on_sigterm() -> None:
    (deployment,) = [d for d in of_kind("Deployment") if d["metadata"]["name"].endswith("ingress")]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["ingress"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["webhook-secrets"] == env["GLPI_SYNC_WEBHOOK_SECRETS_DIR"]
    secret_names = {s["metadata"]["name"] for s in of_kind("Secret")}
    (volume,) = [v for v in pod["volumes"] if v["name"] == "webhook-secrets"]
    assert volume["secret"]["secretName"] in secret_names
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert pod["terminationGracePeriodSeconds"] > IngressSettings().ingress_shutdown_timeout
    (service,) = [s for s in of_kind("Service") if s["metadata"]["name"] == deployment["metadata"]["name"]]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    (ingress,) = of_kind("Ingress")
    paths = ingress["spec"]["rules"][0]["http"]["paths"]
    assert [p["path"] for p in paths] == ["/webhooks/chatwoot/", "/webhooks/glpi/", "/dashboard/"]  # nothing else
    assert {p["backend"]["service"]["name"] for p in paths} == {service["metadata"]["name"]}
    assert env["GLPI_SYNC_WORKER_URL"].startswith("http://chatwoot-glpi-sync-metrics:")


def test_statefulset_probes_grace_and_security() -> None:
    (sts,) = of_kind("StatefulSet")
    settings = settings_from_configmap()
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["terminationGracePeriodSeconds"] > settings.glpi_timeout + settings.retry_budget
    assert pod["terminationGracePeriodSeconds"] > settings.stop_timeout  # the worker's own deadline comes first
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    assert settings.partitions % sts["spec"]["replicas"] == 0


def exported_metric_names() -> set[str]:
    registry = CollectorRegistry()
    Metrics(registry)
    IngressMetrics(registry)
    text = generate_latest(registry).decode()
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        names.add(name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        if kind == "counter":
            names.add(f"{name}_total")
    return names


def queries() -> list[str]:
    rules = [rule["expr"] for group in of_kind("PrometheusRule")[0]["spec"]["groups"] for rule in group["rules"]]
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "chatwoot-glpi-sync.json").read_text())
    return rules + [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


@pytest.mark.parametrize("query", queries())
def test_dashboard_and_alert_queries_name_real_metrics(query: str) -> None:
    used = set(re.findall(r"\bcwglpi_[a-z_]+", query))
    assert used, query
    assert used <= exported_metric_names(), used - exported_metric_names()


def test_dockerfile_runs_the_worker_as_non_root_pid_1() -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    final = dockerfile.rsplit("FROM ", 1)[1]
    assert re.search(r"^USER 10001", final, re.M)
    assert 'ENTRYPOINT ["glpi-sync"]' in final and 'CMD ["worker"]' in final
    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
    assert {"kafka", "glpi", "worker"} <= set(compose["services"])


def test_secrets_follow_the_hook_token_convention() -> None:
    """Hook tokens are files under the granted directory; the workers' own secrets are variables with valid names."""
    settings = settings_from_configmap()
    (sts,) = of_kind("StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    secrets = {s["metadata"]["name"]: s for s in of_kind("Secret")}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    hook_volume = next(v for v in volumes.values() if v.get("secret", {}).get("secretName", "").endswith("hook-tokens"))
    assert mounts[hook_volume["name"]]["mountPath"] == str(settings.hook_secrets_dir)
    assert hook_volume["secret"]["defaultMode"] == 0o440  # readable by the pod's fsGroup, the non-root worker
    assert pod["securityContext"]["fsGroup"] == 10001
    env_secrets = [e["secretRef"]["name"] for e in container["envFrom"] if "secretRef" in e]
    for name in env_secrets:  # Kubernetes silently skips keys that are not variable names
        assert all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) for key in secrets[name]["stringData"]), name
    assert any("GLPI_SYNC_ADMIN_TOKEN" in secrets[name]["stringData"] for name in env_secrets)
    assert settings.hook_config_source == "control" and settings.glpi_hosts


def test_metrics_are_scraped_while_pods_are_unready_and_deliberate_pauses_do_not_alert() -> None:
    (service,) = [s for s in of_kind("Service") if s["metadata"]["name"].endswith("metrics")]
    assert service["spec"]["publishNotReadyAddresses"] is True
    (rule,) = of_kind("PrometheusRule")
    paused = next(r for g in rule["spec"]["groups"] for r in g["rules"] if r["alert"] == "CwglpiHookPaused")
    assert 'kind!="operator"' in paused["expr"]


def test_the_base_applies_as_it_is_with_no_placeholder_secret() -> None:
    base = kustomized(K8S / "base")
    assert [d["kind"] for d in base if d["kind"] in ("Secret", "KafkaTopic", "ServiceMonitor", "PrometheusRule")] == []
    assert "replace-me" not in yaml.safe_dump_all(base)
    for doc in base:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    for kind in ("StatefulSet", "Deployment"):  # a plain Prometheus finds every pod by its annotations
        (workload,) = [d for d in base if d["kind"] == kind]
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        port = workload["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
        assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == str(port)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed here")
def test_kubectl_kustomize_renders_the_base_and_the_overlay() -> None:
    strimzi = {"KafkaTopic", "ServiceMonitor", "PrometheusRule"}
    for directory, kinds, creates in ((K8S / "base", set(), "true"), (OVERLAY, strimzi, "false")):
        out = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True, check=True)
        rendered = [d for d in yaml.safe_load_all(out.stdout) if d]
        assert "Secret" not in {d["kind"] for d in rendered}
        assert kinds <= {d["kind"] for d in rendered}
        assert {d["metadata"].get("namespace") for d in rendered if d["kind"] != "Namespace"} == {"chatwoot-glpi-sync"}
        (configmap,) = [d for d in rendered if d["kind"] == "ConfigMap"]
        assert configmap["data"]["GLPI_SYNC_CREATE_TOPICS"] == creates  # Strimzi owns its topics


def test_plain_prometheus_gets_the_same_rules_as_the_operator() -> None:
    (rule,) = of_kind("PrometheusRule")
    plain = yaml.safe_load((ROOT / "deploy" / "prometheus" / "rules.yml").read_text())
    assert plain == {"groups": rule["spec"]["groups"]}


def test_the_ingress_is_scraped_and_alerted_on_and_two_way_has_panels() -> None:
    monitors = {m["metadata"]["name"]: m for m in of_kind("ServiceMonitor")}
    (service,) = [s for s in of_kind("Service") if s["metadata"]["name"] == "chatwoot-glpi-sync-ingress"]
    ingress_monitor = monitors["chatwoot-glpi-sync-ingress"]
    assert ingress_monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert {e["port"] for e in ingress_monitor["spec"]["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}
    everything = " ".join(queries())
    for prefix in ("cwglpi_ingress_producer_up", "cwglpi_ingress_produce_errors", "cwglpi_twoway_lag_seconds"):
        assert prefix in everything
