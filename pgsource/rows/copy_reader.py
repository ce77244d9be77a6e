"""``CopyReader``: a table's batches read as COPY text and encoded in the same pass (polling's fast path).

The row path (a reader's ``read_batch`` + ``RowEncoder.encode_batch`` + ``encode_partition_frames``)
has PostgreSQL build every row's JSON and makes Python objects per row. ``CopyReader`` reads
the same rows (the same WHERE, ORDER BY and bound values: the reader's ``batch_reading``) with
``COPY (SELECT <columns>) TO STDOUT`` straight into the decoder of ``pgsource/rows/copyjson.py``,
which writes ids, partitions, envelopes, row JSON and Iggy frames without a Python object per
row. The messages are byte for byte those of the row path (``tests/polling/test_copy_reader.py``).

A read returns a ``CopyRead``: per partition one blob of frames, and what the worker needs
afterwards (the offset after the last row, the snapshot for late commits, the ids when a range
stays unsealed, the identities for delete/mark). Needs PostgreSQL 14+ (the type catalog) and
a UTF-8 client encoding; ``CopyReader.supports`` says whether a reader qualifies.

It wraps the reader it reads for (``KeysetReader``, the polling reader on top of it, or the custom
query's reader: ``plan`` None), which keeps its plan, its offsets' rules and its error handling.
"""

from __future__ import annotations

from dataclasses import dataclass

from pgsource.config.model import Partitioning
from pgsource.encode.envelope import envelope_parts, iso_timestamp
from pgsource.encode.frames import MAX_PAYLOAD, PartitionFrames
from pgsource.encode.ids import key_partition
from pgsource.errors import SourceError
from pgsource.pg.copy_query import (
    CUSTOM_FIELDS,
    CUSTOM_LAYOUT,
    CopyLayout,
    build_copy_batch,
    build_copy_custom,
    build_copy_layout,
    build_copy_rows_by_key,
)
from pgsource.pg.select import Reading, by_key_params
from pgsource.pg.statements import copy_to, render
from pgsource.pg.types import load_column_types
from pgsource.rows import copyjson
from pgsource.rows.copyjson import column_spec, compile_copy_plan
from pgsource.state import PollingOffset


@dataclass
class CopyRead:
    """One read, encoded: the frames to send, and what the worker needs once they are acknowledged."""

    parts: list[PartitionFrames]  # per partition, in the order of each one's first message
    rows: int  # rows read
    messages: int  # messages made: the rows, less those ``exclude`` named
    position: tuple | None  # the position values of the last row read (None: no row)
    snapshot: str | None  # the read's snapshot (late commits) or tick (xid8)
    ids: bytes  # 16-byte big-endian ids of the messages, in order (``copyjson.sort_ids`` for an exclude)
    identities: list[tuple] | None  # (key values..., xmin) per message, for delete/mark
    after: PollingOffset | None = None  # where the next read starts (read_batch only)

    def message_ids(self) -> list[int]:
        """The ids as ints (tests, logs; the hot path keeps the bytes)."""
        return [int.from_bytes(self.ids[i:i + 16], "big") for i in range(0, len(self.ids), 16)]


