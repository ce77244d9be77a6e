"""What the catalog says about a table: its columns, its keys and its size."""

from __future__ import annotations

from dataclasses import dataclass

from pgsource.config.names import message_name
from pgsource.errors import PrerequisiteError

BYTEA_OID = 17
BYTEA_ARRAY_OID = 1001


@dataclass(frozen=True)
class ColumnInfo:
    name: str
    type_sql: str  # format_type(): safe to cast to, e.g. "timestamp with time zone"
    type_oid: int
    not_null: bool
    base_oid: int  # the type under a domain (the type itself otherwise)

    @property
    def is_bytea(self) -> bool:
        return self.base_oid == BYTEA_OID

    @property
    def is_bytea_array(self) -> bool:
        return self.base_oid == BYTEA_ARRAY_OID


@dataclass(frozen=True)
class TableInfo:
    oid: int
    schema: str
    name: str
    columns: tuple[ColumnInfo, ...]
    identity: tuple[str, ...]  # primary key, else a unique index on NOT NULL columns; () if none
    unique_sets: tuple[tuple[str, ...], ...]  # every usable unique key (valid, no predicate/expression)
    estimated_rows: int
    pages: int
    replica_identity: str

    def column(self, name: str) -> ColumnInfo | None:
        return next((column for column in self.columns if column.name == name), None)

    def is_unique(self, names: tuple[str, ...]) -> bool:
        return any(set(unique) <= set(names) for unique in self.unique_sets)

    @property
    def qualified(self) -> str:
        return message_name(self.schema, self.name)


def describe_table(conn, schema: str, name: str) -> TableInfo:
    """Look the table up; PrerequisiteError names it when it does not exist."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT c.oid, greatest(c.reltuples, 0)::bigint, c.relpages, c.relreplident"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p', 'v', 'm', 'f')",
            (schema, name),
        )
        found = cur.fetchone()
        if found is None:
            raise PrerequisiteError(f"table {message_name(schema, name)} does not exist (or is not visible to this user)")
        oid, rows, pages, replident = found
        cur.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.atttypid, a.attnotnull,"
            "       CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END"
            " FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid"
            " WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            (oid,),
        )
        columns = tuple(ColumnInfo(n, ts, int(to), nn, int(bo)) for n, ts, to, nn, bo in cur.fetchall())
        cur.execute(
            "SELECT i.indisprimary, array_agg(a.attname::text ORDER BY k.ord), bool_and(a.attnotnull)"
            " FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)"
            " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
            " WHERE i.indrelid = %s AND i.indisunique AND i.indisvalid"
            "   AND i.indpred IS NULL AND i.indexprs IS NULL"
            " GROUP BY i.indexrelid, i.indisprimary ORDER BY i.indisprimary DESC, count(*), i.indexrelid",
            (oid,),
        )
        keys = cur.fetchall()
    unique_sets = tuple(tuple(cols) for _, cols, not_null in keys if not_null)
    identity = unique_sets[0] if unique_sets else ()
    return TableInfo(oid, schema, name, columns, identity, unique_sets, int(rows), int(pages), replident)


def can_replicate(conn) -> bool:
    """The current role may open replication connections (REPLICATION, or a superuser)."""
    with conn.cursor() as cur:
        cur.execute("SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user")
        return bool(cur.fetchone()[0])


def server_setting(conn, name: str) -> str:
    with conn.cursor() as cur:
        cur.execute("SELECT current_setting(%s)", (name,))
        return cur.fetchone()[0]


def missing_privileges(conn, oid: int, wanted: list[tuple[str | None, str]],
                       sequence: str | None = None) -> list[str]:
    """Which of ``wanted`` ((column or None, privilege)) the current user lacks on table ``oid``,
    plus SELECT on ``sequence`` when given; each as ``PRIVILEGE [(column)]`` text."""
    lacking = []
    with conn.cursor() as cur:
        for column, privilege in wanted:
            if column is None:
                cur.execute("SELECT has_table_privilege(%s::oid, %s)", (oid, privilege))
            else:
                cur.execute("SELECT has_column_privilege(%s::oid, %s, %s)", (oid, column, privilege))
            if not cur.fetchone()[0]:
                lacking.append(privilege if column is None else f"{privilege} ({column})")
        if sequence is not None:
            cur.execute("SELECT has_sequence_privilege(%s, 'SELECT')", (sequence,))
            if not cur.fetchone()[0]:
                lacking.append("SELECT on its sequence " + sequence)
    return lacking
