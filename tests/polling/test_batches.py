"""The poll worker's batches (``pgsource/polling/batches.py``): read by COPY, several per statement,
they are the batches the row path reads one by one, byte for byte, with the same offsets.

Each test reads a table to its end twice from the same reader: ``BatchReader(copy=True)`` (what the
worker uses where the C build and the server allow it) and ``BatchReader(copy=False)`` (the row path:
``read_batch`` + ``RowEncoder`` + ``encode_partition_frames``).
"""

from __future__ import annotations

import pytest

from pgsource.config.model import Config
from pgsource.pg import connect as pg
from pgsource.polling.batches import COPY_BATCHES, BatchReader, use_copy
from pgsource.polling.reader import open_reader
from pgsource.rows import copyjson
from pgsource.state import PollingOffset
from tests.support import execute

STAMP = "2024-01-01T00:00:00.000000Z"
pytestmark = pytest.mark.skipif(not copyjson.NATIVE, reason="the worker reads by COPY only with the C build")


@pytest.fixture(autouse=True)
def fixed_timestamp(monkeypatch):
    """Both paths stamp the envelope with the time of the read: the same one here."""
    monkeypatch.setattr("pgsource.rows.encoder.iso_timestamp", lambda: STAMP)
    monkeypatch.setattr("pgsource.rows.copy_reader.iso_timestamp", lambda: STAMP)


def _reader(dsn: str, table=None, partitioning: str = "primary_key", **source):
    config = Config.model_validate({
        "source": {"connection_string": dsn, "mode": "polling", "tables": [table] if table else [], **source},
        "iggy": {"address": "127.0.0.1:1", "partitions": 3, "partitioning": partitioning},
    })
    reader = open_reader(pg.connect(dsn), config, config.source.tables[0] if config.source.tables else None)
    reader.batch_size = config.source.batch_size
    return reader


def _all_batches(batches: BatchReader, offset: PollingOffset | None, batch_size: int) -> tuple[list, int]:
    """Every batch to the end of the table, and how many reads (statements) it took."""
    out, read_rows, reads = [], 0, 0
    while True:
        got = batches.read(offset, batch_size, read_rows)
        reads += 1
        for batch in got:
            assert batch.error is None
            out.append(batch)
            offset, read_rows = batch.after, read_rows + batch.rows
        if got[-1].rows < batch_size:
            return out, reads


def _same_batches(reader, offset: PollingOffset | None, batch_size: int) -> int:
    """Reads both ways, asserts they agree batch by batch; the number of COPY statements."""
    by_copy, copies = _all_batches(BatchReader(reader, copy=True), offset, batch_size)
    by_rows, _ = _all_batches(BatchReader(reader, copy=False), offset, batch_size)
    assert [(b.parts, b.rows, b.after, b.identities) for b in by_copy] == [
        (b.parts, b.rows, b.after, b.identities) for b in by_rows]
    for fast, slow in zip(by_copy, by_rows):
        assert (fast.snapshot is None) == (slow.snapshot is None)
        kept = fast.sent_ids()
        assert all(message_id in kept for message_id in slow.ids) and len(kept) == len(slow.ids)
    return copies


def _table(dsn: str, rows: int) -> None:
    execute(dsn, """CREATE TABLE b (id bigserial PRIMARY KEY, name text NOT NULL, price numeric(12,2),
                    at timestamptz, attrs jsonb, body text)""")
    execute(dsn, """INSERT INTO b (name, price, at, attrs, body)
                    SELECT 'n ' || g || E' \\\\ "q" \\t é', g * 1.5, '2024-01-01 00:00:00+00'::timestamptz
                           + g * interval '1.5 s', jsonb_build_object('g', g), 'body ' || g
                    FROM generate_series(1, %s) g""", (rows,))


@pytest.mark.parametrize("late_commits", ["auto", "off"])
def test_a_table_is_read_several_batches_per_copy_with_the_row_paths_messages(pg_dsn, late_commits):
    _table(pg_dsn, 100)
    reader = _reader(pg_dsn, "b", batch_size=7, late_commits=late_commits, partitioning="balanced")
    assert use_copy(reader)  # the worker takes the COPY path on this server
    copies = _same_batches(reader, None, 7)
    assert COPY_BATCHES == 8 and copies == 2  # 15 batches (the last one short): 8 in the first COPY, 7 in the second


def test_payload_column_and_custom_query_give_the_row_paths_messages(pg_dsn):
    _table(pg_dsn, 30)
    reader = _reader(pg_dsn, "b", batch_size=4, payload_column="body", payload_format="text")
    _same_batches(reader, None, 4)
    query = "SELECT id, name, attrs FROM b WHERE id > $offset ORDER BY id LIMIT $limit"
    reader = _reader(pg_dsn, custom_query=query, initial_offset=0, batch_size=9, tracking_column="id")
    assert _same_batches(reader, PollingOffset(("0",), 0, None), 9) == 4  # one batch per read: 9, 9, 9, 3


def test_rows_read_again_are_framed_as_the_row_path_frames_them(pg_dsn):
    _table(pg_dsn, 12)
    reader = _reader(pg_dsn, "b", batch_size=100)
    rows = reader.read_batch(None, 100).rows
    [first] = BatchReader(reader, copy=True).read(None, 100, 0)
    again = BatchReader(reader, copy=True).frame_rows(rows, 0)
    assert (again.parts, again.rows, again.identities) == (first.parts, first.rows, first.identities)
