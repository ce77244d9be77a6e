"""Helpers shared by the decode tests: the polling-side oracle and raw text output.

The oracle is PostgreSQL itself: ``row_to_json`` over the row, in the session settings
polling uses, with bytea columns (and, for the test, bytea[] columns) replaced by
base64 without newlines, which is the pgsource contract for bytea.
"""

from __future__ import annotations

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

SESSION = (
    "SET TimeZone = 'UTC'; SET DateStyle = 'ISO'; SET IntervalStyle = 'postgres'; SET extra_float_digits = 1"
)

ALL_TYPES_DDL = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy "quoted"');
CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
CREATE DOMAIN tags AS text[];
CREATE TYPE pair AS (label text, amount numeric, seen timestamptz, nums int[], mood mood);
CREATE DOMAIN pair_d AS pair;
CREATE TABLE all_types (
    id int PRIMARY KEY,
    i2 int2, i4 int4, i8 int8, o oid, n numeric, f4 float4, f8 float8, b bool,
    j json, jb jsonb, ts timestamp, tstz timestamptz, d date, tm time, ttz timetz,
    iv interval, u uuid, tx text, vc varchar(20), ch char(5), nm name, en mood,
    ip inet, cid cidr, mac macaddr, mo money, x xml, r int4range, tsv tsvector,
    bits varbit, pt point, by bytea,
    ia int[], ta text[], ba bytea[], na numeric[], ja jsonb[], jsa json[], tsa timestamp[],
    tza timestamptz[], da date[], ea mood[], bx box[], fa float8[], boola bool[], ua uuid[],
    dn posint, dna tags, comp pair, compd pair_d, compa pair[], i2v int2vector, ov oidvector
);
"""

ALL_TYPES_ROWS = [
    # typical values
    """INSERT INTO all_types VALUES (1,
        -32768, 2147483647, -9223372036854775808, 4294967295, 12345678901234567890.123456789,
        0.1, 1.0000000000000002, true,
        '{"a": [1, 2.50, "é\\u00e9"], "b" : null}', '{"b": {"c": "ü 😀"}, "a": 1.50}',
        '2024-01-15 10:30:00.12', '2024-01-15 10:30:00.123456+02', '2024-01-15',
        '10:30:00.5', '10:30:00+05:30', '1 year 2 mons 3 days 04:05:06.7',
        'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
        E'Unicode é 😀 "quotes" \\\\back\\\\slash / tab\\t nl\\n cr\\r ctl\\x01\\x1f del\\x7f \\u2028',
        'varchar', 'ab', 'name', 'happy "quoted"', '192.168.0.1/24', '10.0.0.0/8',
        '08:00:2b:01:02:03', 1234.56, '<a href="x">é</a>', '[1,10)', 'a fat:1 cat',
        B'10101', '(1.5,-2)', (SELECT string_agg(set_byte('\\x00'::bytea, 0, g), ''::bytea ORDER BY g)
                               FROM generate_series(0, 255) g),
        '{1,NULL,3}', ARRAY['plain', '', 'NULL', 'with space', 'q"uote', 'back\\slash', 'comma,',
                            '{brace}', 'é😀', E'nl\\n', NULL],
        ARRAY['\\x00ff'::bytea, '\\x'::bytea, NULL],
        '{1.10,NaN,-Infinity,12345678901234567890.123456789}',
        ARRAY['{"k": "v"}'::jsonb, '[1, 2]', 'null', NULL],
        ARRAY['{"k" : "v" }'::json, '"s"'],
        ARRAY['2024-01-15 10:30:00'::timestamp, 'infinity', NULL],
        ARRAY['2024-01-15 10:30:00.5+00'::timestamptz, '-infinity'],
        ARRAY['2024-01-15'::date, '0044-03-15 BC'],
        '{sad,"happy \\"quoted\\""}', ARRAY['(1,1),(0,0)'::box, '(2,2),(1,1)'],
        '{1.5,NaN,Infinity,-0,1e-300}', '{t,f,NULL}', ARRAY['a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid],
        7, ARRAY['x', 'y z'],
        ROW('lab"el', 1.50, '2024-01-15 10:30:00+00', '{1,2}', 'ok'),
        ROW(NULL, 'NaN', 'infinity', '{}', NULL),
        ARRAY[ROW('a,b', 2, NULL, '{{1,2},{3,4}}', 'sad')::pair, NULL],
        '1 2 -3', '1 2 4294967295')""",
    # everything NULL
    "INSERT INTO all_types (id) VALUES (2)",
    # edge values
    """INSERT INTO all_types (id, n, f4, f8, ts, tstz, d, ia, ta, tsa, na, fa, ttz, ba, by, x, tx, comp)
       VALUES (3, 'NaN', 'NaN', 'Infinity', 'infinity', '-infinity', '-infinity',
        '[2:3]={1,2}', '{}', '{{"2024-01-15 10:30:00","2024-01-16 00:00:00.000001"}}',
        '{{1,2},{3,NULL}}', '{-Infinity}', '23:59:59.999999-12:34',
        '{}', '', '', '', ROW('', 0, '0044-03-15 10:00:00 BC', NULL, 'sad'))""",
    """INSERT INTO all_types (id, n, f4, f8, ts, tstz, d, ia, ta)
       VALUES (4, '-Infinity', '-Infinity', 1e-300, '0044-03-15 10:00:00.000001 BC',
        '0044-03-15 10:00:00.5 BC', '0044-03-15 BC', '[0:1][-1:0]={{1,2},{3,4}}',
        '{{a,"b c"},{NULL,"NULL"}}')""",
    """INSERT INTO all_types (id, n, f8, ts, tstz, d, tx, ja)
       VALUES (5, 'Infinity', -1.5e300, '12345-06-07 08:09:10', '12345-06-07 08:09:10+00',
        '12345-06-07', '', ARRAY['"\\u00e9 \\ud83d\\ude00 \\\\"'::jsonb])""",
    """INSERT INTO all_types (id, n, tstz, ts)
       VALUES (6, '-0.000000000000000000000000000001', '1850-06-07 08:09:10.1+00', '1999-12-31 23:59:59.99')""",
]


def connect(dsn: str):
    """A connection with the polling session settings and raw-text typecasting."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(SESSION)
    return conn


def columns_of(conn, table: str) -> list[tuple[str, int, str]]:
    """(name, type oid, format_type) of the live columns, in order."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT attname, atttypid::int8, format_type(atttypid, NULL) FROM pg_attribute"
            " WHERE attrelid = quote_ident(%s)::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            (table,),
        )
        return cur.fetchall()


def _bytea_expr(name: str, base: str) -> sql.Composable:
    col = sql.Identifier(name)
    if base == "bytea":
        return sql.SQL("translate(encode({c}, 'base64'), E'\\n', '') AS {c}").format(c=col)
    if base == "bytea[]":  # one-dimensional in these tests
        return sql.SQL(
            "CASE WHEN {c} IS NULL THEN NULL ELSE ARRAY(SELECT translate(encode(e, 'base64'), E'\\n', '')"
            " FROM unnest({c}) WITH ORDINALITY u(e, o) ORDER BY o) END AS {c}"
        ).format(c=col)
    return col


def expected_json(conn, table: str, order_by: str = "id") -> list[str]:
    """What polling sends: row_to_json with bytea (and bytea[]) as base64."""
    cols = columns_of(conn, table)
    select = sql.SQL(", ").join(_bytea_expr(name, typ) for name, _, typ in cols)
    query = sql.SQL("SELECT row_to_json(_r)::text FROM (SELECT {} FROM {} ORDER BY {}) _r").format(
        select, sql.Identifier(table), sql.Identifier(order_by)
    )
    with conn.cursor() as cur:
        cur.execute(query)
        return [r[0] for r in cur.fetchall()]


def raw_text_rows(conn, table: str, order_by: str = "id") -> list[tuple[str | None, ...]]:
    """Each column's text output exactly as the server sends it (no Python typecasting)."""
    cols = columns_of(conn, table)
    raw = psycopg2.extensions.new_type(tuple({oid for _, oid, _ in cols}), "RAW", lambda v, cur: v)
    with conn.cursor() as cur:
        psycopg2.extensions.register_type(raw, cur)
        cur.execute(
            sql.SQL("SELECT * FROM {} ORDER BY {}").format(sql.Identifier(table), sql.Identifier(order_by))
        )
        return cur.fetchall()
