"""deploy/docker-compose.yml, offline (no container engine here): the real Iggy image, PostgreSQL
with logical replication, pgsource built from deploy/Dockerfile with deploy/pgsource.yaml, and
Prometheus scraping pgsource's metrics port; the config pgsource gets there passes ``pgsource
check``'s static validation, and the YAML is linted."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from urllib.parse import urlsplit

import yaml
from yamllint import linter
from yamllint.config import YamlLintConfig

from pgsource.config import parse_config
from pgsource.config.duration import parse_duration

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def _interpolate(value: str) -> str:
    """Compose's own ``${VAR:-default}`` with nothing set in the shell: the defaults."""
    return re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: m[2] or "", value)


def _mounts(service: dict) -> dict[str, str]:
    """Container path → host path (relative to deploy/) or volume name."""
    out = {}
    for entry in service.get("volumes", []):
        source, target, *_ = entry.split(":")
        out[target] = source
    return out


def _dockerfile_cmd() -> list[str]:
    line = next(line for line in (DEPLOY / "Dockerfile").read_text().splitlines() if line.startswith("CMD "))
    return yaml.safe_load(line.removeprefix("CMD "))


def _pgsource_config():
    """The config file pgsource reads in the stack, with the environment compose gives it."""
    service = _compose()["services"]["pgsource"]
    env = {name: _interpolate(str(value)) for name, value in service["environment"].items()}
    mounts = _mounts(service)
    cmd = _dockerfile_cmd()
    command = service.get("command", cmd)
    path = command[command.index("--config") + 1]
    text = (DEPLOY / mounts[path]).read_text()
    return text, parse_config(text, env)


def test_the_services_are_the_real_iggy_postgres_with_logical_wal_pgsource_and_prometheus():
    services = _compose()["services"]
    assert set(services) >= {"iggy", "postgres", "pgsource", "prometheus"}
    assert services["iggy"]["image"] == "apache/iggy:0.9.0"
    command = services["postgres"]["command"]
    settings = dict(command[i + 1].split("=", 1) for i, word in enumerate(command) if word == "-c")
    assert settings["wal_level"] == "logical"
    assert int(settings["max_replication_slots"]) >= 1 and int(settings["max_wal_senders"]) >= 1
    pgsource = services["pgsource"]
    assert pgsource["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
    assert (DEPLOY / "Dockerfile").exists()
    assert pgsource["depends_on"] == {"postgres": {"condition": "service_healthy"},
                                      "iggy": {"condition": "service_healthy"}}
    # the image keeps PROMETHEUS_MULTIPROC_DIR here; the stack gives it memory
    assert any(entry.split(":")[0] == "/run/pgsource/metrics" for entry in pgsource["tmpfs"])
    assert _mounts(pgsource)["/var/lib/pgsource"] == "pgsource-state"
    # the servers alone (what tests/real starts) stay outside the app profile
    assert "profiles" not in services["postgres"] and "profiles" not in services["iggy"]
    assert services["prometheus"]["profiles"] == pgsource["profiles"] == ["app"]


def test_the_config_pgsource_gets_passes_static_validation_and_points_at_the_stack():
    text, config = _pgsource_config()
    services = _compose()["services"]
    dsn = urlsplit(config.source.connection_string)
    assert dsn.hostname == "postgres" and dsn.port == 5432 and dsn.path == "/app"
    postgres_env = services["postgres"]["environment"]
    assert dsn.username == postgres_env["POSTGRES_USER"]
    assert dsn.password == _interpolate(postgres_env["POSTGRES_PASSWORD"])
    iggy_host, iggy_port = config.iggy.address.rsplit(":", 1)
    iggy_env = services["iggy"]["environment"]
    assert iggy_host == "iggy" and iggy_port == iggy_env["IGGY_TCP_ADDRESS"].rsplit(":", 1)[1]
    assert config.iggy.password == _interpolate(iggy_env["IGGY_ROOT_PASSWORD"])
    assert config.iggy.username == iggy_env["IGGY_ROOT_USERNAME"]
    assert config.state.dir == "/var/lib/pgsource"
    pgsource = services["pgsource"]
    assert parse_duration(pgsource["stop_grace_period"]) > config.supervisor.stop_timeout + 5
    schema = "\n".join(path.read_text() for path in sorted((DEPLOY / "postgres").glob("*.sql")))
    created = set(re.findall(r"CREATE TABLE (?:IF NOT EXISTS )?([\w.]+)", schema))
    for table in config.source.tables:  # the demo's tables are created by the init scripts
        assert table.name in created, table.name


def test_prometheus_scrapes_the_metrics_port_pgsource_serves():
    _, config = _pgsource_config()
    services = _compose()["services"]
    prometheus = services["prometheus"]
    flags = dict(arg.removeprefix("--").split("=", 1) for arg in prometheus["command"] if "=" in arg)
    mounted = _mounts(prometheus)[flags["config.file"]]
    scrape = yaml.safe_load((DEPLOY / mounted).read_text())
    jobs = [job for job in scrape["scrape_configs"] if job["job_name"] == "pgsource"]
    assert len(jobs) == 1
    job = jobs[0]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [target for group in job["static_configs"] for target in group["targets"]]
    assert targets == [f"pgsource:{config.metrics.port}"]
    pgsource = services["pgsource"]
    published = [_interpolate(p).rsplit(":", 1)[1] for p in pgsource["ports"]]
    assert str(config.metrics.port) in published
    probe = shlex.join(pgsource["healthcheck"]["test"])
    assert f"127.0.0.1:{config.metrics.port}/healthz" in probe


def test_the_compose_yaml_is_lint_clean():
    config = YamlLintConfig("extends: default\nrules:\n  line-length: {max: 160}\n  document-start: disable\n"
                            "  comments: {min-spaces-from-content: 1}\n  truthy: {check-keys: false}\n")
    problems = []
    for name in ("docker-compose.yml", "prometheus.yml", "pgsource.yaml"):
        problems += [f"{name}:{p.line}: {p.message}" for p in linter.run((DEPLOY / name).read_text(), config)]
    assert not problems, "\n".join(problems)
