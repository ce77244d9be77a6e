"""Publications: which tables they hold (the durable table → slot map), creating them, joining tables.

The publications live in the database, so every replica of pgsource (each with its own
``state.dir``) reads the same map: a table already published by one of pgsource's
publications stays with that publication's slot (``pgsource/plan/assignment.py``).

A table that joins a publication whose slot is already streaming gets a *cut*
(``table_cut``): in one transaction pgsource takes a SHARE lock on the table (it waits for
the transactions writing the table to finish, and holds new writers back for a moment),
adds it to the publication, reads the WAL insert position ``L`` and exports a snapshot.
Every change of the table committed before ``L`` is visible in that snapshot; every change
committed after it was written after the lock was released, so after the table joined
the publication, so the slot streams it. The worker reads the table in the snapshot and
drops the table's streamed changes committing before ``L``: no gap, no overlap.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from psycopg2 import sql

from pgsource.config.model import TableConfig
from pgsource.errors import PrerequisiteError
from pgsource.lsn import parse_lsn
from pgsource.pg import connect as pg
from pgsource.pg.publication_shape import build_target

LOCK_TIMEOUT = "2s"  # one attempt at the cut's lock; the caller tries again (writers queue behind it meanwhile)


@dataclass(frozen=True)
class Publication:
    name: str
    all_tables: bool
    via_root: bool
    owned: bool  # the current user may ALTER it (owner or superuser)
    tables: frozenset[tuple[str, str]]  # (schema, table) added by name
    schemas: frozenset[str]  # FOR TABLES IN SCHEMA (PostgreSQL 15)

    def holds(self, table: TableConfig) -> bool:
        return self.all_tables or (table.schema_, table.name) in self.tables or table.schema_ in self.schemas


@dataclass(frozen=True)
class Relation:
    """What decides whether logical replication can see a configured table at all."""

    kind: str  # pg_class.relkind: r table, p partitioned table, v view, m matview, f foreign
    persistence: str  # p permanent, u unlogged, t temporary
    partition_of: str | None  # the parent when the table is a partition

    @property
    def partitioned(self) -> bool:
        return self.kind == "p"


def via_root_problem(publication: str, partitioned: list[str]) -> str:
    return (
        f"publication {publication} publishes the partitioned table(s) {', '.join(partitioned)} through their"
        " partitions (publish_via_partition_root = false): their changes would arrive under the partitions'"
        f" names and none would be delivered: ALTER PUBLICATION {publication} SET (publish_via_partition_root = true)"
    )


def load_publications(conn, base: str) -> dict[str, Publication]:
    """``base`` and every ``base_<tag>`` publication, by name."""
    pattern = base.replace("\\", "\\\\").replace("_", "\\_").replace("%", "\\%") + "\\_%"
    with conn.cursor() as cur:
        cur.execute(
            "SELECT p.oid, p.pubname, p.puballtables, p.pubviaroot,"
            "       pg_has_role(current_user, p.pubowner, 'USAGE')"
            "       OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)"
            " FROM pg_publication p WHERE p.pubname = %s OR p.pubname LIKE %s ORDER BY p.pubname",
            (base, pattern),
        )
        found = cur.fetchall()
        cur.execute("SELECT current_setting('server_version_num')::int")
        version = cur.fetchone()[0]
        out = {}
        for oid, name, all_tables, via_root, owned in found:
            cur.execute(
                "SELECT n.nspname, c.relname FROM pg_publication_rel r JOIN pg_class c ON c.oid = r.prrelid"
                " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE r.prpubid = %s",
                (oid,),
            )
            tables = frozenset((schema, table) for schema, table in cur.fetchall())
            schemas: frozenset[str] = frozenset()
            if version >= 150000:
                cur.execute(
                    "SELECT n.nspname FROM pg_publication_namespace pn JOIN pg_namespace n ON n.oid = pn.pnnspid"
                    " WHERE pn.pnpubid = %s",
                    (oid,),
                )
                schemas = frozenset(row[0] for row in cur.fetchall())
            out[name] = Publication(name, all_tables, via_root, bool(owned), tables, schemas)
    return out


def describe_relations(conn, tables: list[TableConfig]) -> dict[str, Relation | None]:
    """Kind, persistence and parent of each table (None: it does not exist)."""
    out: dict[str, Relation | None] = {}
    with conn.cursor() as cur:
        for table in tables:
            cur.execute(
                "SELECT c.relkind, c.relpersistence,"
                "       (SELECT CASE WHEN pn.nspname = 'public' THEN pc.relname ELSE pn.nspname || '.' || pc.relname END"
                "          FROM pg_inherits i JOIN pg_class pc ON pc.oid = i.inhparent"
                "          JOIN pg_namespace pn ON pn.oid = pc.relnamespace"
                "         WHERE i.inhrelid = c.oid AND c.relispartition)"
                " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = %s AND c.relname = %s",
                (table.schema_, table.name),
            )
            row = cur.fetchone()
            out[table.qualified] = Relation(row[0], row[1], row[2]) if row else None
    return out


def create_publication(conn, name: str, tables: list[TableConfig]) -> None:
    """``CREATE PUBLICATION`` for ``tables``; a partitioned table publishes its changes as itself
    (``publish_via_partition_root``), whichever partition they land in, attached later included."""
    targets = sql.SQL(", ").join(build_target(conn, t) for t in tables)
    what = sql.SQL(" FOR TABLE {}").format(targets) if tables else sql.SQL("")
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL("CREATE PUBLICATION {}{} WITH (publish_via_partition_root = true)").format(sql.Identifier(name), what)
        )


def add_tables(conn, name: str, tables: list[TableConfig]) -> None:
    """``ALTER PUBLICATION ... ADD TABLE``, in the caller's transaction."""
    if not tables:
        return
    targets = sql.SQL(", ").join(build_target(conn, t) for t in tables)
    with conn.cursor() as cur:
        cur.execute(sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(sql.Identifier(name), targets))


