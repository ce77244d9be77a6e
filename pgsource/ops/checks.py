"""Prerequisites checked before any worker starts (``pgsource check`` and ``pgsource run``).

Every problem is collected (one clear line each) instead of stopping at the first, so
a user fixes a configuration in one round.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pgsource.cdc.payload import cdc_payload_problem
from pgsource.cdc.slot_history import identity_problem, missing_slot_problem, table_identity_problem
from pgsource.config.model import Config
from pgsource.errors import ConfigError, PgSourceError, PrerequisiteError, SourceUnavailable
from pgsource.ops.shape_checks import check_row_filter, check_shapes
from pgsource.pg import connect as pg
from pgsource.pg import horizon as hz
from pgsource.pg import publications as pubs
from pgsource.pg import replication as rep
from pgsource.pg.catalog import can_replicate, describe_table, missing_privileges, server_setting
from pgsource.pg.custom_query import build_custom_probe, build_custom_query
from pgsource.pg.grants import (
    build_role_grant,
    build_schema_grant,
    build_table_grants,
    owned_sequence,
    schema_usage_missing,
    sequence_select_missing,
)
from pgsource.pg.horizon import XID8_OID, TrackingKind, can_see_all_sessions, describe_tracking
from pgsource.pg.indexes import build_create_index, has_keyset_index
from pgsource.pg.plan import CTID
from pgsource.pg.statements import result_columns
from pgsource.plan.assignment import WorkUnit, assign_units, plan_cdc
from pgsource.plan.sharding import check_shard, foreign_captures, unsharded_name
from pgsource.polling.guard import check_late_commit_guard
from pgsource.polling.reader import PollSettings, plan_polling_table
from pgsource.rows.keyset import ReadSettings
from pgsource.state import FileStateStore, SlotProgress


@dataclass
class CheckReport:
    problems: list[str] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)  # table → estimated bytes (pages × 8 kB)
    notes: list[str] = field(default_factory=list)
    assignment: dict[str, list[WorkUnit]] | None = None  # CDC: worker → units, from config and database

    warnings: list[str] = field(default_factory=list)  # not in the way of a start, worth knowing (run logs them)
    grants: list[str] = field(default_factory=list)  # what the user lacks, as SQL to copy (check prints it)
    config_error: bool = False  # a problem lies in the configuration itself (exit 2, not 3)
    unreachable: bool = False  # PostgreSQL could not be reached at all (exit 75, as in every command)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def exit_code(self) -> int:
        if self.unreachable:
            return SourceUnavailable.exit_code
        return ConfigError.exit_code if self.config_error else PrerequisiteError.exit_code


def check_prerequisites(config: Config) -> CheckReport:
    """Connect, look every table up, plan it; CDC adds wal_level and replication checks."""
    report = CheckReport()
    source = config.source
    try:
        conn = pg.connect(source.connection_string, application_name="pgsource-check")
    except PgSourceError as exc:
        report.problems.append(str(exc))
        report.config_error = isinstance(exc, ConfigError)
        report.unreachable = exc.exit_code == SourceUnavailable.exit_code
        return report
    try:
        horizons: list[tuple[str, object]] = []  # (table, tracking) read behind a late-commit horizon
        missing: dict[str, str] = {}  # CDC: a table not found, which a slot's record may explain better
        for table in source.tables:
            try:
                info = describe_table(conn, table.schema_, table.name)
                report.sizes[table.qualified] = max(info.pages, 1) * 8192
                if not source.cdc and not source.custom_query:
                    _, plan = plan_polling_table(conn, table, ReadSettings.of(source), PollSettings.of(source), info)
                    _advise(conn, config, report, info, plan)
                    tracking = None
                    if source.late_commits == "auto":
                        tracking = describe_tracking(conn, info, info.column(plan.tracking_column),
                                                     table.tracking_filled_by or source.tracking_filled_by)
                        if tracking.kind is not TrackingKind.XID8:
                            lag = table.lag if table.lag is not None else source.lag
                            check_late_commit_guard(conn, config, table.qualified, tracking, lag)
                            horizons.append((table.qualified, tracking))
                    _check_polling_privileges(conn, config, info, tracking)
                    check_row_filter(conn, table)
            except PgSourceError as exc:
                report.problems.append(str(exc))
                missing[table.qualified] = str(exc)
        report.notes += horizon_notes(conn, config, horizons)
        if source.custom_query and not source.cdc:
            _check_custom_query(conn, config, report)
        if source.cdc:
            _check_cdc(conn, config, report)
            explained = _check_captured_tables(conn, config, report)
            report.problems = [p for p in report.problems if not any(missing.get(t) == p for t in explained)]
        _check_connections(config, report)
        shard_problem = check_shard(config)
        if shard_problem:
            report.problems.append(shard_problem)
    finally:
        conn.close()
    return report


def _advise(conn, config: Config, report: CheckReport, info, plan) -> None:
    """Beyond the problems: a table no index serves (a warning with the CREATE INDEX that would), and
    the grants polling the table needs and the user lacks, as SQL (issue 23). Read from the catalog
    by oid, so that it works without USAGE on the table's schema (itself a grant to print)."""
    source = config.source
    if not has_keyset_index(conn, info.oid, plan.tracking_column):
        index = build_create_index(conn, info.schema, info.name, tuple(c for c in plan.position_columns if c != CTID))
        report.warnings.append(
            f"table {info.qualified}: no index leads with its tracking column {plan.tracking_column!r}: every batch"
            f" scans the whole table, slow once it is large; the index that serves the keyset query: {index}")
    wanted: list[tuple[str | None, str]] = [(None, "SELECT")]
    if source.delete_after_read:
        wanted.append((None, "DELETE"))
    if source.processed_column:
        wanted.append((source.processed_column, "UPDATE"))
    lacking = [item for item in wanted if missing_privileges(conn, info.oid, [item])]
    no_usage = schema_usage_missing(conn, info.schema)
    sequence, roles = None, []
    if source.late_commits == "auto" and info.column(plan.tracking_column).base_oid != XID8_OID:
        owned = owned_sequence(conn, info.oid, plan.tracking_column)
        if owned is not None and sequence_select_missing(conn, owned[1]):
            sequence = owned[0]
        elif owned is None and not no_usage:  # a nextval() default of a sequence the column does not own
            tracking = describe_tracking(conn, info, info.column(plan.tracking_column))
            if tracking.kind is TrackingKind.SEQUENCE and missing_privileges(conn, info.oid, [], tracking.sequence):
                sequence = tracking.sequence
        if not can_see_all_sessions(conn):
            roles.append(build_role_grant(conn, "pg_read_all_stats"))
    if no_usage:
        report.grants.append(build_schema_grant(conn, info.schema))
    if lacking or sequence:
        report.grants += build_table_grants(conn, info.schema, info.name, lacking, sequence)
    report.grants += [grant for grant in roles if grant not in report.grants]
    if no_usage:  # nothing else of the table can be checked without it
        raise PrerequisiteError(f"table {info.qualified}: the PostgreSQL user lacks USAGE on schema {info.schema};"
                                f" grant it ({build_schema_grant(conn, info.schema)})")


