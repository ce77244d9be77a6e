"""The text -> JSON decoder against its oracle, row_to_json on a real PostgreSQL 15."""

from __future__ import annotations

import json
import pickle
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgsource.decode.pgoutput import UNCHANGED
from pgsource.decode.values import UNCHANGED_TOAST, compile_columns, decode_tuple_json
from pgsource.errors import SourceError
from pgsource.pg.types import load_type_catalog
from tests.decode.oracle import (
    ALL_TYPES_ROWS,
    columns_of,
    connect,
    expected_json,
    raw_text_rows,
)


def _decoders(conn, table, keys=None):
    cols = columns_of(conn, table)
    catalog = load_type_catalog(conn, [oid for _, oid, _ in cols])
    return compile_columns(table, [(name, oid) for name, oid, _ in cols], catalog, keys)


def _assert_same(expected: str, decoded: str) -> None:
    assert json.loads(decoded, parse_float=Decimal) == json.loads(expected, parse_float=Decimal)
    assert decoded == expected  # byte for byte, not merely equal as JSON



def test_every_type_matches_row_to_json(all_types):
    decoders = _decoders(all_types, "all_types")
    expected = expected_json(all_types, "all_types")
    rows = raw_text_rows(all_types, "all_types")
    assert len(rows) == len(ALL_TYPES_ROWS)
    for want, row in zip(expected, rows, strict=True):
        got = decode_tuple_json(decoders, row)
        _assert_same(want, got)


def test_each_column_alone_matches(all_types):
    """Per column, so a failure names the column rather than a 2 kB row."""
    decoders = _decoders(all_types, "all_types")
    expected = [
        json.loads(e, object_pairs_hook=list, parse_float=Decimal)
        for e in expected_json(all_types, "all_types")
    ]
    for want_pairs, row in zip(expected, raw_text_rows(all_types, "all_types"), strict=True):
        for (name, want), decoder, text in zip(want_pairs, decoders, row, strict=True):
            got = "null" if text is None else decoder.decode(text)
            assert json.loads(got, object_pairs_hook=list, parse_float=Decimal) == want, (name, text)


def test_output_keys_are_the_callers_and_escaped(all_types):
    with all_types.cursor() as cur:
        cur.execute('CREATE TABLE "Odd Names" ("UserId" int, "a""b\\c" text)')
        cur.execute("INSERT INTO \"Odd Names\" VALUES (1, 'x')")
    assert decode_tuple_json(_decoders(all_types, "Odd Names"), ("1", "x")) == '{"UserId":1,"a\\"b\\\\c":"x"}'
    assert expected_json(all_types, "Odd Names", order_by="UserId") == ['{"UserId":1,"a\\"b\\\\c":"x"}']
    decoders = _decoders(all_types, "Odd Names", keys=["user_id", "a_b_c"])
    assert decode_tuple_json(decoders, ("1", None)) == '{"user_id":1,"a_b_c":null}'


def test_unchanged_toast_is_a_marker_string_not_null(all_types):
    decoders = _decoders(all_types, "all_types")[:3]
    got = decode_tuple_json(decoders, ("1", UNCHANGED, None))
    assert json.loads(got) == {"id": 1, "i2": UNCHANGED_TOAST, "i4": None}
    assert UNCHANGED_TOAST == "__pgsource_unchanged_toast__"
    assert pickle.loads(pickle.dumps(UNCHANGED)) is UNCHANGED


def test_bad_text_names_table_column_and_type(all_types):
    decoders = _decoders(all_types, "all_types")
    row = [None] * len(decoders)
    row[0] = "1"
    index = [d.column for d in decoders].index("ts")
    row[index] = "15.01.2024 10:30"  # DateStyle German: refused, not guessed
    with pytest.raises(SourceError, match=r"table all_types, column ts \(type timestamp without time zone\)"):
        decode_tuple_json(decoders, row)
    with pytest.raises(SourceError, match="2 values"):
        decode_tuple_json(decoders, ("1", None))
    error = SourceError("x")
    assert pickle.loads(pickle.dumps(error)).args == ("x",)


def test_missing_type_oid_names_column():
    with pytest.raises(SourceError, match="table t, column c: type oid 99999"):
        compile_columns("t", [("c", 99999)], {})


