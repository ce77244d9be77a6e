"""Random values of every supported type survive PostgreSQL → JSON → parse exactly, in both modes.

Each example inserts one row of random values (bound parameters), reads it the way polling
does (``PollingReader``: PostgreSQL's ``row_to_json``) and the way CDC does (the row's
pgoutput bytes from a real slot, through ``decode_message`` and both row functions, C and
Python, and the general decoder). The polling JSON parses back to exactly the values that
were inserted (integers, numerics digit for digit, floats bit for bit, text, bytes, times
to the microsecond...), and the CDC JSON is byte-identical to it.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
import struct
import uuid
from decimal import Decimal

import psycopg2.extras
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg2 import sql

from pgsource.config.model import Config
from pgsource.decode import pgoutput as po
from pgsource.decode import rowjson
from pgsource.decode.values import compile_relation, decode_tuple_json
from pgsource.pg import connect as pg
from pgsource.pg.types import load_type_catalog
from pgsource.polling.reader import open_reader

_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**20), 10**20) | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4), max_leaves=12)
_numeric = st.decimals(allow_nan=False, allow_infinity=False).filter(lambda d: abs(d.adjusted()) < 300) | st.sampled_from(
    [Decimal("NaN"), Decimal("Infinity"), Decimal("-Infinity"), Decimal("-0.000"), Decimal("1.50")])
_zones = st.sampled_from([dt.timezone.utc, dt.timezone(dt.timedelta(hours=5, minutes=30)), dt.timezone(-dt.timedelta(hours=11))])


class _Int(int):
    """A JSON integer that remembers its text: ``-0`` (a float's negative zero) parses as 0."""

    def __new__(cls, text: str):
        value = super().__new__(cls, text)
        value.text = text
        return value


def _same_float(got, want: float, width: int = 64) -> bool:
    if math.isnan(want):
        return got == "NaN"
    if math.isinf(want):
        return got == ("Infinity" if want > 0 else "-Infinity")
    value = float(got.text if isinstance(got, _Int) else got)
    if width == 32:
        return struct.pack("<f", value) == struct.pack("<f", want)
    return value == want and math.copysign(1, value) == math.copysign(1, want)


def _same_numeric(got, want: Decimal) -> bool:
    if want.is_nan() or want.is_infinite():
        return got == str(want)
    # every digit kept: numeric keeps the scale it was given (a positive exponent is printed as digits)
    got = Decimal(got.text) if isinstance(got, _Int) else got  # a numeric without a fraction is a JSON integer
    return isinstance(got, Decimal) and got == want and got.as_tuple().exponent == min(want.as_tuple().exponent, 0)


# name, SQL type, strategy, how the inserted value is bound, whether the JSON value is exactly it
COLUMNS = [
    ("i2", "int2", st.integers(-(2**15), 2**15 - 1), None, lambda got, want: got == want and isinstance(got, _Int)),
    ("i4", "int4", st.integers(-(2**31), 2**31 - 1), None, lambda got, want: got == want),
    ("i8", "int8", st.integers(-(2**63), 2**63 - 1), None, lambda got, want: got == want),
    ("n", "numeric", _numeric, str, _same_numeric),  # str: psycopg2 binds Decimal('Infinity') as 'NaN'
    ("f8", "float8", st.floats(), repr, _same_float),  # as text: a numeric literal would lose -0
    ("f4", "float4", st.floats(width=32), repr, lambda got, want: _same_float(got, want, 32)),
    ("b", "bool", st.booleans(), None, lambda got, want: got is want),
    ("t", "text", _text, None, lambda got, want: got == want),
    ("vc", "varchar(40)", _text, None, lambda got, want: got == want),
    ("by", "bytea", st.binary(max_size=40), psycopg2.Binary, lambda got, want: base64.b64decode(got) == want),
    ("d", "date", st.dates(), None, lambda got, want: dt.date.fromisoformat(got) == want),
    ("ts", "timestamp", st.datetimes(), None, lambda got, want: dt.datetime.fromisoformat(got) == want),
    ("tz", "timestamptz", st.datetimes(dt.datetime(1, 1, 2), dt.datetime(9999, 12, 30), timezones=_zones), None,
     lambda got, want: got.endswith("+00:00") and dt.datetime.fromisoformat(got) == want),
    ("tm", "time", st.times(), None, lambda got, want: dt.time.fromisoformat(got) == want),
    ("u", "uuid", st.uuids(), str, lambda got, want: uuid.UUID(got) == want and got == str(want)),
    ("j", "json", _json, psycopg2.extras.Json, lambda got, want: got == want),
    ("jb", "jsonb", _json, psycopg2.extras.Json, lambda got, want: got == want),
    ("ia", "int8[]", st.lists(st.none() | st.integers(-(2**63), 2**63 - 1), max_size=5), None, lambda got, want: got == want),
    ("ta", "text[]", st.lists(st.none() | _text, max_size=5), None, lambda got, want: got == want),
    ("na", "numeric[]", st.lists(_numeric, max_size=4), lambda values: [str(v) for v in values],
     lambda got, want: len(got) == len(want) and all(map(_same_numeric, got, want))),
    ("ba", "bytea[]", st.lists(st.none() | st.binary(max_size=10), max_size=4),
     lambda values: [None if v is None else psycopg2.Binary(v) for v in values],
     lambda got, want: [None if g is None else base64.b64decode(g) for g in got] == want),
]
ROW = st.fixed_dictionaries({name: st.none() | strategy for name, _, strategy, _, _ in COLUMNS})


@pytest.fixture
def roundtrip(pg_dsn):
    conn = pg.connect(pg_dsn)  # pgsource's session settings (TimeZone=UTC, DateStyle=ISO, ...)
    with conn.cursor() as cur:
        columns = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(kind))
                                     for name, kind, *_ in COLUMNS)  # kind: a type name from COLUMNS, SQL text
        cur.execute(sql.SQL("CREATE TABLE rt (id bigserial PRIMARY KEY, {}); CREATE PUBLICATION rt_pub FOR TABLE rt")
                    .format(columns))
        cur.execute("SELECT pg_create_logical_replication_slot('rt_slot', 'pgoutput')")
    config = Config.model_validate({"source": {"connection_string": pg_dsn, "mode": "polling", "tables": ["rt"],
                                               "include_metadata": False}})
    reader = open_reader(conn, config, config.source.tables[0])
    yield conn, reader
    conn.close()


