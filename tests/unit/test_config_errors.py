"""Bad configuration through the real CLI: one clear line naming the key, exit 2, no traceback.

``pgsource check`` and ``pgsource run`` read the file the same way; both are run for every
case. The many generated cases (every key with a value of the wrong type, read off the
model, so a new key is covered the day it is added) go through one interpreter that calls
the CLI's ``main`` per file (``run_cli_many``): the same click entry point without a
second of start-up per case; a handful of cases also run as real ``pgsource`` processes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import typing
from enum import Enum
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from pgsource.config import model as m
from tests.support import REPO, run_cli

POLLING = {"connection_string": "postgresql://u@127.0.0.1:1/db", "mode": "polling", "tables": ["users"]}
CDC = {"connection_string": "postgresql://u@127.0.0.1:1/db", "mode": "cdc", "tables": ["users"]}
DURATIONS = {"poll_interval", "lag", "retry_delay", "send_timeout", "commit_interval", "restart_backoff",
             "restart_window", "stop_timeout", "heartbeat_timeout"}

_HARNESS = r"""
import io, json, sys, traceback
from workers.cli import main
out = []
for args in json.loads(sys.stdin.read()):
    err = io.StringIO()
    sys.stderr = err
    try:
        main(args, standalone_mode=True)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        code, _ = "traceback", err.write(traceback.format_exc())
    sys.stderr = sys.__stderr__
    out.append([code, err.getvalue()])
