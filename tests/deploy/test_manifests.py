"""deploy/k8s: every layout rendered, every built-in object validated offline against the
Kubernetes schemas (kubernetes-validate), the CRDs' required fields checked, the config passes
``pgsource check``'s static validation, and the YAML is linted."""

from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from yamllint import linter
from yamllint.config import YamlLintConfig

from pgsource.config import parse_config
from pgsource.config.duration import parse_duration
from pgsource.config.model import TableConfig
from tests.deploy.render import render

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
LAYOUTS = {"root": K8S, "single": K8S / "overlays" / "single", "sharded": K8S / "overlays" / "sharded"}
VERSIONS = ["1.28.0", "1.31.0"]  # 1.28: the first with the apps.kubernetes.io/pod-index label
ENV = {"PG_DSN": "postgresql://pgsource:secret@db:5432/app", "IGGY_PASSWORD": "secret", "POD_ORDINAL": "1"}


def _workload(objects: list[dict]) -> dict:
    found = [o for o in objects if o["kind"] in ("Deployment", "StatefulSet")]
    assert len(found) == 1, [o["kind"] for o in found]
    return found[0]


def _config(objects: list[dict]) -> tuple[dict, str]:
    config_map = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "pgsource-config")
    return config_map, config_map["data"]["pgsource.yaml"]


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("version", VERSIONS)
def test_every_built_in_object_is_valid(layout, version):
    objects = render(LAYOUTS[layout])
    assert {o["kind"] for o in objects} >= {"ConfigMap", "Service", "PodDisruptionBudget"}
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)


def test_a_broken_object_is_caught_by_the_validator():
    """The check above can fail: a probe with a misspelt field is refused."""
    deployment = _workload(render(LAYOUTS["single"]))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpget"] = {"path": "/readyz"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[0], strict=True)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_probes_grace_resources_and_disruption_budget(layout):
    objects = render(LAYOUTS[layout])
    workload = _workload(objects)
    pod = workload["spec"]["template"]
    container = pod["spec"]["containers"][0]
    port = next(p for p in container["ports"] if p["name"] == "metrics")
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    raw = yaml.safe_load(_config(objects)[1])
    assert raw["metrics"]["port"] == port["containerPort"]
    stop_timeout = parse_duration(raw["supervisor"]["stop_timeout"])
    # the supervisor waits stop_timeout for workers, then up to 5 s more for the publisher
    assert pod["spec"]["terminationGracePeriodSeconds"] >= stop_timeout + 10
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts[raw["state"]["dir"]] == "state"
    assert "/run/pgsource/metrics" in mounts  # PROMETHEUS_MULTIPROC_DIR of the image, an emptyDir in memory
    budget = next(o for o in objects if o["kind"] == "PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    service = next(o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == "pgsource-metrics")
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["publishNotReadyAddresses"] is True  # a stalled pod is still scraped


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_the_config_map_passes_static_validation(layout):
    """As every replica reads it: each shard gets tables of its own, and together they are all the tables."""
    _, text = _config(render(LAYOUTS[layout]))
    raw = yaml.safe_load(text)
    listed = {TableConfig.model_validate(entry).qualified for entry in raw["source"]["tables"]}
    shards = []
    for ordinal in range(raw["shard"]["count"] if "shard" in raw else 1):
        config = parse_config(text, {**ENV, "POD_ORDINAL": str(ordinal)})
        assert config.readiness.stall_after == 60
        shards.append({table.qualified for table in config.source.tables})
        assert shards[-1], f"shard {ordinal} of {layout} would have no table"
    assert set().union(*shards) == listed and sum(map(len, shards)) == len(listed)


def test_the_sharded_layout_gives_each_replica_its_shard_and_its_volume():
    objects = render(LAYOUTS["sharded"])
    statefulset = _workload(objects)
    assert statefulset["kind"] == "StatefulSet"
    raw = yaml.safe_load(_config(objects)[1])
    assert raw["shard"]["count"] == statefulset["spec"]["replicas"]
    env = {e["name"]: e for e in statefulset["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["POD_ORDINAL"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['apps.kubernetes.io/pod-index']"
    assert [t["metadata"]["name"] for t in statefulset["spec"]["volumeClaimTemplates"]] == ["state"]
    assert not any("persistentVolumeClaim" in v for v in statefulset["spec"]["template"]["spec"]["volumes"])
    governing = next(o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == statefulset["spec"]["serviceName"])
    assert governing["spec"]["clusterIP"] == "None"
    single = _workload(render(LAYOUTS["single"]))
    assert single["spec"]["replicas"] == 1 and single["spec"]["strategy"]["type"] == "Recreate"


def _known_metric_names() -> set[str]:
    """Every family pgsource exports: the registry's, and the ones collected at scrape time."""
    import inspect

    import pgsource.metrics.registry as registry
    import pgsource.metrics.scrape as scrape

    text = inspect.getsource(registry) + inspect.getsource(scrape)
    names = set(re.findall(r'"(pgsource_[a-z0-9_]+)"', text))
    return names | {n + suffix for n in names for suffix in ("_bucket", "_count", "_sum")}


def test_service_monitor_and_prometheus_rules_have_their_required_fields():
    objects = render(K8S / "monitoring")
    service = next(o for o in render(LAYOUTS["single"]) if o["kind"] == "Service")
    monitor = next(o for o in objects if o["kind"] == "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["metadata"]["name"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    ports = {p["name"] for p in service["spec"]["ports"]}
    assert monitor["spec"]["endpoints"] and all(e["port"] in ports and e["path"] == "/metrics" for e in monitor["spec"]["endpoints"])
    rules = next(o for o in objects if o["kind"] == "PrometheusRule")
    assert rules["apiVersion"] == "monitoring.coreos.com/v1"
    known = _known_metric_names()
    alerts = []
    for group in rules["spec"]["groups"]:
        assert group["name"] and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert rule["alert"] and isinstance(rule["expr"], str) and rule["expr"].strip()
            assert rule["annotations"]["summary"]
            used = set(re.findall(r"pgsource_[a-z0-9_]+", rule["expr"]))
            assert used and used <= known, (rule["alert"], used - known)
            if "for" in rule:
                parse_duration(rule["for"])
            alerts.append(rule["alert"])
    for wanted in ("PgsourceSlotRetainedWalHigh", "PgsourceNotReady", "PgsourceOffsetAgeHigh", "PgsourceSendErrors"):
        assert wanted in alerts


def test_the_yaml_is_lint_clean():
    config = YamlLintConfig("extends: default\nrules:\n  line-length: {max: 130}\n  document-start: disable\n"
                            "  comments: {min-spaces-from-content: 1}\n  truthy: {check-keys: false}\n")
    problems = []
    for path in sorted(K8S.rglob("*.yaml")):
        problems += [f"{path.relative_to(K8S)}:{p.line}: {p.message}" for p in linter.run(path.read_text(), config)]
    assert not problems, "\n".join(problems)
