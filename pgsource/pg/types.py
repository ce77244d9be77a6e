"""The type catalog the CDC decoder needs to turn column text into row_to_json's JSON.

pgoutput sends each column as text plus a type oid. To produce what ``row_to_json``
would, the decoder must know, per oid, PostgreSQL's JSON category (see
``json_categorize_type`` in ``src/backend/utils/adt/json.c``): domains are looked
through, true arrays (``typsubscript = array_subscript_handler``) become JSON arrays of
their element type, composites become objects of their attributes, and user-defined
types with a cast to json are converted by that cast. ``load_type_catalog`` resolves
all of that, transitively, in one query; the CDC worker calls it when a Relation
message brings oids it has not seen yet and merges the result into its cache.
Needs PostgreSQL 14+ (``pg_type.typsubscript``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pgsource.errors import SourceError

# JSON categories, as json.c names them, plus "bytea": pgsource's contract sends bytea
# as base64 where row_to_json would send the hex text.
NUMBER = "number"
BOOL = "bool"
DATE = "date"
TIMESTAMP = "timestamp"
TIMESTAMPTZ = "timestamptz"
JSON = "json"
JSONB = "jsonb"
BYTEA = "bytea"
ARRAY = "array"
VECTOR = "vector"  # int2vector/oidvector: true arrays whose text is space-separated
COMPOSITE = "composite"
CAST = "cast"  # user-defined type with a function cast to json (hstore)
OTHER = "other"

_BUILTIN_CATEGORY = {
    16: BOOL,
    20: NUMBER,
    21: NUMBER,
    23: NUMBER,
    700: NUMBER,
    701: NUMBER,
    1700: NUMBER,
    1082: DATE,
    1114: TIMESTAMP,
    1184: TIMESTAMPTZ,
    114: JSON,
    3802: JSONB,
    17: BYTEA,
    22: VECTOR,
    30: VECTOR,
}

FIRST_NORMAL_OBJECT_ID = 16384


@dataclass(frozen=True)
class TypeInfo:
    """What the decoder must know about one type oid (a domain carries its base's facts)."""

    oid: int
    name: str  # format_type(oid, NULL), for error messages
    base_oid: int  # the oid after looking through domains (== oid otherwise)
    category: str  # one of the category constants above, of the base type
    element_oid: int = 0  # ARRAY/VECTOR: element type (may itself be a domain)
    delimiter: str = ","  # ARRAY: typdelim of the element type (';' for box)
    attributes: tuple[tuple[str, int], ...] = ()  # COMPOSITE: live (name, type oid) in order
    json_cast: str = ""  # CAST: name of the cast function to json (hstore_to_json is reproduced)


_QUERY = """
WITH RECURSIVE reach(oid) AS (
    SELECT unnest(%s::oid[])
  UNION
    SELECT x.oid
      FROM reach r
      JOIN pg_type t ON t.oid = r.oid
     CROSS JOIN LATERAL (
            SELECT t.typbasetype WHERE t.typtype = 'd'
        UNION ALL
            SELECT t.typelem
             WHERE t.typelem <> 0 AND t.typsubscript = 'array_subscript_handler'::regproc
        UNION ALL
            SELECT a.atttypid FROM pg_attribute a
             WHERE t.typrelid <> 0 AND a.attrelid = t.typrelid
               AND a.attnum > 0 AND NOT a.attisdropped
     ) x(oid)
)
SELECT t.oid::int8, format_type(t.oid, NULL), t.typtype::text, t.typbasetype::int8,
       CASE WHEN t.typsubscript = 'array_subscript_handler'::regproc THEN t.typelem ELSE 0 END::int8,
       e.typdelim::text,
       ARRAY(SELECT a.attname::text FROM pg_attribute a
              WHERE t.typrelid <> 0 AND a.attrelid = t.typrelid AND a.attnum > 0
                AND NOT a.attisdropped ORDER BY a.attnum),
       ARRAY(SELECT a.atttypid::int8 FROM pg_attribute a
              WHERE t.typrelid <> 0 AND a.attrelid = t.typrelid AND a.attnum > 0
                AND NOT a.attisdropped ORDER BY a.attnum),
       (SELECT p.proname::text FROM pg_cast c JOIN pg_proc p ON p.oid = c.castfunc
         WHERE c.castsource = t.oid AND c.casttarget = 'json'::regtype AND c.castmethod = 'f')
  FROM pg_type t
  LEFT JOIN pg_type e ON e.oid = t.typelem
 WHERE t.oid IN (SELECT oid FROM reach)
"""


@dataclass(frozen=True)
class _Row:
    oid: int
    name: str
    typtype: str
    basetype: int
    element: int
    delimiter: str | None
    attnames: list[str]
    atttypes: list[int]
    json_cast: str | None


def load_type_catalog(conn, oids: Iterable[int]) -> dict[int, TypeInfo]:
    """Describe ``oids`` and every type they reach (domain bases, elements, attributes).

    One round trip; the result is keyed by oid and safe to merge into a longer-lived cache.
    """
    wanted = sorted({int(o) for o in oids})
    if not wanted:
        return {}
    with conn.cursor() as cur:
        cur.execute(_QUERY, (wanted,))
        rows = {r[0]: _Row(*r) for r in cur.fetchall()}
    missing = [o for o in wanted if o not in rows]
    if missing:
        raise SourceError(f"type oids not found in pg_type: {missing}")
    return {oid: _describe(oid, rows) for oid in rows}


def _describe(oid: int, rows: dict[int, _Row]) -> TypeInfo:
    row = rows[oid]
    base = row
    seen = 0
    while base.typtype == "d":  # domains over domains: follow to the first non-domain
        base = rows[base.basetype]
        seen += 1
        if seen > 100:
            raise SourceError(f"domain chain too deep for type {row.name}")
    category = _BUILTIN_CATEGORY.get(base.oid)
    if category is None:
        if base.element:
            category = ARRAY
        elif base.typtype == "c" or base.attnames:
            category = COMPOSITE
        elif base.oid >= FIRST_NORMAL_OBJECT_ID and base.json_cast:
            category = CAST
        else:
            category = OTHER
    return TypeInfo(
        oid=oid,
        name=row.name,
        base_oid=base.oid,
        category=category,
        element_oid=base.element,
        delimiter=base.delimiter or ",",
        attributes=tuple(zip(base.attnames, base.atttypes, strict=True)),
        json_cast=base.json_cast or "",
    )


def load_column_types(conn, oids: Iterable[int]) -> dict[int, TypeInfo] | None:
    """``load_type_catalog`` where the server has it (14+), else None.

    Polling uses it to find bytea inside composites and arrays; on older servers it still
    base64s bytea and bytea[] columns, only nested bytea stays hex there.
    """
    if conn.server_version < 140000:
        return None
    return load_type_catalog(conn, oids)


def load_table_types(conn, tables: Iterable[tuple[str, str]]) -> dict[int, TypeInfo]:
    """``load_type_catalog`` for every live column of ``tables`` ((schema, name) pairs), in two queries.

    The SQL CDC transport loads them before reading a slot: its binary COPY cannot run
    another query on the same connection until the COPY ends.
    """
    schemas, names = zip(*tables, strict=True) if tables else ((), ())
    with conn.cursor() as cur:
        cur.execute(
            "SELECT DISTINCT a.atttypid::int8 FROM unnest(%s::text[], %s::text[]) AS t(s, n)"
            " JOIN pg_namespace ns ON ns.nspname = t.s JOIN pg_class c ON c.relnamespace = ns.oid AND c.relname = t.n"
            " JOIN pg_attribute a ON a.attrelid = c.oid WHERE a.attnum > 0 AND NOT a.attisdropped",
            (list(schemas), list(names)),
        )
        oids = [row[0] for row in cur.fetchall()]
    return load_type_catalog(conn, oids)


def load_type_names(conn, pairs: Iterable[tuple[int, int]]) -> dict[tuple[int, int], str]:
    """``format_type(oid, typmod)`` of each (type oid, typmod) pair, as a table's definition prints
    its columns (``character varying(20)``, ``numeric(10,2)``): the types of schema-change events."""
    wanted = sorted(set(pairs))
    if not wanted:
        return {}
    with conn.cursor() as cur:
        cur.execute("SELECT t.oid::int8, t.typmod, format_type(t.oid, t.typmod)"
                    " FROM unnest(%s::oid[], %s::int4[]) AS t(oid, typmod)",
                    ([oid for oid, _ in wanted], [typmod for _, typmod in wanted]))
        return {(int(oid), int(typmod)): name for oid, typmod, name in cur.fetchall()}