sys.stdout.write(json.dumps(out))
"""


def run_cli_many(invocations: list[list[str]]) -> list[tuple[object, str]]:
    """(exit code, stderr) of ``pgsource <args>`` for each invocation, in one interpreter."""
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", _HARNESS], input=json.dumps(invocations), cwd=str(REPO),
                          env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return [tuple(item) for item in json.loads(done.stdout)]


def _wrong_value(name: str, annotation) -> object:
    """A value of the wrong type for a field (a str where a number goes, a list where text goes...)."""
    args = typing.get_args(annotation) or (annotation,)
    if name in DURATIONS:
        return "soon"
    if typing.get_origin(annotation) is typing.Literal or any(isinstance(a, type) and issubclass(a, Enum) for a in args):
        return "bogus"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "not a section"
    if bool in args:
        return "perhaps"
    if int in args or float in args:
        return "many" if str not in args else [1]
    if any(typing.get_origin(a) is list for a in (annotation, *args)):  # list[str], list[str] | None
        return 5
    return [1]  # str


def _wrong_type_cases() -> list[tuple[str, dict]]:
    """(key, whole config) for every key of every section, each with a value of the wrong type."""
    cases = []
    sections = {"iggy": m.IggyConfig, "state": m.StateConfig, "metrics": m.MetricsConfig,
                "supervisor": m.SupervisorConfig, "log": m.LogConfig}
    for name, field in m.SourceConfig.model_fields.items():
        base = CDC if name in m.CDC_ONLY_KEYS else POLLING
        key = field.alias or name
        if key in ("connection_string_file", "password_file", "tables"):
            value = 5 if key == "tables" else [1]
        else:
            value = _wrong_value(key, field.annotation)
        source = {k: v for k, v in base.items() if not (key == "connection_string_file" and k == "connection_string")}
        cases.append((f"source.{key}", {"source": {**source, key: value}}))
    for section, model in sections.items():
        for name, field in model.model_fields.items():
            key = field.alias or name
            cases.append((f"{section}.{key}", {"source": POLLING, section: {key: _wrong_value(key, field.annotation)}}))
    for name, field in m.IggyTlsConfig.model_fields.items():
        cases.append((f"iggy.tls.{name}", {"source": POLLING, "iggy": {"tls": {name: _wrong_value(name, field.annotation)}}}))
    for name, field in m.TopicSettingsConfig.model_fields.items():
        cases.append((f"iggy.topic_settings.{name}",
                      {"source": POLLING, "iggy": {"topic_settings": {name: _wrong_value(name, field.annotation)}}}))
    for name, field in m.TableConfig.model_fields.items():
        key = field.alias or name
        table = {"name": "users", key: _wrong_value(key, field.annotation)}
        cases.append((f"source.tables[0].{key}", {"source": {**POLLING, "tables": [table]}}))
    cases.append(("workers", {"source": POLLING, "workers": "two"}))
    cases.append(("source.batch_size", {"source": {**POLLING, "batch_size": True}}))  # not 1
    cases.append(("workers", {"source": POLLING, "workers": True}))
    return cases


# (what, file text, the line expected on stderr): every other kind of mistake
OTHER_CASES = [
    ("unknown key", {"source": {**POLLING, "batch_sise": 10}}, "source.batch_sise: unknown key; did you mean 'batch_size'?"),
    ("unknown section", {"source": POLLING, "metric": {"port": 1}}, "metric: unknown key; did you mean 'metrics'?"),
    ("unknown table key", {"source": {**POLLING, "tables": [{"name": "u", "tracking": "id"}]}},
     "source.tables[0].tracking: unknown key; did you mean 'tracking_column'?"),
    ("unknown tls key", {"source": POLLING, "iggy": {"tls": {"ca": "x"}}}, "iggy.tls.ca: unknown key"),
    ("missing source", {"iggy": {}}, "source: required"),
    ("missing connection_string", {"source": {"mode": "polling", "tables": ["u"]}}, "source.connection_string: required"),
    ("missing mode", {"source": {"connection_string": "x", "tables": ["u"]}}, "source.mode: required"),
    ("missing table name", {"source": {**POLLING, "tables": [{"schema": "s"}]}}, "source.tables[0].name: required"),
    ("no tables", {"source": {**POLLING, "tables": []}}, "source.tables: list at least one table"),
    ("custom_query with several tables",
     {"source": {**POLLING, "tables": ["a", "b"], "custom_query": "SELECT * FROM t WHERE id > $1 LIMIT $2",
                 "initial_offset": 0}}, "custom_query with several tables must name $table"),
    ("delete_after_read with processed_column",
     {"source": {**POLLING, "delete_after_read": True, "processed_column": "done"}},
     "delete_after_read and processed_column exclude each other"),
    *[(f"cdc key {key} in polling", {"source": {**POLLING, key: value}},
       f"source.{key}: only read in mode: cdc, but mode is polling")
      for key, value in (("snapshot", "initial"), ("publication_name", "p"), ("replication_slot", "s"),
                         ("cdc_transport", "sql"), ("capture_operations", ["INSERT"]), ("on_missing_slot", "fail"))],
    *[(f"polling key {key} in cdc", {"source": {**CDC, key: value}}, f"source.{key}: only read in mode: polling, but mode is cdc")
      for key, value in (("tracking_column", "id"), ("initial_offset", 5), ("delete_after_read", True),
                         ("processed_column", "done"), ("late_commits", "off"), ("lag", "1s"))],
    ("table tracking_column in cdc", {"source": {**CDC, "tables": [{"name": "u", "tracking_column": "at"}]}},
     "source.tables[0].tracking_column: only read in mode: polling"),
    ("both connection strings", {"source": {**POLLING, "connection_string_file": "/etc/hostname"}},
     "source.connection_string, source.connection_string_file: give one of them, not both"),
    ("unreadable secret file", {"source": {**POLLING, "password_file": "/nonexistent/pw"}},
     "source.password_file: cannot read /nonexistent/pw: No such file or directory"),
    ("unreadable iggy secret file", {"source": POLLING, "iggy": {"password_file": "/nonexistent/pw"}},
     "iggy.password_file: cannot read /nonexistent/pw"),
    ("unreadable tls ca", {"source": POLLING, "iggy": {"tls": {"enabled": True, "ca_file": "/nonexistent/ca.pem"}}},
     "iggy.tls.ca_file: cannot read /nonexistent/ca.pem"),
    ("duration word", {"source": {**POLLING, "poll_interval": "soon"}}, "source.poll_interval: 'soon' is not a duration"),
    ("duration unit", {"source": {**POLLING, "poll_interval": "3d"}}, "source.poll_interval: '3d' is not a duration"),
    ("duration negative", {"source": {**POLLING, "poll_interval": -1}}, "source.poll_interval: -1 is negative"),
    ("duration nan", "source: {connection_string: x, mode: polling, tables: [u], poll_interval: .nan}\n",
     "source.poll_interval: nan is not a duration"),
    ("duration infinite", "source: {connection_string: x, mode: polling, tables: [u]}\nsupervisor: {stop_timeout: .inf}\n",
     "supervisor.stop_timeout: inf is not a duration"),
    ("three dotted parts", {"source": {**POLLING, "tables": ["a.b.c"]}}, "source.tables[0]: 'a.b.c': a dotted string is schema.table"),
    ("empty table name", {"source": {**POLLING, "tables": [""]}}, "source.tables[0]: '': empty schema or table name"),
    ("unclosed quoted name", {"source": {**POLLING, "tables": ['"a.b']}}, "a quoted name is not closed"),
    ("same table twice", {"source": {**POLLING, "tables": ["users", "public.users"]}}, "tables: listed more than once: users"),
    ("indistinguishable messages", {"source": {**POLLING, "tables": ["a.b", {"name": "a.b"}]}, "iggy": {"topic": "all"}},
     "a.b and \"a.b\" would both be sent to topic 'all' as table_name 'a.b'"),
    ("worker mapping names an unknown table", {"source": {**POLLING, "tables": ["a", "b"]}, "workers": {"w": ["a", "c"]}},
     "workers.w: table 'c' is not in source.tables"),
    ("slot name", {"source": {**CDC, "replication_slot": 'x"; DROP'}},
     "source.replication_slot: 'x\"; DROP': a replication slot name is 1 to 63 lower-case letters"),
    ("topic template", {"source": POLLING, "iggy": {"topic": "{tabel}"}}, "topic template knows {table} and {schema}"),
    *[(f"topic_settings {key} {value}", {"source": POLLING, "iggy": {"topic_settings": {key: value}}},
       f"iggy.topic_settings.{key}: {expected}")
      for key, value, expected in (
          ("max_size", "10XB", "'10XB' is not a size: use e.g. 1000000, '512MiB', '10GB'"),
          ("max_size", "1.5B", "'1.5B' is not a whole number of bytes"),
          ("max_size", 0, "0: give more than 0 and less than 2^64-1 bytes"),
          ("max_size", 2**64 - 1, f"{2**64 - 1}: give more than 0 and less than 2^64-1 bytes"),
          ("max_size", "limited", "'limited' is not a size"),
          ("message_expiry", "3w", "'3w' is not a duration: use e.g. '500ms', '30s', '5m', '1h', '7d'"),
          ("message_expiry", 0, "0: give at least 1 microsecond"),
          ("message_expiry", "forever", "'forever' is not a duration"),
          ("compression", "zstd", "Input should be 'none' or 'gzip'"),
      )],
    ("address", {"source": POLLING, "iggy": {"address": "localhost"}}, "iggy.address: 'localhost' is not host:port"),
    ("a worker named publisher", {"source": POLLING, "workers": {"publisher": ["users"]}},
     "workers: 'publisher' is the publisher process's name"),
    ("duplicate key", "source: {connection_string: x, mode: polling, tables: [u]}\nsource: {mode: cdc}\n",
     "line 2: key 'source' is given twice in the same mapping"),
    ("not YAML", "source: {mode: [polling}\n", "not valid YAML/JSON"),
    ("a list, not a mapping", "- source\n", "expected a mapping with a 'source:' section"),
    ("empty file", "", "expected a mapping with a 'source:' section"),
    ("only a comment", "# nothing\n", "expected a mapping with a 'source:' section"),
    ("not text", b"\xff\xfe\x00source", "not a text file (not UTF-8 at byte 0)"),
    ("unset variable", "source: {connection_string: '${PGSOURCE_TEST_UNSET}', mode: polling, tables: [u]}\n",
     "source.connection_string: environment variable PGSOURCE_TEST_UNSET is not set"),
]


def _write(tmp_path: Path, name: str, content) -> Path:
    path = tmp_path / f"{name.replace(' ', '_').replace('.', '_')}.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return path


def _problem(code, stderr: str, expected: str, what: str, one_line: bool = False) -> str | None:
    """What is wrong with one answer, or None."""
    lines = [line for line in stderr.splitlines()[1:] if line.strip()]
    if code != 2 or "Traceback" in stderr or expected not in stderr or not stderr.startswith("configuration error in "):
        return f"{what}: exit {code}, expected {expected!r}:\n{stderr}"
    if one_line and len(lines) != 1:
        return f"{what}: one line per mistake, got {lines}"
    return None


def _assert_clear(code, stderr: str, expected: str, what: str) -> None:
    problem = _problem(code, stderr, expected, what)
    assert problem is None, problem


@pytest.mark.timeout(300)
def test_every_key_with_a_wrong_type_is_named(tmp_path):
    cases = _wrong_type_cases()
    assert len(cases) > 60  # every key of every section, tables' keys, tls keys
    paths = [_write(tmp_path, key, config) for key, config in cases]
    results = run_cli_many([[command, "--config", str(path)] for path in paths for command in ("check", "run")])
    problems = [_problem(*results[2 * index + offset], f"  {key}: ", f"{command} {key}", one_line=True)
                for index, (key, _) in enumerate(cases) for offset, command in enumerate(("check", "run"))]
    problems = [problem for problem in problems if problem]
    assert not problems, "\n".join(problems)


@pytest.mark.timeout(300)
def test_every_other_mistake_gets_one_clear_line(tmp_path):
    paths = [_write(tmp_path, what, content) for what, content, _ in OTHER_CASES]
    results = run_cli_many([[command, "--config", str(path)] for path in paths for command in ("check", "run")])
    problems = [_problem(*results[2 * index + offset], expected, f"{command} {what}")
                for index, (what, _, expected) in enumerate(OTHER_CASES) for offset, command in enumerate(("check", "run"))]
    problems = [problem for problem in problems if problem]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("what", ["empty file", "not YAML", "not text", "cdc key snapshot in polling"])
def test_real_processes_exit_2_without_a_traceback(tmp_path, what):
    content, expected = next((content, expected) for name, content, expected in OTHER_CASES if name == what)
    path = _write(tmp_path, what, content)
    for command in ("check", "run"):
        result = run_cli(command, "--config", str(path))
        _assert_clear(result.returncode, result.stderr, expected, f"{command} {what}")
        assert result.stdout == ""


def test_a_missing_config_file_is_named(tmp_path):
    code, stderr = run_cli_many([["check", "--config", str(tmp_path / "nope.yaml")]])[0]
    _assert_clear(code, stderr, f"cannot read config file {tmp_path / 'nope.yaml'}: No such file or directory", "missing")
