"""A table's shape in a publication: its column list and its row filter (PostgreSQL 15).

``build_target`` writes a configured table as a publication entry (``t (a, b) WHERE (...)``);
``published_shapes`` reads what a publication holds now; ``try_shapes`` asks PostgreSQL, in
a transaction it rolls back, whether it takes the configured shape for the table, and how it
prints it: the entry is put in the publication (or in a trial one), read back, and the
table's UPDATE and DELETE are planned (``EXPLAIN``), which is where PostgreSQL 15 refuses a
filter or a column list that does not cover the replica identity. The reason a user gets
is PostgreSQL's own. ``alter_shapes`` applies changed shapes, one transaction for all.

The row filter is the user's SQL, like ``custom_query``: PostgreSQL parses and validates
it, and no value is ever put into it (docs/configuration.md, "Row filters").
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from psycopg2 import sql

from pgsource.config.model import TableConfig
from pgsource.pg import connect as pg
from pgsource.pg.row_filter import predicate_sql

TRIAL_LOCK_TIMEOUT = "2s"  # the trial's ADD TABLE waits at most this for the table's lock


@dataclass(frozen=True)
class PublishedShape:
    """What a publication sends of a table: these columns (None: all) of the rows matching the filter (None: all)."""

    columns: tuple[str, ...] | None
    row_filter: str | None  # as PostgreSQL prints it (pg_get_expr), so that two spellings compare equal

    def describe(self) -> str:
        columns = "every column" if self.columns is None else "columns " + ", ".join(self.columns)
        return f"{columns}, {'every row' if self.row_filter is None else 'rows where ' + self.row_filter}"


@dataclass
class ShapeTrial:
    """``try_shapes``' answer, per table (its ``qualified`` reference)."""

    shapes: dict[str, PublishedShape] = field(default_factory=dict)  # the configured shape as PostgreSQL prints it
    problems: dict[str, str] = field(default_factory=dict)  # PostgreSQL refused the shape: its reason
    unknown: dict[str, str] = field(default_factory=dict)  # the trial could not be made (privileges, a lock)


def configured_columns(conn, table: TableConfig) -> list[str] | None:
    """The publication's column list for ``table``: ``columns``, or every column but ``exclude_columns``
    as the table has them now (a column added later joins at the next start); None: all."""
    if not table.exclude_columns:
        return table.columns
    with conn.cursor() as cur:
        cur.execute(
            "SELECT a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            (table.schema_, table.name),
        )
        return [row[0] for row in cur.fetchall() if row[0] not in table.exclude_columns]


def build_target(conn, table: TableConfig) -> sql.Composable:
    """A publication's entry for a table: its name, its column list and its row filter."""
    target: sql.Composable = sql.Identifier(table.schema_, table.name)
    columns = configured_columns(conn, table)
    if columns is not None:
        target = sql.SQL("{} ({})").format(target, sql.SQL(", ").join(sql.Identifier(c) for c in columns))
    if table.predicate:
        # The user's predicate, parsed by PostgreSQL inside the parentheses (see the module docstring).
        target = sql.SQL("{} WHERE {}").format(target, predicate_sql(table.predicate))
    return target


def published_shapes(conn, publication: str) -> dict[tuple[str, str], PublishedShape]:
    """(schema, table) → shape, for the tables ``publication`` lists by name."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT n.nspname, c.relname,"
            "       (SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a"
            "         WHERE a.attrelid = r.prrelid AND a.attnum = ANY(r.prattrs)),"
            "       pg_get_expr(r.prqual, r.prrelid)"
            " FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid"
            " JOIN pg_class c ON c.oid = r.prrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE p.pubname = %s",
            (publication,),
        )
        return {(schema, name): PublishedShape(tuple(columns) if columns else None, qual)
                for schema, name, columns, qual in cur.fetchall()}


def _reason(exc) -> str:
    """PostgreSQL's error as one line: the message and its detail."""
    diag = getattr(exc, "diag", None)
    primary = (diag.message_primary if diag is not None else None) or str(exc).strip().splitlines()[0]
    detail = diag.message_detail if diag is not None else None
    return primary + (f": {detail}" if detail else "")


