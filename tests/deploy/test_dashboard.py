"""The Grafana dashboard (deploy/grafana), offline: every panel's query uses only metric families and
labels pgsource exports (read from pgsource/metrics), the panels the operators asked for are there,
and deploy/docker-compose.yml provisions it beside Prometheus (issue 23)."""

from __future__ import annotations

import ast
import inspect
import json
import re

from prometheus_client import Counter, Gauge, Histogram
from yamllint import linter
from yamllint.config import YamlLintConfig

import pgsource.metrics.scrape as scrape
from pgsource.metrics import Metrics
from tests.deploy.test_compose import DEPLOY, _compose, _mounts

DASHBOARD = DEPLOY / "grafana" / "dashboards" / "pgsource.json"
SCRAPE_LABELS = {"job", "instance"}  # added by Prometheus to every series it scrapes
# PromQL words that look like names: functions, aggregations, keywords
PROMQL = {"sum", "max", "min", "avg", "count", "rate", "irate", "increase", "histogram_quantile", "by", "without",
          "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset", "bool", "abs", "clamp_min",
          "delta", "deriv", "topk", "bottomk", "time", "vector", "scalar", "label_replace", "absent", "changes"}


def exported() -> dict[str, set[str]]:
    """Series name → its labels, as /metrics shows them: the registry's families (a histogram as
    _bucket with le, _sum, _count; a counter as _total) and the families the supervisor builds at scrape time."""
    series: dict[str, set[str]] = {}
    for family in vars(Metrics.get()).values():
        if isinstance(family, Histogram):
            labels = set(family._labelnames)
            series[family._name + "_bucket"] = labels | {"le"}
            series[family._name + "_sum"] = series[family._name + "_count"] = labels
        elif isinstance(family, Counter):
            series[family._name + "_total"] = set(family._labelnames)
        elif isinstance(family, Gauge):
            series[family._name] = set(family._labelnames)
    for node in ast.walk(ast.parse(inspect.getsource(scrape))):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "").endswith("MetricFamily"):
            labels = next((kw.value for kw in node.keywords if kw.arg == "labels"), None)
            series[node.args[0].value] = {element.value for element in labels.elts} if labels is not None else set()
    return series


def _panels() -> list[dict]:
    return json.loads(DASHBOARD.read_text())["panels"]


def _queries() -> list[tuple[str, str, str]]:
    return [(panel["title"], target["expr"], target.get("legendFormat", "")) for panel in _panels()
            for target in panel["targets"]]


def test_every_query_uses_only_what_pgsource_exports():
    series = exported()
    assert len(series) > 30
    problems = []
    for title, expr, legend in _queries():
        without_ranges = re.sub(r"\[[^\]]*\]", "", re.sub(r'"[^"]*"', '""', expr))
        names = set(re.findall(r"\bpgsource_[a-z0-9_]+", without_ranges))
        unknown = names - set(series)
        if unknown or not names:
            problems.append(f"{title}: {expr}: not exported: {sorted(unknown) or 'no pgsource metric at all'}")
            continue
        labels = set().union(*(series[name] for name in names)) | SCRAPE_LABELS
        used = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)\s*\"", expr))  # selectors {label="..."}
        for group in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
            used |= {label.strip() for label in group.split(",") if label.strip()}
        used |= set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend))
        words = set(re.findall(r"\b([a-z_]+)\s*\(", without_ranges)) - PROMQL
        if used - labels or words:
            problems.append(f"{title}: {expr}: labels {sorted(used - labels)} not on {sorted(names)}; words {sorted(words)}")
    assert not problems, "\n".join(problems)


def test_the_panels_operators_asked_for_are_there():
    queries = " ".join(expr for _, expr, _ in _queries())
    for wanted in ("pgsource_source_rows_read_total", "pgsource_cdc_commit_to_ack_seconds_bucket",
                   "pgsource_source_batches_in_flight", "pgsource_cdc_slot_retained_wal_bytes",
                   "pgsource_cdc_slot_wal_status_info", "pgsource_source_horizon_age_seconds",
                   "pgsource_health_ready_state", "pgsource_supervisor_worker_restarts_total"):
        assert wanted in queries, wanted
    assert "sum by (table) (rate(pgsource_source_rows_read_total" in queries  # per second, by table
    ids = [panel["id"] for panel in _panels()]
    assert len(ids) == len(set(ids))


def test_compose_provisions_the_dashboard_beside_prometheus():
    services = _compose()["services"]
    grafana = services["grafana"]
    assert grafana["profiles"] == services["prometheus"]["profiles"] == ["app"]
    assert "prometheus" in grafana["depends_on"]
    mounts = {target: source.removeprefix("./") for target, source in _mounts(grafana).items()}
    provisioning = DEPLOY / mounts["/etc/grafana/provisioning"]
    providers = _yaml(provisioning / "dashboards" / "pgsource.yml")["providers"]
    path = providers[0]["options"]["path"]
    assert (DEPLOY / mounts[path] / "pgsource.json").read_text() == DASHBOARD.read_text()
    [source] = _yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    prometheus_port = services["prometheus"]["ports"][0].rsplit(":", 1)[1]
    assert source["type"] == "prometheus" and source["url"] == f"http://prometheus:{prometheus_port}"
    uids = {panel["datasource"]["uid"] for panel in _panels()} | {
        target["datasource"]["uid"] for panel in _panels() for target in panel["targets"]}
    assert uids == {source["uid"]}
    config = YamlLintConfig("extends: default\nrules:\n  line-length: {max: 160}\n  document-start: disable\n"
                            "  comments: {min-spaces-from-content: 1}\n  truthy: {check-keys: false}\n")
    for path in provisioning.rglob("*.yml"):
        assert not list(linter.run(path.read_text(), config)), path


def _yaml(path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())
