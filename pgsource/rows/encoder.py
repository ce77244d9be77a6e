"""``RowEncoder``: rows a reader read (``pgsource/rows/keyset.py``) become messages (polling's twin of ``ChangeEncoder``).

Per row: the SPEC's envelope around the row's JSON (or the ``payload_column``'s value as it
is), a deterministic id (XXH3-128 of the table and the row's position, and its ``xmin`` where
delete/mark act on row versions), and a partition. The batch comes out as the
``MessageBatch`` both modes share (``pgsource/encode/batch.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import itemgetter

from pgsource.config.model import Config, Partitioning
from pgsource.encode.batch import MessageBatch
from pgsource.encode.envelope import compact_json, envelope_parts, iso_timestamp
from pgsource.encode.frames import MAX_PAYLOAD
from pgsource.encode.ids import key_partition, polling_message_id, polling_message_ids
from pgsource.errors import SourceError
from pgsource.pg.plan import XMIN, PollPlan


@dataclass(frozen=True)
class EncodeSettings:
    """What encoding rows takes of the configuration."""

    partitions: int  # iggy.partitions
    partitioning: Partitioning = Partitioning.PRIMARY_KEY
    include_metadata: bool = True  # the SPEC's envelope around the row (source.include_metadata)

    @classmethod
    def of(cls, config: Config) -> EncodeSettings:
        return cls(config.iggy.partitions, config.iggy.partitioning, config.source.include_metadata)


@dataclass
class EncodedBatch:
    """A batch ready to send, plus what the worker needs once it is acknowledged."""

    messages: MessageBatch
    identities: list[tuple] | None  # (key values..., xmin) per row, for delete/mark after the ack


class RowEncoder:
    """Encodes the rows of one table (or one custom_query); ``plan`` is None for a custom_query."""

    def __init__(self, settings: EncodeSettings, table_name: str, plan: PollPlan | None, tracking_column: str,
                 json_at: int, *, acts_on_rows: bool) -> None:
        self.table_name = table_name
        self.plan = plan
        self.tracking_column = tracking_column
        self.partitions = settings.partitions
        self.partitioning = settings.partitioning
        self.include_metadata = settings.include_metadata
        self._json_at = json_at
        self.acts_on_rows = acts_on_rows

    def encode_batch(self, rows: list[tuple], read_rows: int) -> EncodedBatch:
        """Messages for ``rows``: envelope, deterministic id, partition (``read_rows``: the rows read
        before them, which ``partitioning: balanced`` counts on).

        The id covers the row's ``xmin`` too where delete/mark act on versions: a row read
        again after an update is a new message there.
        """
        table_name = self.table_name
        partitions = self.partitions
        json_at = self._json_at
        count = len(rows)
        ids = self.message_ids(rows)
        if self.plan is not None and self.plan.payload is not None:
            payloads = self._payloads(rows, ids)
        elif self.include_metadata:
            prefix, suffix = envelope_parts(self.table_name, "SELECT", iso_timestamp())
            payloads = [prefix + row[json_at] + suffix for row in rows]
        else:
            payloads = [row[json_at] for row in rows]
        if payloads and max(map(len, payloads)) * 4 > MAX_PAYLOAD:  # UTF-8: at most 4 bytes a character
            self._refuse_oversized(rows, payloads)
        plan = self.plan
        key_of = itemgetter(0) if plan is None else _key_getter(plan)
        if self.partitioning is Partitioning.TABLE:
            parts = [key_partition(table_name, partitions)] * count
        elif self.partitioning is Partitioning.BALANCED:
            parts = [(read_rows + index) % partitions for index in range(count)]
        elif partitions == 1:
            parts = [0] * count
        else:
            parts = [key_partition(key_of(row), partitions) for row in rows]
        identities = None
        if plan is not None and self.acts_on_rows:
            positions = [plan.select_columns.index(c) for c in (*plan.identity, XMIN)]
            identities = [tuple(row[p] for p in positions) for row in rows]
        return EncodedBatch(MessageBatch(ids, parts, payloads), identities)

    def _payloads(self, rows: list[tuple], ids: list[int]) -> list[bytes]:
        """``payload_column``: the column's value is the message (bytes as they are, text as UTF-8,
        JSON compact); a NULL or empty one can never be sent and stops with the row named."""
        json_at = self._json_at
        payload_format = self.plan.payload[1]
        out = []
        for row, message_id in zip(rows, ids):
            value = row[json_at]
            if value is None or len(value) == 0:
                width = len(self.plan.position_columns)
                raise SourceError(
                    f"table {self.table_name}: row {', '.join(map(str, row[:width]))} (message id {message_id:#x}) has"
                    f" {'a NULL' if value is None else 'an empty'} payload_column {self.plan.payload[0]!r};"
                    " Iggy takes no empty message"
                )
            if payload_format == "bytea":
                out.append(bytes(value))
            elif payload_format == "json_direct":
                out.append(compact_json(value).encode())
            else:
                out.append(value.encode())
        return out

    def _refuse_oversized(self, rows: list[tuple], payloads: list) -> None:
        """A row whose message Iggy can never take stops the table with its key: never split, never skipped."""
        for row, payload in zip(rows, payloads):
            size = len(payload) if isinstance(payload, bytes) else len(payload.encode())
            if size > MAX_PAYLOAD:
                plan = self.plan
                columns = plan.key_columns if plan is not None else (self.tracking_column,)
                positions = [plan.select_columns.index(c) for c in columns] if plan is not None else [0]
                key = ", ".join(f"{column}={row[p]}" for column, p in zip(columns, positions))
                raise SourceError(
                    f"table {self.table_name}, row {key}: its message is {size:,} bytes, Iggy takes at most"
                    f" {MAX_PAYLOAD:,}; pgsource neither splits nor skips a row: make it smaller (or leave the"
                    " big column out of the table pgsource reads), then start again"
                )

    def message_ids(self, rows: list[tuple]) -> list[int]:
        """Each row's deterministic id: XXH3-128 of the table and its position values (+ xmin when versioned)."""
        table_name = self.table_name
        plan = self.plan
        if plan is None:
            json_at = self._json_at
            for row in rows:
                if row[0] is None:
                    raise SourceError(f"custom_query: a row has NULL in tracking_column {self.tracking_column!r}: {row[json_at][:200]}")
            return [polling_message_id(table_name, (row[0], row[json_at])) for row in rows]
        width = len(plan.position_columns)
        if plan.versioned:
            positions = [*range(width), plan.select_columns.index(XMIN)]
            return [polling_message_id(table_name, tuple(row[p] for p in positions)) for row in rows]
        if width == 1:  # the tracking column is never NULL here (the query excludes it)
            return polling_message_ids(table_name, [row[0] for row in rows])
        return [polling_message_id(table_name, row[:width]) for row in rows]


def _key_getter(plan: PollPlan):
    """row → the text that picks its partition (its identity, else its position values)."""
    positions = [plan.select_columns.index(c) for c in plan.key_columns]
    if len(positions) == 1:
        return itemgetter(positions[0])
    return lambda row: "\x00".join("" if row[p] is None else row[p] for p in positions)