def _check_polling_privileges(conn, config: Config, info, tracking) -> None:
    """SELECT (and DELETE or UPDATE of processed_column) on the table, SELECT on the sequence the
    late-commit horizon reads: found now, not as a worker failing in its first statement."""
    source = config.source
    wanted: list[tuple[str | None, str]] = [(None, "SELECT")]
    if source.delete_after_read:
        wanted.append((None, "DELETE"))
    if source.processed_column:
        wanted.append((source.processed_column, "UPDATE"))
    sequence = tracking.sequence if tracking is not None and tracking.kind is TrackingKind.SEQUENCE else None
    lacking = missing_privileges(conn, info.oid, wanted, sequence)
    if lacking:
        raise PrerequisiteError(
            f"table {info.qualified}: the PostgreSQL user lacks {', '.join(lacking)};"
            f" grant {'it' if len(lacking) == 1 else 'them'} (e.g. GRANT SELECT ON {info.qualified}"
            f"{', ' + sequence if sequence else ''} TO <user>)"
        )


def horizon_notes(conn, config: Config, horizons: list[tuple[str, object]]) -> list[str]:
    """What ``check`` can see in advance of sessions the horizon cannot read: roles (or the server)
    with ``track_activities = off``, and roles whose TimeZone differs from the one a timestamp
    column is compared in. A superuser's own ``SET`` in a session cannot be seen in advance."""
    guarded = [name for name, tracking in horizons if tracking.kind in (TrackingKind.TIME, TrackingKind.SEQUENCE)]
    if not guarded:
        return []
    notes = []
    held = f"pgsource holds the committed offset of {', '.join(guarded)} where such a session is first seen, for as"
    held += " long as it exists (rows are still sent; docs/delivery.md, \"Rows that commit late\")"
    if server_setting(conn, "track_activities") == "off":
        notes.append(f"track_activities is off for pgsource's own session (the server's, the database's or the role's"
                     f" setting): sessions with it off hide their transactions; {held}")
    for role, database, value in hz.role_settings(conn, "track_activities"):
        if value.strip().lower() in ("off", "false", "no", "0", "of", "f", "n"):
            who = f"role {role}" if role else "every role"
            where = f"in database {database}" if database else "in every database"
            notes.append(f"track_activities is off for {who} {where}: its sessions hide their transactions; {held}")
    local = [name for name, tracking in horizons
             if tracking.kind is TrackingKind.TIME and tracking.type_oid != hz.TIMESTAMPTZ_OID and not tracking.zone]
    if local:
        zone = hz.database_time_zone(config.source.connection_string)
        for role, database, value in hz.role_settings(conn, "TimeZone"):
            if role and value.strip("'\" ") != zone:
                notes.append(
                    f"role {role} has TimeZone {value!r} {'in this database' if database else 'in every database'}, the"
                    f" database's is {zone!r}: if it writes {', '.join(local)}, its local times are another zone's;"
                    " use timestamptz, or a source.lag that covers the difference")
    return notes