class CopyReader:
    """Reads a reader's table (or custom query) by COPY; ``native``: force C (True) or Python (False)."""

    def __init__(self, reader, *, native: bool | None = None) -> None:
        if not self.supports(reader):
            raise ValueError(f"table {reader.table_name}: the COPY read needs PostgreSQL 14+ and a UTF-8 client encoding")
        self.reader = reader
        plan = reader.plan
        encoder = reader.encoder
        self.include_metadata = encoder.include_metadata
        if plan is None:
            self.layout: CopyLayout = CUSTOM_LAYOUT
            fields, columns = CUSTOM_FIELDS, []
            self._statements: dict[object, str] = {"custom": render(build_copy_custom(reader._custom, reader.tracking_column),
                                                                    reader.conn)}
            self._definition: dict[str, object] = {}
            self.catalog = None
        else:
            self.catalog = catalog = load_column_types(reader.conn, set(reader.column_types.values()))
            self.layout = build_copy_layout(plan, reader.column_types, catalog)
            fields = self.layout.fields
            columns = [column_spec(field, key, oid, catalog, index == 0)
                       for index, (field, key, oid) in enumerate(self.layout.data)]
            self._statements = {}
            oid, definition = reader._definition
            self._definition = {"relation": oid, "definition": definition}
        self._enveloped = plan is None or plan.payload is None
        partitions = encoder.partitions
        choose, partition = {Partitioning.TABLE: ("fixed", key_partition(reader.table_name, partitions)),
                             Partitioning.BALANCED: ("balanced", 0)}.get(encoder.partitioning, ("key", 0))
        if choose == "key" and partitions == 1:
            choose = "fixed"
        layout = self.layout
        acts_on_rows = getattr(reader, "acts_on_rows", False)

        def compile_plan(snapshot: int | None):
            return compile_copy_plan(
                table=reader.table_name, fields=fields + (snapshot is not None), ids=layout.ids, keys=layout.keys,
                positions=layout.positions, identities=layout.identities if acts_on_rows else None,
                snapshot=snapshot, body=layout.body, body_field=layout.body_field, columns=columns,
                partitioning=choose, partitions=partitions, partition=partition, max_payload=MAX_PAYLOAD, native=native)

        self._plans = {False: compile_plan(None), True: compile_plan(fields)}  # by reading.snapshot

    @staticmethod
    def supports(reader) -> bool:
        """Whether ``reader``'s table can be read by COPY (else the row path reads it)."""
        conn = reader.conn
        encoding = getattr(conn, "encoding", "UTF8")
        return encoding in ("UTF8", "UNICODE") and (reader.plan is None or conn.server_version >= 140000)

    @property
    def native(self) -> bool:
        return copyjson.NATIVE and not isinstance(self._plans[False], copyjson.CopyPlanPython)

    # -- the reads ----------------------------------------------------------------------------

    def read_batch(self, offset: PollingOffset | None, batch_size: int, *, read_rows: int = 0) -> CopyRead:
        """The batch after ``offset`` (the reader's ``read_batch``'s rows), encoded; ``read_rows``: the rows
        read before it (``partitioning: balanced``)."""
        reader = self.reader
        if reader.plan is None:
            read = self._read(self._statements["custom"], reader.custom_params(offset, batch_size), False, read_rows,
                              "reading a batch")
            read.after = PollingOffset(read.position, read.rows, reader.chunk) if read.rows else offset
            return read
        reading, params = reader.batch_reading(offset, batch_size)
        read = self._read(self._batch_statement(reading), {**params, **self._definition}, reading.snapshot, read_rows,
                          "reading a batch")
        read.snapshot, read.after = reader.next_offset(offset, reading, read.rows, read.position, read.snapshot,
                                                       batch_size)
        return read

    def read_batches(self, offset: PollingOffset | None, batch_size: int, count: int, *,
                     read_rows: int = 0) -> tuple[list[CopyRead], SourceError | None]:
        """Up to ``count`` batches after ``offset`` in one COPY: what ``count`` successive ``read_batch``
        calls give (each framed as a batch of its own, with its own offset), read in one statement and
        one snapshot, so the per-statement cost (planning, the round trip, the definition check) is paid
        once. Returns the batches, and the error of a bad row after them (its batch and later ones are
        not returned). Not for xid8 tracking (a short batch ends a tick) nor custom queries."""
        reader = self.reader
        if reader.plan is None or getattr(reader, "exact", False):
            raise ValueError(f"table {reader.table_name}: read_batches is for tables without xid8 tracking")
        reading, params = reader.batch_reading(offset, batch_size)
        params = {**params, **self._definition, "limit": batch_size * count}
        segments = self._copy(self._batch_statement(reading), params, reading.snapshot, read_rows, "reading a batch",
                              segment=batch_size)
        reads, error = [], None
        for segment in segments:
            if segment[-1] is not None:
                error = self._error(*segment[-1])
                break
            read = self._decoded(segment)
            read.snapshot, read.after = reader.next_offset(offset, reading, read.rows, read.position, read.snapshot,
                                                           batch_size)
            reads.append(read)
        return reads, error

    def read_late_rows(self, lo: tuple | None, hi: tuple, snapshot: str, batch_size: int, after: tuple | None = None,
                       *, exclude: bytes = b"", read_rows: int = 0) -> CopyRead:
        """The reader's ``read_late_rows``, encoded, without the messages whose ids ``exclude`` (sorted
        16-byte ids, as ``sort_ids`` gives) holds: those the range's first read sent."""
        reading, params = self.reader.late_reading(lo, hi, snapshot, batch_size, after)
        return self._read(self._batch_statement(reading), {**params, **self._definition}, False, read_rows,
                          "re-reading late rows", exclude)

    def read_rows_by_key(self, keys: list[tuple], hi: tuple, *, read_rows: int = 0) -> CopyRead:
        """The reader's ``read_rows_by_key``, encoded."""
        statement = self._statements.get("by_key")
        if statement is None:
            statement = self._statements["by_key"] = render(build_copy_rows_by_key(self.reader.plan, self.layout),
                                                            self.reader.conn)
        read = self._read(statement, by_key_params(keys, hi), False, read_rows,
                          "reading rows updated since they were sent")
        if read.rows:
            self.reader.check_definition()  # no definition in this statement: checked as the row path does
        return read

    # -- one COPY -----------------------------------------------------------------------------

    def _batch_statement(self, reading: Reading) -> str:
        statement = self._statements.get(reading)
        if statement is None:
            statement = self._statements[reading] = render(build_copy_batch(self.reader.plan, self.layout, reading),
                                                           self.reader.conn)
        return statement

    def _read(self, statement: str, params: dict, snapshot: bool, read_rows: int, what: str,
              exclude: bytes = b"") -> CopyRead:
        """One COPY as one batch; a bad row raises its error."""
        finished = self._copy(statement, params, snapshot, read_rows, what, exclude)
        if finished[-1] is not None:
            raise self._error(*finished[-1])
        return self._decoded(finished)

    def _copy(self, statement: str, params: dict, snapshot: bool, read_rows: int, what: str,
              exclude: bytes = b"", segment: int = 0):
        """Run the COPY into a new sink (again on a retry): its ``finish()`` (a list of them with ``segment``)."""
        reader = self.reader
        if self._enveloped and self.include_metadata:
            prefix, suffix = (part.encode() for part in envelope_parts(reader.table_name, "SELECT", iso_timestamp()))
        else:
            prefix = suffix = b""
        plan = self._plans[snapshot]

        def run():
            sink = plan.batch(prefix, suffix, read_rows, exclude or None, segment)
            copy_to(reader.conn, statement, params, sink)
            return sink.finish()

        finished = reader.guarded(run, what)
        first = finished[0] if segment else finished
        if not first[1] and first[-1] is None and self._definition:
            reader.check_definition()  # no row may also mean: the table's columns changed (copy_query.py)
        return finished

    @staticmethod
    def _decoded(finished: tuple) -> CopyRead:
        parts, rows, messages, position, first_snapshot, ids, identities, _ = finished
        frames = [PartitionFrames(partition, count, blob, sums) for partition, count, blob, sums in parts]
        return CopyRead(frames, rows, messages, position, first_snapshot, ids, identities)

    def _error(self, code: int, detail) -> SourceError:
        """The error the row path raises for the same row (``RowEncoder``), or one naming table and column."""
        reader = self.reader
        name = reader.table_name
        plan = reader.plan
        if code == copyjson.E_NULL_TRACKING:
            return SourceError(f"custom_query: a row has NULL in tracking_column {reader.tracking_column!r}: "
                               f"{detail[0][:200]}")
        if code in (copyjson.E_NULL_PAYLOAD, copyjson.E_EMPTY_PAYLOAD):
            position, message_id = detail
            column = plan.payload[0] if plan is not None and plan.payload else "?"
            return SourceError(
                f"table {name}: row {', '.join(map(str, position))} (message id {message_id:#x}) has"
                f" {'a NULL' if code == copyjson.E_NULL_PAYLOAD else 'an empty'} payload_column {column!r};"
                " Iggy takes no empty message")
        if code == copyjson.E_OVERSIZE:
            values, size = detail
            columns = plan.key_columns if plan is not None else (reader.tracking_column,)
            key = ", ".join(f"{column}={value}" for column, value in zip(columns, values))
            return SourceError(
                f"table {name}, row {key}: its message is {size:,} bytes, Iggy takes at most {MAX_PAYLOAD:,};"
                " pgsource neither splits nor skips a row: make it smaller (or leave the big column out of the"
                " table pgsource reads), then start again")
        if code == copyjson.E_VALUE:
            index, text, why = detail
            _, key, oid = self.layout.data[index]
            column = next((c for c, k, _ in plan.json_columns if k == key), key)
            type_name = self.catalog[oid].name if oid is not None else "json"
            shown = text if len(text) <= 80 else text[:80] + "..."
            return SourceError(f"table {name}, column {column} (type {type_name}): cannot convert {shown!r} to JSON: {why}")
        return SourceError(f"table {name}: unexpected COPY output: {detail}")

