"""Prerequisites checked before any worker starts (``pgsource check`` and ``pgsource run``).

Every problem is collected (one clear line each) instead of stopping at the first, so
a user fixes a configuration in one round.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pgsource.assignment import assign_units
from pgsource.config.model import Config
from pgsource.errors import PgSourceError, PrerequisiteError
from pgsource.pg import connect as pg
from pgsource.pg import replication as rep
from pgsource.pg.catalog import describe_table, server_setting
from pgsource.pg.horizon import TrackingKind, describe_tracking
from pgsource.pg.query import build_custom_query, build_poll_plan
from pgsource.polling import check_late_commit_guard


@dataclass
class CheckReport:
    problems: list[str] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)  # table → estimated bytes (pages × 8 kB)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_prerequisites(config: Config) -> CheckReport:
    """Connect, look every table up, plan it; CDC adds wal_level and replication checks."""
    report = CheckReport()
    source = config.source
    try:
        conn = pg.connect(source.connection_string, application_name="pgsource-check")
    except PgSourceError as exc:
        report.problems.append(str(exc))
        return report
    try:
        for table in source.tables:
            try:
                info = describe_table(conn, table.schema_, table.name)
                report.sizes[table.qualified] = max(info.pages, 1) * 8192
                if not source.cdc:
                    plan = build_poll_plan(
                        info,
                        table.tracking_column or source.tracking_column,
                        snake_case=source.snake_case_columns,
                        allow_non_unique=source.allow_non_unique_tracking,
                        processed_column=source.processed_column,
                        need_identity=source.delete_after_read or source.processed_column is not None,
                    )
                    if source.late_commits == "auto":
                        tracking = describe_tracking(conn, info, info.column(plan.tracking_column))
                        if tracking.kind is not TrackingKind.XID8:
                            lag = table.lag if table.lag is not None else source.lag
                            check_late_commit_guard(conn, config, table.qualified, tracking, lag)
            except PgSourceError as exc:
                report.problems.append(str(exc))
        if source.custom_query and not source.cdc:
            _check_custom_query(conn, config, report)
        if source.cdc:
            _check_cdc(conn, config, report)
        _check_connections(config, report)
    finally:
        conn.close()
    return report


def _check_custom_query(conn, config: Config, report: CheckReport) -> None:
    source = config.source
    query = build_custom_query(source.custom_query or "")
    with conn.cursor() as cur:
        try:
            cur.execute("BEGIN READ ONLY")
            cur.execute(f"SELECT * FROM ({query}) AS q LIMIT 0", {"offset": str(source.initial_offset), "limit": 0})
            columns = [d.name for d in cur.description]
            if source.tracking_column not in columns:
                report.problems.append(
                    f"source.custom_query: its result has no tracking_column {source.tracking_column!r}"
                    f" (columns: {', '.join(columns)})"
                )
        except pg.DatabaseError as exc:
            report.problems.append(f"source.custom_query: {str(exc).strip()}")
        finally:
            cur.execute("ROLLBACK")


def _check_cdc(conn, config: Config, report: CheckReport) -> None:
    source = config.source
    if source.cdc_backend == "pg_replicate":
        report.problems.append(
            "source.cdc_backend: 'pg_replicate' (Supabase ETL) has no Python package to install;"
            " `pip install pgsource[pg_replicate]` cannot provide it. Use cdc_backend: builtin."
        )
    level = server_setting(conn, "wal_level")
    if level != "logical":
        report.problems.append(
            f"PostgreSQL wal_level is {level!r}; CDC needs 'logical':"
            " ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL"
        )
    with conn.cursor() as cur:
        cur.execute("SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user")
        if not cur.fetchone()[0]:
            report.problems.append("the PostgreSQL user needs the REPLICATION attribute (ALTER ROLE ... REPLICATION)")
    assignment = assign_units(config, report.sizes)
    for worker, units in assignment.items():
        slot, publication = rep.slot_names(config, worker, len(assignment))
        missing = rep.publication_gaps(conn, publication, [unit.table for unit in units])
        if missing:
            report.problems.append(f"publication {publication} exists but lacks table(s) {', '.join(missing)}")
        state = rep.slot_state(conn, slot)
        if state is not None:
            state = rep.wait_until_free(conn, state)
            try:
                rep.check_slot(conn, state)
            except PrerequisiteError as exc:
                report.problems.append(str(exc))


def connections_needed(config: Config, workers: int) -> int:
    """Database connections the service holds at once: one per worker, two per streaming CDC worker
    (plus one while an initial snapshot runs)."""
    source = config.source
    per_worker = 1
    if source.cdc:
        per_worker += source.cdc_transport == "replication" or source.snapshot == "initial"
    return workers * per_worker


def _check_connections(config: Config, report: CheckReport) -> None:
    workers = len(assign_units(config, report.sizes))
    needed = connections_needed(config, workers)
    if needed > config.source.max_connections:
        report.problems.append(
            f"source.max_connections is {config.source.max_connections}, but {workers} worker(s) need {needed}"
            " database connections: lower workers or raise max_connections"
        )