def drop_publication(conn, name: str) -> bool:
    """Drop it when it exists; whether there was one to drop."""
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (name,))
        existed = cur.fetchone() is not None
        cur.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(name)))
    return existed


def current_writers(conn, tables: list[TableConfig]) -> set[str]:
    """The transactions (virtual ids) holding a lock on the tables or their partitions that the cut's
    SHARE lock would wait for: the cut waits for them to end before it asks (``LOCK`` would queue
    every new writer behind it while a long transaction finishes)."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT DISTINCT l.virtualtransaction FROM pg_locks l"
            " WHERE l.locktype = 'relation' AND l.granted AND l.pid IS DISTINCT FROM pg_backend_pid()"
            "   AND l.mode IN ('RowExclusiveLock', 'ShareUpdateExclusiveLock', 'ShareRowExclusiveLock',"
            "                  'ExclusiveLock', 'AccessExclusiveLock')"
            "   AND l.relation IN (SELECT t.rel FROM unnest(%s::regclass[]) AS t(rel)"
            "                      UNION SELECT p.relid FROM unnest(%s::regclass[]) AS t(rel), pg_partition_tree(t.rel) p)",
            ([sql.Identifier(t.schema_, t.name).as_string(conn) for t in tables],) * 2,
        )
        return {row[0] for row in cur.fetchall()}


@dataclass(frozen=True)
class Cut:
    lsn: int  # the table's streamed changes committing before it are not sent
    snapshot: str | None  # exported snapshot holding exactly the changes committed before ``lsn``


class LockBusy(Exception):
    """The cut's lock was not granted within ``LOCK_TIMEOUT`` (a long transaction writes the table)."""


@contextmanager
def table_cut(conn, publication: str, lock: list[TableConfig], add: list[TableConfig],
              export: bool) -> Iterator[Cut]:
    """The cut of the module docstring, for ``lock`` (the joining tables; ``add``: those the
    publication lacks). Inside the ``with`` the snapshot can be imported (``SET TRANSACTION
    SNAPSHOT``); leaving it commits (the tables join) and lets writers go on.

    Raises ``LockBusy`` when a writer holds the tables longer than ``LOCK_TIMEOUT``.
    """
    conn.autocommit = False
    try:
        with conn.cursor() as cur:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            cur.execute("SET LOCAL lock_timeout = %s", (LOCK_TIMEOUT,))
            try:
                cur.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(
                    sql.SQL(", ").join(sql.Identifier(t.schema_, t.name) for t in lock)))
            except pg.DatabaseError as exc:
                if getattr(exc, "pgcode", None) == "55P03":  # lock_not_available
                    raise LockBusy(str(exc).strip()) from None
                raise
            add_tables(conn, publication, add)
            cur.execute("SELECT pg_current_wal_insert_lsn()::text" + (", pg_export_snapshot()" if export else ""))
            row = cur.fetchone()
        yield Cut(parse_lsn(row[0]), row[1] if export else None)
        conn.commit()
    except pg.DatabaseError as exc:
        conn.rollback()
        if isinstance(exc, (pg.OperationalError, pg.InterfaceError)):
            raise
        raise PrerequisiteError(
            f"adding {', '.join(t.qualified for t in lock)} to publication {publication} failed:"
            f" {str(exc).strip()}"
        ) from None
    except BaseException:
        conn.rollback()
        raise
    finally:
        conn.autocommit = True