def _consume(conn) -> tuple[po.Relation, bytes]:
    """The Relation and the raw Insert of the one row just written (the test slot is consumed)."""
    with conn.cursor() as cur:
        cur.execute("SELECT data FROM pg_logical_slot_get_binary_changes('rt_slot', NULL, NULL, 'proto_version', '1',"
                    " 'publication_names', 'rt_pub')")
        raw = [bytes(row[0]) for row in cur.fetchall()]
    messages = [po.decode_message(data) for data in raw]  # each SQL call decodes anew: the Relation comes again
    relation = next(m for m in messages if isinstance(m, po.Relation))
    [insert] = [data for data, m in zip(raw, messages) if isinstance(m, po.Insert)]
    return relation, insert


@pytest.mark.timeout(300)
@settings(max_examples=100, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(row=ROW)
def test_random_values_of_every_type_survive_both_modes_exactly(roundtrip, row):
    conn, reader = roundtrip
    names = [name for name, *_ in COLUMNS]
    bound = [row[name] if row[name] is None or bind is None else bind(row[name]) for name, _, _, bind, _ in COLUMNS]
    with conn.cursor() as cur:  # what an earlier (failed) example left in the slot goes first
        cur.execute("SELECT count(*) FROM pg_logical_slot_get_binary_changes('rt_slot', NULL, NULL, 'proto_version',"
                    " '1', 'publication_names', 'rt_pub')")
        cur.execute(sql.SQL("TRUNCATE rt; INSERT INTO rt ({}) VALUES ({})").format(
            sql.SQL(", ").join(map(sql.Identifier, names)),
            sql.SQL(", ").join(sql.SQL("({})::{}").format(sql.Literal(b), sql.SQL(kind)) for b, (_, kind, *_) in zip(bound, COLUMNS))))
    [polled] = reader.encoder.encode_batch(reader.fetch_batch(None, 1000), 0).messages.payloads
    got = json.loads(polled, parse_float=Decimal, parse_int=_Int)
    assert list(got) == ["id", *names]
    for name, _, _, _, same in COLUMNS:
        want = row[name]
        assert (got[name] is None) if want is None else same(got[name], want), (name, got[name], want)

    relation, insert = _consume(conn)
    catalog = load_type_catalog(conn, [c.type_oid for c in relation.columns])
    assert decode_tuple_json(compile_relation(relation, catalog), po.decode_message(insert).new) == polled
    columns = [(c.name, c.type_oid) for c in relation.columns]
    for compile_row in [rowjson.compile_python] + ([rowjson.compile_plan] if rowjson.NATIVE else []):
        row_json = compile_row(columns, catalog)
        assert row_json(insert, insert.decode("latin-1"), 6, len(insert), b"", b"") == polled.encode(), compile_row