_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30)
_matrix = st.tuples(st.integers(1, 3), st.integers(1, 3)).flatmap(
    lambda shape: st.lists(
        st.lists(st.one_of(st.none(), _text), min_size=shape[1], max_size=shape[1]),
        min_size=shape[0],
        max_size=shape[0],
    )
)
_numeric = st.decimals(allow_nan=False, allow_infinity=False, places=None).filter(
    lambda d: abs(d.adjusted()) < 1000
) | st.sampled_from([Decimal("NaN"), Decimal("Infinity"), Decimal("-Infinity")])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    texts=st.lists(_text, max_size=8),
    arrays=st.lists(st.lists(st.one_of(st.none(), _text), max_size=5), max_size=4),
    numbers=st.lists(_numeric, max_size=8),
    floats=st.lists(st.floats(), max_size=8),
    floats32=st.lists(st.floats(width=32), max_size=8),
    blobs=st.lists(st.binary(max_size=40), max_size=4),
    matrix=_matrix,
)
def test_random_values_match_row_to_json(pg_dsn, texts, arrays, numbers, floats, floats32, blobs, matrix):
    conn = connect(pg_dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "DROP TABLE IF EXISTS rnd; CREATE TABLE rnd (id serial PRIMARY KEY, t text, ta text[],"
                " n numeric, na numeric[], f float8, fa float8[], f4a float4[], by bytea, ba bytea[], tm text[])"
            )
            count = max(len(texts), len(arrays), len(numbers), len(floats), len(blobs), 1)
            for i in range(count):
                cur.execute(
                    "INSERT INTO rnd (t, ta, n, na, f, fa, f4a, by, ba, tm) VALUES (%s, %s, %s::numeric,"
                    " %s::numeric[], %s::float8, %s::float8[], %s::float4[], %s, %s::bytea[], %s::text[])",
                    (
                        texts[i] if i < len(texts) else None,
                        arrays[i] if i < len(arrays) else None,
                        str(numbers[i]) if i < len(numbers) else None,
                        [str(n) for n in numbers[i:]] if i < len(numbers) else None,
                        repr(floats[i]).replace("inf", "Infinity") if i < len(floats) else None,
                        [repr(f).replace("inf", "Infinity") for f in floats[i:]] if i < len(floats) else [],
                        [repr(f).replace("inf", "Infinity") for f in floats32] if i == 0 else None,
                        blobs[i] if i < len(blobs) else None,
                        list(blobs) if i == 0 else None,
                        matrix,
                    ),
                )
        decoders = _decoders(conn, "rnd")
        for want, row in zip(expected_json(conn, "rnd"), raw_text_rows(conn, "rnd"), strict=True):
            _assert_same(want, decode_tuple_json(decoders, row))
    finally:
        conn.close()


@pytest.mark.parametrize("zone", ["Asia/Kolkata", "Europe/Amsterdam", "America/St_Johns", "Pacific/Apia"])
def test_timestamptz_offsets_in_any_session_zone(pg_dsn, zone):
    """Minutes and LMT seconds in offsets (+05:30, +00:19:32) convert as to_json prints them."""
    conn = connect(pg_dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SET TimeZone = %s", (zone,))
            cur.execute(
                "CREATE TABLE z (id int PRIMARY KEY, v timestamptz, va timestamptz[]);"
                " INSERT INTO z SELECT g, '1850-01-01 00:00:00+00'::timestamptz + g * interval '1 year 7 days',"
                " ARRAY['0044-03-15 10:00:00.25 BC'::timestamptz, '2024-07-01 12:00:00.1+00']"
                " FROM generate_series(1, 200) g"
            )
        decoders = _decoders(conn, "z")
        for want, row in zip(expected_json(conn, "z"), raw_text_rows(conn, "z"), strict=True):
            _assert_same(want, decode_tuple_json(decoders, row))
    finally:
        conn.close()


def test_extension_types_hstore_cast_and_plain(pg_dsn):
    """hstore has a cast to json (reproduced); citext and ltree have none (JSON strings)."""
    conn = connect(pg_dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "CREATE EXTENSION hstore; CREATE EXTENSION citext; CREATE EXTENSION ltree;"
                "CREATE TABLE ext (id int PRIMARY KEY, h hstore, ha hstore[], c citext, l ltree);"
                "INSERT INTO ext VALUES (1, hstore(ARRAY['a', 'q\"k\\\\', 'é 😀', 'n', ''],"
                " ARRAY['1', 'v\"\\\\x', E'tab\\t', NULL, '']), ARRAY['x=>1'::hstore, ''], 'MiXed', 'a.b.c'),"
                " (2, '', '{}', NULL, NULL)"
            )
        decoders = _decoders(conn, "ext")
        assert [d.decode.__name__ for d in decoders[1:3]] == ["decode_hstore", "decode_array"]
        for want, row in zip(expected_json(conn, "ext"), raw_text_rows(conn, "ext"), strict=True):
            _assert_same(want, decode_tuple_json(decoders, row))
    finally:
        conn.close()


def test_type_catalog_resolves_domains_arrays_composites(all_types):
    cols = {name: oid for name, oid, _ in columns_of(all_types, "all_types")}
    catalog = load_type_catalog(all_types, cols.values())
    assert catalog[cols["dn"]].category == "number" and catalog[cols["dn"]].base_oid == 23
    assert catalog[cols["bx"]].delimiter == ";"
    assert catalog[cols["o"]].category == "other"  # to_json prints oid as a string
    assert catalog[cols["i2v"]].category == "vector"
    compd = catalog[cols["compd"]]
    assert compd.category == "composite" and [a for a, _ in compd.attributes] == [
        "label", "amount", "seen", "nums", "mood",
    ]  # fmt: skip
    assert catalog[cols["en"]].category == "other"  # an enum is sent as its label, a JSON string
    for _, oid in compd.attributes:  # reached transitively
        assert oid in catalog
    with all_types.cursor() as cur:  # a dropped attribute disappears from the composite
        cur.execute("ALTER TYPE pair DROP ATTRIBUTE mood")
    again = load_type_catalog(all_types, [cols["comp"]])
    assert [a for a, _ in again[cols["comp"]].attributes] == ["label", "amount", "seen", "nums"]
    with pytest.raises(SourceError, match="not found"):
        load_type_catalog(all_types, [4000000000])
    assert load_type_catalog(all_types, []) == {}