@dataclass(frozen=True)
class RelationNow:
    """What a configured table's name, and the relation a slot captured under it, are now."""

    oid: int  # the relation the configured name denotes now (0: none)
    recorded_name: str  # table_name of the relation the slot captured, now ("": it no longer exists)
    published: bool  # that relation (else the one the name denotes) is in the slot's publication


def relations_now(conn, publication: str, tables: list[tuple[TableConfig, int]]) -> dict[str, RelationNow]:
    """Per configured table (with the oid a slot's record holds for it, 0 if none), what its name
    and that oid denote now, and whether the publication still holds it: one statement, cheap
    enough to ask every few seconds while streaming."""
    with conn.cursor() as cur:
        cur.execute(
            "WITH published AS (SELECT c.oid FROM pg_publication_tables pt"
            "   JOIN pg_namespace n ON n.nspname = pt.schemaname"
            "   JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename WHERE pt.pubname = %s)"
            " SELECT coalesce((SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            "                  WHERE n.nspname = t.schema AND c.relname = t.name AND c.relkind IN ('r', 'p')), 0)::int8,"
            "        (SELECT ARRAY[n.nspname::text, c.relname::text] FROM pg_class c"
            "           JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = t.recorded),"
            "        EXISTS (SELECT 1 FROM published p WHERE p.oid = t.recorded),"
            "        EXISTS (SELECT 1 FROM published p, pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            "                WHERE p.oid = c.oid AND n.nspname = t.schema AND c.relname = t.name)"
            " FROM unnest(%s::text[], %s::text[], %s::oid[]) WITH ORDINALITY AS t(schema, name, recorded, ord)"
            " ORDER BY t.ord",
            (publication, [t.schema_ for t, _ in tables], [t.name for t, _ in tables], [oid for _, oid in tables]),
        )
        rows = cur.fetchall()
    from pgsource.config.names import message_name

    out = {}
    for (table, recorded), (oid, name, recorded_published, named_published) in zip(tables, rows):
        out[table.qualified] = RelationNow(
            int(oid), message_name(*name) if name else "", recorded_published if recorded else named_published)
    return out


@dataclass(frozen=True)
class Partition:
    """A partition (any level) of a partitioned table."""

    oid: int
    parent: int
    schema: str
    name: str
    attached: bool  # joined its parent after it was created (ATTACH PARTITION), not created as a partition


def partition_trees(conn, roots: list[int]) -> dict[int, list[Partition]]:
    """Every partition of each partitioned table in ``roots`` (by oid), at every level.

    ``attached``: the row type of the partition is older than its ``pg_inherits`` entry, so
    it existed (and may have held rows) before it became a partition; ``CREATE TABLE ...
    PARTITION OF`` makes both in one transaction (a table created, filled and attached in
    one transaction is taken as created empty: docs/cdc.md)."""
    if not roots:
        return {}
    with conn.cursor() as cur:
        cur.execute(
            "SELECT r.root::int8, p.relid::int8, p.parentrelid::int8, n.nspname::text, c.relname::text,"
            "       ty.xmin::text <> i.xmin::text"
            " FROM unnest(%s::oid[]) AS r(root) CROSS JOIN LATERAL pg_partition_tree(r.root) p"
            " JOIN pg_class c ON c.oid = p.relid JOIN pg_namespace n ON n.oid = c.relnamespace"
            " JOIN pg_type ty ON ty.oid = c.reltype"
            " JOIN pg_inherits i ON i.inhrelid = p.relid AND i.inhparent = p.parentrelid"
            " WHERE p.level > 0 ORDER BY p.level, p.relid",
            (roots,),
        )
        rows = cur.fetchall()
    out: dict[int, list[Partition]] = {root: [] for root in roots}
    for root, oid, parent, schema, name, attached in rows:
        out[int(root)].append(Partition(int(oid), int(parent), schema, name, bool(attached)))
    return out


def published_partitioned(conn, oids: list[int]) -> list[int]:
    """Those of ``oids`` that are partitioned tables."""
    with conn.cursor() as cur:
        cur.execute("SELECT oid::int8 FROM pg_class WHERE oid = ANY(%s::oid[]) AND relkind = 'p'", (oids,))
        return [int(row[0]) for row in cur.fetchall()]