def _check_custom_query(conn, config: Config, report: CheckReport) -> None:
    """Run the query (for each table with $table) with LIMIT 0 in a read-only transaction."""
    import datetime as dt

    source = config.source
    now = dt.datetime.now(dt.timezone.utc)
    params = {"offset": str(source.initial_offset), "limit": 0, "now": now, "now_unix": int(now.timestamp())}
    for table in source.tables or [None]:
        where = f"source.custom_query (for table {table.qualified})" if table is not None else "source.custom_query"
        tracking = (table.tracking_column if table is not None else None) or source.tracking_column
        query = build_custom_query(source.custom_query or "", (table.schema_, table.name) if table else None, conn)
        try:
            columns = result_columns(conn, build_custom_probe(query), params)
        except pg.DatabaseError as exc:
            report.problems.append(f"{where}: {str(exc).strip()}")
            continue
        if tracking not in columns:
            report.problems.append(
                f"{where}: its result has no tracking_column {tracking!r} (columns: {', '.join(columns)})"
            )


def cdc_table_problems(conn, config: Config) -> list[str]:
    """What a table's CDC settings need of it: a payload column's type and the replica identity
    its UPDATEs need. (Column lists and row filters: ``review_shapes``, per publication.)"""
    source = config.source
    captured = {op.value for op in source.capture_operations}
    problems = []
    for table in source.tables:
        try:
            info = describe_table(conn, table.schema_, table.name)
        except PgSourceError:
            continue  # reported with the table already
        if source.payload_column:
            problems.append(cdc_payload_problem(info, source.payload_column, source.payload_format.value, "UPDATE" in captured))
    return [problem for problem in problems if problem]


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
    if not can_replicate(conn):
        report.problems.append("the PostgreSQL user needs the REPLICATION attribute (ALTER ROLE ... REPLICATION)")
        report.grants.append(build_role_grant(conn, "REPLICATION"))
    slots = rep.existing_slots(conn)
    relations = pubs.describe_relations(conn, source.tables)
    report.problems += cdc_table_problems(conn, config)
    _check_capturable(relations, report)
    publications = pubs.load_publications(conn, source.publication_name)
    if config.shard is not None:  # every shard's publications: a table captured by another shard is refused
        report.problems += foreign_captures(config, pubs.load_publications(conn, unsharded_name(source.publication_name, config)))
    try:
        plan = plan_cdc(config, publications, slots)
    except PrerequisiteError as exc:
        report.problems.extend(str(exc).splitlines())
        return
    report.assignment = plan.assignment
    report.notes.extend(plan.notes)
    store = FileStateStore(config.state.dir)
    identity = rep.system_identity(conn)
    for units in plan.assignment.values():
        publication = publications.get(units[0].publication)
        check_shapes(conn, publication, units[0].publication, [unit.table for unit in units], relations, report)
        if publication is not None:
            _check_publication(publication, units[0].publication, [unit.table for unit in units], relations, report)
        _check_slot(conn, config, store, identity, units[0].slot, report)


