"""The grants a configuration needs and the PostgreSQL user lacks, as SQL to copy (``pgsource check``).

Polling: SELECT on each table (DELETE with ``delete_after_read``, UPDATE of the column with
``processed_column``); with ``late_commits: auto``, SELECT on the sequence behind a serial
tracking column and ``pg_read_all_stats`` (to see other sessions' transactions). CDC: the
REPLICATION attribute.
"""

from __future__ import annotations

from psycopg2 import sql


def current_user(conn) -> str:
    with conn.cursor() as cur:
        cur.execute("SELECT current_user")
        return cur.fetchone()[0]


def schema_usage_missing(conn, schema: str) -> bool:
    """Without USAGE on its schema a table cannot be read, nor its sequence found by name."""
    with conn.cursor() as cur:
        cur.execute("SELECT NOT has_schema_privilege(%s, 'USAGE')", (schema,))
        return bool(cur.fetchone()[0])


def owned_sequence(conn, oid: int, column: str) -> tuple[str, int] | None:
    """(name, oid) of the sequence a serial or identity column owns, from pg_depend: unlike
    pg_get_serial_sequence this needs no USAGE on the schema."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT format('%%I.%%I', n.nspname, c.relname), c.oid::bigint FROM pg_depend d"
            " JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid"
            " JOIN pg_class c ON c.oid = d.objid AND c.relkind = 'S'"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE d.refobjid = %s AND a.attname = %s AND d.classid = 'pg_class'::regclass"
            "   AND d.deptype IN ('a', 'i')", (oid, column))
        found = cur.fetchone()
    return (found[0], int(found[1])) if found else None


def sequence_select_missing(conn, sequence_oid: int) -> bool:
    with conn.cursor() as cur:
        cur.execute("SELECT NOT has_sequence_privilege(%s::oid, 'SELECT')", (sequence_oid,))
        return bool(cur.fetchone()[0])


def build_schema_grant(conn, schema: str) -> str:
    return sql.SQL("GRANT USAGE ON SCHEMA {} TO {};").format(
        sql.Identifier(schema), sql.Identifier(current_user(conn))).as_string(conn)


def build_table_grants(conn, schema: str, table: str, privileges: list[tuple[str | None, str]],
                       sequence: str | None) -> list[str]:
    """``GRANT privilege [(column)] ON table TO user`` for each missing one, and SELECT on ``sequence``
    (regclass text, already quoted) when given."""
    user = sql.Identifier(current_user(conn))
    target = sql.Identifier(schema, table)
    out = []
    for column, privilege in privileges:
        if privilege not in ("SELECT", "DELETE", "UPDATE"):
            raise ValueError(f"not a table privilege pgsource needs: {privilege!r}")
        columns = sql.SQL(" ({})").format(sql.Identifier(column)) if column else sql.SQL("")
        out.append(sql.SQL("GRANT {}{} ON {} TO {};").format(sql.SQL(privilege), columns, target, user))
    if sequence is not None:
        out.append(sql.SQL("GRANT SELECT ON SEQUENCE {} TO {};").format(sql.SQL(sequence), user))
    return [statement.as_string(conn) for statement in out]


def build_role_grant(conn, what: str) -> str:
    """``GRANT pg_read_all_stats TO user`` (``what`` a role) or ``ALTER ROLE user REPLICATION``."""
    user = sql.Identifier(current_user(conn))
    if what == "REPLICATION":
        return sql.SQL("ALTER ROLE {} REPLICATION;").format(user).as_string(conn)
    return sql.SQL("GRANT {} TO {};").format(sql.Identifier(what), user).as_string(conn)
