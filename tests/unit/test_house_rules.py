"""The house's boundaries, checked on the source (docs/architecture.md): a newcomer can trust the folders.

- Only ``pgsource/pg/`` talks to libpq: no module outside it calls a psycopg2 cursor or
  connection method (``cursor``, ``execute``, ``fetch*``, ``copy_*``, ``mogrify``, ``commit``,
  ``rollback``, replication calls) or sets ``autocommit``; they call ``pg/``'s functions.
  ``pgsource_testkit`` is exempt: it is the harness that starts the cluster and sets up its
  databases, not a path of a row.
- No SQL is built with an f-string, ``%`` or ``str.format``: statements are constants or are
  composed with ``psycopg2.sql`` (identifiers quoted, values bound), in the product, the
  testkit and the benchmarks alike.
- ``pgsource/`` never imports ``workers/``, and ``pg/`` imports nothing of pgsource above it
  but the error tree, the configuration's records and the naming of keys.
- Small modules with one job: at most 400 lines each, and functions of at most 60 lines;
  a longer function says why in its docstring, in a sentence that starts ``Why long:``
  (in ``pgsource/``, ``workers/`` and ``pgsource_testkit/``).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SIZED_FOLDERS = ("pgsource", "workers", "pgsource_testkit")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
LIBPQ_METHODS = {
    "cursor", "execute", "executemany", "fetchone", "fetchall", "fetchmany", "copy_expert", "copy_from",
    "copy_to", "mogrify", "commit", "rollback", "start_replication", "start_replication_expert",
    "send_feedback", "read_message", "consume_stream", "set_session", "set_isolation_level",
    "tpc_begin", "tpc_commit", "get_dsn_parameters", "get_backend_pid",
}
SQL_START = re.compile(
    r"^\s*(SELECT|INSERT|UPDATE|DELETE|CREATE|ALTER|DROP|COPY|SET|WITH|BEGIN|GRANT|REVOKE|TRUNCATE|VACUUM"
    r"|ANALYZE|SHOW|START_REPLICATION|CREATE_REPLICATION_SLOT|DROP_REPLICATION_SLOT|IDENTIFY_SYSTEM|PREPARE"
    r"|COMMIT|ROLLBACK|LOCK|NOTIFY|LISTEN)\b"
)


def _modules(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def _tree(path: Path) -> ast.AST:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(ROOT)}:{node.lineno}"


def _receiver(node: ast.Attribute) -> str:
    value = node.value
    return value.attr if isinstance(value, ast.Attribute) else value.id if isinstance(value, ast.Name) else ""


def test_only_pg_talks_to_libpq():
    offenders = []
    for path in _modules("pgsource", "workers"):
        relative = path.relative_to(ROOT).as_posix()
        if relative.startswith(("pgsource/pg/", "pgsource_testkit/")):
            continue
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in LIBPQ_METHODS:
                if node.func.attr == "commit" and _receiver(node.func) == "store":
                    continue  # FileStateStore.commit: the house's verb for a durable offset, not libpq's
                offenders.append(f"{_where(path, node)} .{node.func.attr}()")
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Attribute) and t.attr == "autocommit" for t in node.targets
            ):
                offenders.append(f"{_where(path, node)} .autocommit =")
    assert offenders == [], "\n".join(offenders)


def _string_start(node: ast.AST) -> str | None:
    """The leading text of a string-building expression, or None if it is not one."""
    if isinstance(node, ast.JoinedStr):
        first = node.values[0] if node.values else None
        return first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else ""
    return None


def test_no_sql_is_built_from_strings():
    offenders = []
    for path in _modules("pgsource", "workers", "bench", "tests"):
        for node in ast.walk(_tree(path)):
            text = None
            if isinstance(node, ast.JoinedStr):
                text = _string_start(node)
            elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod) and isinstance(node.left, ast.Constant):
                text = node.left.value if isinstance(node.left.value, str) else None
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format"
                  and isinstance(node.func.value, ast.Constant) and isinstance(node.func.value.value, str)):
                text = node.func.value.value  # sql.SQL("...").format(...) has a Call as receiver: not this
            if text and SQL_START.match(text):
                offenders.append(f"{_where(path, node)} {text.strip()[:60]!r}")
    assert offenders == [], "\n".join(offenders)


def test_the_library_never_imports_the_processes():
    offenders = []
    for path in _modules("pgsource"):
        for node in ast.walk(_tree(path)):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{_where(path, node)} {name}" for name in names if name.split(".")[0] == "workers"]
    assert offenders == [], "\n".join(offenders)


def test_pg_stands_on_nothing_above_it():
    # encode.names: the SELECT list spells a row's keys as the messages do (a pure function)
    allowed = ("pgsource.pg", "pgsource.errors", "pgsource.config", "pgsource.encode.names", "pgsource.lsn")
    offenders = []
    for path in _modules("pgsource/pg"):
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pgsource"):
                if not node.module.startswith(allowed):
                    offenders.append(f"{_where(path, node)} {node.module}")
    assert offenders == [], "\n".join(offenders)


def test_modules_have_at_most_400_lines():
    offenders = []
    for path in _modules(*SIZED_FOLDERS):
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_MODULE_LINES:
            offenders.append(f"{path.relative_to(ROOT)}: {lines} lines")
    assert offenders == [], "\n".join(offenders)


def test_functions_have_at_most_60_lines_or_say_why():
    offenders = []
    for path in _modules(*SIZED_FOLDERS):
        for node in ast.walk(_tree(path)):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_FUNCTION_LINES and "Why long:" not in (ast.get_docstring(node) or ""):
                offenders.append(f"{_where(path, node)} {node.name}: {lines} lines")
    assert offenders == [], "\n".join(offenders)