def _check_publication(publication, name: str, tables: list, relations: dict, report: CheckReport) -> None:
    """The publication holds the slot's tables, or pgsource may add them; partitions publish via the root."""
    lacking = [t.qualified for t in tables if not publication.holds(t)]
    if lacking and not publication.owned:
        report.problems.append(
            f"publication {name} lacks {', '.join(lacking)} and pgsource may not add them (it does not own"
            f" the publication): ALTER PUBLICATION {name} ADD TABLE {', '.join(lacking)}, as its owner"
        )
    partitioned = [t.qualified for t in tables if relations.get(t.qualified) and relations[t.qualified].partitioned]
    if partitioned and not publication.via_root:
        report.problems.append(pubs.via_root_problem(name, partitioned))


def _check_slot(conn, config: Config, store: FileStateStore, identity, slot: str, report: CheckReport) -> None:
    """A slot that exists belongs to this database and its record; a missing one may be created."""
    try:
        stored = store.load(f"cdc/{slot}", SlotProgress)
    except PgSourceError as exc:
        report.problems.append(str(exc))
        return
    where = f"state {store.path(f'cdc/{slot}')}"
    state = rep.slot_state(conn, slot)
    if state is None:
        problem = missing_slot_problem(slot, stored, where)
        if problem is not None and config.source.on_missing_slot != "snapshot":
            report.problems.append(problem)
        return
    problem = identity_problem(slot, stored, identity, where)
    if problem is not None:
        report.problems.append(problem)
    state = rep.wait_until_free(conn, state)
    try:
        rep.check_slot(conn, state)
    except PrerequisiteError as exc:
        report.problems.append(str(exc))


def _check_captured_tables(conn, config: Config, report: CheckReport) -> set[str]:
    """Every slot record in state.dir: a configured table it captured that is now another relation,
    renamed, dropped, or out of its publication (``pgsource/cdc/slot_history.py``); returns those tables.

    Every record, not only the slots planned now: a table its publication lost would be planned
    onto any slot, and joined there from a new cut, silently."""
    source = config.source
    configured = {table.qualified: table for table in source.tables}
    store = FileStateStore(config.state.dir)
    explained: set[str] = set()
    try:
        keys = [key for key in store.keys() if key.startswith("cdc/")]
    except PgSourceError as exc:
        report.problems.append(str(exc))
        return explained
    for key in keys:
        try:
            record = store.load(key, SlotProgress)
        except PgSourceError:
            continue  # reported with its slot
        if record is None or not record.slot.startswith(source.replication_slot):
            continue
        publication = source.publication_name + record.slot[len(source.replication_slot):]
        oid_of = record.oid_of
        check = [(configured[name], oid_of[name]) for name in record.tables
                 if name in configured and name in oid_of and name not in record.rejoin]
        found = pubs.relations_now(conn, publication, check)
        for table, recorded in check:
            problem = table_identity_problem(record.slot, publication, table.qualified, recorded, found[table.qualified])
            if problem is not None:
                report.problems.append(problem[1])
                explained.add(table.qualified)
    return explained


def _check_capturable(relations: dict, report: CheckReport) -> None:
    """Tables logical replication cannot see: a configuration that would deliver nothing is not ok."""
    kinds = {"v": "a view", "m": "a materialized view", "f": "a foreign table"}
    for name, rel in relations.items():
        if rel is None:
            continue  # reported by describe_table
        if rel.kind in kinds:
            report.problems.append(f"table {name} is {kinds[rel.kind]}: CDC captures only tables (use mode: polling)")
        elif rel.persistence == "u":
            report.problems.append(f"table {name} is UNLOGGED: its changes are not in the WAL, CDC never sees them")
        elif rel.partition_of is not None and rel.partition_of in relations:
            report.problems.append(
                f"table {name} is a partition of {rel.partition_of}, which is configured too: its changes are"
                f" published as {rel.partition_of}'s; remove {name} from tables"
            )


def connections_needed(config: Config, workers: int) -> int:
    """Database connections the service holds at once: one per worker, two per streaming CDC worker
    (plus one while an initial snapshot runs)."""
    source = config.source
    per_worker = 1
    if source.cdc:
        per_worker += source.cdc_transport == "replication" or source.snapshot == "initial"
    return workers * per_worker


def _check_connections(config: Config, report: CheckReport) -> None:
    assignment = report.assignment if report.assignment is not None else assign_units(config, report.sizes)
    workers = len(assignment)
    needed = connections_needed(config, workers)
    if needed > config.source.max_connections:
        report.problems.append(
            f"source.max_connections is {config.source.max_connections}, but {workers} worker(s) need {needed}"
            " database connections: lower workers or raise max_connections"
        )