def try_shapes(conn, tables: list[TableConfig], publication: str | None, listed: set[tuple[str, str]]) -> ShapeTrial:
    """Ask PostgreSQL, then roll back, whether it takes each table's configured shape.

    ``publication``: pgsource's publication when it exists and pgsource may alter it (the
    entry is then tried in it, as the start would apply it); ``listed``: the tables it lists
    by name. Otherwise a trial publication of a random name holds the entry.
    """
    trial = ShapeTrial()
    if not tables:
        return trial
    name = publication or f"pgsource_trial_{secrets.token_hex(6)}"
    conn.autocommit = False
    try:
        with conn.cursor() as cur:
            cur.execute("SET LOCAL lock_timeout = %s", (TRIAL_LOCK_TIMEOUT,))
            if publication is None:
                cur.execute(sql.SQL("CREATE PUBLICATION {} WITH (publish_via_partition_root = true)").format(
                    sql.Identifier(name)))
            for table in tables:
                cur.execute("SAVEPOINT shape")
                try:
                    _try_one(conn, cur, name, table, (table.schema_, table.name) in listed)
                    trial.shapes[table.qualified] = published_shapes(conn, name)[(table.schema_, table.name)]
                except pg.DatabaseError as exc:
                    cur.execute("ROLLBACK TO SAVEPOINT shape")
                    if exc.pgcode in ("42501", "55P03"):  # insufficient_privilege, lock_not_available
                        trial.unknown[table.qualified] = _reason(exc)
                    else:
                        trial.problems[table.qualified] = _reason(exc)
    except pg.DatabaseError as exc:
        if isinstance(exc, (pg.OperationalError, pg.InterfaceError)):
            raise
        for table in tables:  # the trial publication itself was refused (CREATE on the database)
            trial.unknown.setdefault(table.qualified, _reason(exc))
    finally:
        conn.rollback()
        conn.autocommit = True
    return trial


def _try_one(conn, cur, publication: str, table: TableConfig, listed: bool) -> None:
    """The entry in the publication, then the table's UPDATE and DELETE planned (nothing runs).

    ``ctid IS NULL`` is never true, yet the planner keeps every partition of a partitioned
    table (``false`` would prune them, and PostgreSQL checks each partition it keeps)."""
    name = sql.Identifier(publication)
    relation = sql.Identifier(table.schema_, table.name)
    if listed:
        cur.execute(sql.SQL("ALTER PUBLICATION {} DROP TABLE {}").format(name, relation))
    cur.execute(sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(name, build_target(conn, table)))
    cur.execute(
        "SELECT a.attname FROM pg_attribute a WHERE a.attrelid = %s::regclass AND a.attnum > 0"
        " AND NOT a.attisdropped ORDER BY a.attnum LIMIT 1", (relation.as_string(conn),))
    column = sql.Identifier(cur.fetchone()[0])
    cur.execute(sql.SQL("EXPLAIN UPDATE {} SET {} = {} WHERE ctid IS NULL").format(relation, column, column))
    cur.execute(sql.SQL("EXPLAIN DELETE FROM {} WHERE ctid IS NULL").format(relation))


def alter_shapes(conn, publication: str, tables: list[TableConfig]) -> None:
    """Give each table its configured shape: ``DROP TABLE`` then ``ADD TABLE``, in one transaction,
    so that no change is decoded with the table out of the publication (PostgreSQL 15 has no
    ALTER PUBLICATION ... ALTER TABLE; SET TABLE would have to list every table)."""
    if not tables:
        return
    name = sql.Identifier(publication)
    conn.autocommit = False
    try:
        with conn.cursor() as cur:
            for table in tables:
                cur.execute(sql.SQL("ALTER PUBLICATION {} DROP TABLE {}").format(
                    name, sql.Identifier(table.schema_, table.name)))
                cur.execute(sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(name, build_target(conn, table)))
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    finally:
        conn.autocommit = True
