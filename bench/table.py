"""The realistic table every figure reads (``bench_t``), its publication, and the updates the CDC figures make."""

from __future__ import annotations

from psycopg2 import sql

from bench.database import autocommit_cursor, execute, scalar

TABLE = "bench_t"
PUBLICATION = "bench_pub"
_TABLE = sql.Identifier(TABLE)

# Updates of a key range (bound: low exclusive, high inclusive), and of the first row only.
UPDATE_RANGE = sql.SQL("UPDATE {} SET quantity = quantity + 1 WHERE id > %s AND id <= %s").format(_TABLE)
UPDATE_FIRST = sql.SQL("UPDATE {} SET quantity = quantity + 1 WHERE id = 1").format(_TABLE)


def build_table(dsn: str, rows: int) -> None:
    """``bench_t`` of ``rows`` rows: bigserial id, text, email-like text, integer, numeric, boolean, timestamptz, jsonb, uuid."""
    with autocommit_cursor(dsn) as cur:
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(_TABLE))
        cur.execute(sql.SQL("""CREATE TABLE {} (
            id bigserial PRIMARY KEY,
            name text NOT NULL,
            email text NOT NULL,
            quantity integer NOT NULL,
            price numeric(12,2) NOT NULL,
            active boolean NOT NULL,
            created_at timestamptz NOT NULL,
            attributes jsonb NOT NULL,
            ref uuid NOT NULL)""").format(_TABLE))
        cur.execute(sql.SQL("""INSERT INTO {} (name, email, quantity, price, active, created_at, attributes, ref)
            SELECT 'Customer ' || g || ' ' || md5(g::text),
                   'user' || g || '@example' || (g %% 97) || '.com',
                   ((g::bigint * 7919) %% 100000)::int,
                   round((random() * 100000)::numeric, 2),
                   g %% 3 = 0,
                   timestamptz '2024-01-01 00:00:00+00' + g * interval '1.234567 second',
                   jsonb_build_object('tier', g %% 5, 'tags', jsonb_build_array('a', 'b' || (g %% 11)), 'vip', g %% 13 = 0),
                   gen_random_uuid()
            FROM generate_series(1, %s) AS g""").format(_TABLE), (rows,))
        cur.execute(sql.SQL("VACUUM (ANALYZE, FREEZE) {}").format(_TABLE))


def table_mb(dsn: str) -> float:
    return scalar(dsn, "SELECT pg_total_relation_size(%s)", (TABLE,)) / 2**20


def create_publication(dsn: str) -> None:
    execute(dsn, sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(sql.Identifier(PUBLICATION), _TABLE))
