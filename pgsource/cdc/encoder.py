"""Turning a stream of decoded pgoutput messages into Iggy messages (the CDC half of encoding).

``ChangeEncoder`` keeps what the stream says between messages: the relations it has
described (and a compiled decoder per relation), and the transaction in progress (its
commit LSN, xid, commit time and how many changes it has produced so far). Each change
becomes the SPEC's envelope with a deterministic id (commit LSN + slot + position in the
transaction) and user headers naming table, operation, LSN and xid.

Payloads are UTF-8 ``bytes``, whichever path made them.

Hot path: ``feed_buffer`` takes a message as bytes and, for an Insert or a key-less
Update of a relation whose partition is fixed, runs the relation's row function
(``pgsource.decode.rowjson``: the C ``Plan`` when built) and appends to the batch without
building a message object. What such a message needs besides its tuple (row function,
envelope parts, headers, partition, the batch's lists for its topic) is looked up once per
batch, transaction and (relation, operation): a "route" keyed by the message's first 6
bytes (kind, relation oid, 'N'). Everything else (Begin/Commit/Relation, DELETE, old tuples,
TOAST markers, text that is not UTF-8...) goes through ``decode_message`` and ``feed``;
both paths give the same payloads, ids, partitions and headers. Per transaction and
(relation, operation), the envelope prefix/suffix bytes and the headers dict are built
once: the dict is shared by those messages (the SDK copies it; pickle stores it once per
batch).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from pgsource.cdc.change_batch import ChangeBatch, tables_of  # noqa: F401 (re-exported: the worker imports them here)
from pgsource.cdc.payload_messages import PayloadMessages
from pgsource.cdc.schema_watch import SchemaWatch
from pgsource.cdc.transaction_markers import TransactionMarkers
from pgsource.config.model import Config, Operation, Partitioning
from pgsource.config.names import message_name
from pgsource.decode import pgoutput as po
from pgsource.decode.rowjson import NATIVE, RowJson, compile_row_json
from pgsource.decode.values import compile_relation, decode_tuple_json
from pgsource.encode.batch import new_message_batch
from pgsource.encode.envelope import envelope_parts, envelope_suffix
from pgsource.encode.frames import TXN_INDEX
from pgsource.encode.ids import cdc_message_id, key_partition
from pgsource.encode.markers import SCHEMA_CHANGE, encode_schema_change, schema_change_id
from pgsource.encode.names import output_names
from pgsource.errors import SourceError
from pgsource.lsn import format_lsn

log = logging.getLogger("pgsource.cdc")


@dataclass
class _RelationState:
    relation: po.Relation
    table_name: str
    topic: str
    decoders: list
    key_positions: list[int]  # the replica identity columns pgoutput flags, for 'K' old tuples
    key_decoders: list  # decoders of the key columns only, for 'K' old tuples
    captured: bool
    row: RowJson | None = None  # the relation's row function, when the fast path applies
    partition: int | None = None  # the partition of every change, when it does not depend on the row
    partition_positions: list[int] = field(default_factory=list)  # the catalog key, in key order
    start_lsn: int = 0  # changes of transactions committing before it are not sent (a table's cut)
    payload_position: int | None = None  # payload_column: the column whose value is the message
    relation_name: str | None = None  # the relation's name now, when it is not the configured one (a rename)


class ChangeEncoder(PayloadMessages):
    """Stateful: feed it every decoded message of the stream, in order.

    ``keys``: per captured table (schema, name), its primary key (else unique NOT NULL key)
    from the catalog, which picks a change's partition as polling and the snapshot pick it
    (pgoutput's key flags would name every column under REPLICA IDENTITY FULL). ``starts``:
    per table, the cut below which its changes are covered by its snapshot (a table that
    joined a streaming slot): changes of transactions committing before it are skipped.
    ``oids``: the configured tables by the oid they had at boot. Given, a relation is captured
    by its oid, whatever it is called now (a rename, a schema renamed, SET SCHEMA): its
    messages keep the configured name (``table_name``, topic, partitions), and a user header
    ``relation`` names it as it is now. Without it (a tool, a test), by (schema, name).
    """

    def __init__(self, config: Config, slot: str, load_types: Callable[[list[int]], dict], *,
                 keys: Mapping[tuple[str, str], tuple[str, ...]] | None = None,
                 starts: Mapping[tuple[str, str], int] | None = None,
                 oids: Mapping[int, object] | None = None,
                 shapes: SchemaWatch | None = None,
                 load_type_names: Callable[[list[tuple[int, int]]], dict] | None = None) -> None:
        source = config.source
        self.slot = slot
        self.config = config
        self.snake_case = source.snake_case_columns
        self.include_metadata = source.include_metadata
        self.operations = {op.value for op in source.capture_operations}
        self.partitions = config.iggy.partitions
        self.partitioning = config.iggy.partitioning
        self.tables = {(t.schema_, t.name): t for t in source.tables}
        self.oids = dict(oids or {})
        self._renamed: set[tuple[int, str]] = set()  # (oid, name) of renamed relations already logged
        self.payload_column = source.payload_column
        self.payload_format = source.payload_format.value
        self.keys = dict(keys or {})
        self.starts = dict(starts or {})
        self.load_types = load_types
        self.types: dict[int, object] = {}
        # transaction_markers: headers and messages put xid and txn_index in the headers
        # (txn_index filled in from each message's id when its frames are made); messages adds
        # the BEGIN and COMMIT messages (pgsource/cdc/transaction_markers.py)
        self.txn_headers = source.transaction_markers != "off"
        self.markers = (TransactionMarkers(slot, config.iggy.transaction_topic)
                        if source.transaction_markers == "messages" else None)
        # schema changes: the announced shapes, and format_type names of (type oid, typmod)
        self.shapes = shapes if source.schema_change_events else None
        self.load_type_names = load_type_names
        self.type_names: dict[tuple[int, int], str] = {}
        # backfills: the tables whose changes' keys are reported to ``on_key`` (the fast path skips
        # them), and logical decoding messages to ``on_message`` (prefix, content, lsn)
        self.watched: set[str] = set()
        self.on_key: Callable[[str, tuple | None], None] | None = None
        self.on_message: Callable[[po.Message, ChangeBatch], None] | None = None
        self.on_begin: Callable[[int], None] | None = None  # each transaction's xid
        self.relations: dict[int, _RelationState] = {}
        self._begin: po.Begin | None = None
        self._commit_lsn = 0  # of the transaction in progress
        self._position = 0
        self._timestamp = ""
        self._commit_seconds = 0.0
        self._lsn_text = ""
        self._xid_text = ""
        self._id_base = 0  # commit LSN << 64 | slot tag << 48: a change's id is this | its position
        self._parts: dict[tuple[int, str], tuple] = {}  # per transaction: (oid, op) -> envelope parts, headers
        self._captured_ops = {op: op in self.operations for op in ("INSERT", "UPDATE")}
        self._routes: dict[bytes, tuple | bool] = {}  # feed_buffer's: valid for one batch and transaction
        self._routes_batch: ChangeBatch | None = None
        # Whether feed_buffer's ``s`` (the message decoded as latin-1) is worth computing:
        # only the pure-Python row functions use it.
        self.needs_text = not NATIVE

    @property
    def in_transaction(self) -> bool:
        """Between a Begin and its Commit: confirming any position now could cut the transaction."""
        return self._begin is not None

    @property
    def transaction_commit_time(self) -> float:
        """The commit time (epoch seconds) of the transaction being read, 0.0 between transactions:
        pgoutput sends a transaction once it committed, so its Begin carries the commit time, and
        the batches of a transaction larger than a batch carry it before its Commit is read."""
        return self._commit_seconds if self._begin is not None else 0.0

    def feed(self, message, out: ChangeBatch) -> None:
        kind = type(message)
        if kind is po.Insert:
            self._change(message.relation_oid, "INSERT", message.new, None, None, out)
        elif kind is po.Update:
            self._change(message.relation_oid, "UPDATE", message.new, message.old, message.old_kind, out)
        elif kind is po.Delete:
            self._change(message.relation_oid, "DELETE", None, message.old, message.old_kind, out)
        elif kind is po.Begin:
            self._begin = message
            self._commit_lsn = message.final_lsn
            self._position = 0
            self._timestamp = po.pg_timestamp_to_iso(message.commit_ts)
            self._commit_seconds = message.commit_ts / 1e6 + 946_684_800
            self._lsn_text = format_lsn(message.final_lsn)
            self._xid_text = str(message.xid)
            if self.on_begin is not None:
                self.on_begin(message.xid)
            self._id_base = cdc_message_id(message.final_lsn, self.slot, 0)
            self._parts = {}
            self._routes = {}
            if self.markers is not None:
                self.markers.start(message.xid, message.final_lsn, self._lsn_text, self._timestamp)
        elif kind is po.Commit:
            if self.markers is not None:
                self.markers.finish(out.add)
            out.last_commit_end = message.end_lsn
            out.commit_time = self._commit_seconds
            self._begin = None
            self._routes = {}
        elif kind is po.Relation:
            self._relation(message, out)
        elif kind is po.Message:
            if self.on_message is not None:
                self.on_message(message, out)
        elif kind is po.Truncate:
            for oid in message.relation_oids:
                self._change(oid, "TRUNCATE", None, None, None, out)

    def _relation(self, relation: po.Relation, out: ChangeBatch) -> None:
        schema = relation.namespace or "pg_catalog"
        table = self.oids.get(relation.oid) if self.oids else self.tables.get((schema, relation.name))
        current = message_name(schema, relation.name)
        if table is not None:  # keys, cuts, names: the configured table's, whatever it is called now
            schema, name = table.schema_, table.name
        else:
            name = relation.name
        oids = [c.type_oid for c in relation.columns if c.type_oid not in self.types]
        if oids and table is not None:
            self.types.update(self.load_types(oids))
        names = [c.name for c in relation.columns]
        keys = output_names(names, self.snake_case)
        decoders = compile_relation(relation, self.types, keys) if table is not None else []
        key_positions = [i for i, c in enumerate(relation.columns) if c.is_key]
        catalog_key = self.keys.get((schema, name))
        if catalog_key is None:  # not given (a tool, a test): pgoutput's flags
            partition_positions = key_positions
        else:
            partition_positions = [names.index(k) for k in catalog_key if k in names]
        qualified = message_name(schema, name)
        topic = self.config.iggy.topic_for(table) if table is not None else ""
        state = _RelationState(
            relation, qualified, topic, decoders, key_positions,
            [decoders[i] for i in key_positions] if decoders else [], table is not None,
            partition_positions=partition_positions, start_lsn=self.starts.get((schema, name), 0),
            relation_name=current if current != qualified else None,
        )
        if state.relation_name and (relation.oid, current) not in self._renamed:
            self._renamed.add((relation.oid, current))
            log.warning("table %s is now named %s (oid %d): still captured by its oid; its messages keep table_name"
                        " %s, topic and partitions, with a user header relation: %s", qualified, current,
                        relation.oid, qualified, current)
        if self.partitions == 1 or self.partitioning is Partitioning.TABLE or not partition_positions:
            state.partition = key_partition(qualified, self.partitions)
        if table is not None and self.payload_column is not None:
            if self.payload_column not in names:
                raise SourceError(f"table {qualified}: payload_column {self.payload_column!r} is not among its published columns")
            state.payload_position = names.index(self.payload_column)
        elif table is not None and state.partition is not None:
            state.row = compile_row_json([(c.name, c.type_oid) for c in relation.columns], self.types, keys)
        self.relations[relation.oid] = state
        self._parts = {key: value for key, value in self._parts.items() if key[0] != relation.oid}
        self._routes = {}
        if table is not None and self.shapes is not None and self.payload_column is None:
            self._shape(relation, state, keys, out)

    def _shape(self, relation: po.Relation, state: _RelationState, names: list[str], out: ChangeBatch) -> None:
        """A captured relation's columns against the announced shape: a SCHEMA_CHANGE before the
        first change of another shape (in each partition the table's changes may go to)."""
        pairs = [(c.type_oid, c.typmod) for c in relation.columns]
        missing = [pair for pair in pairs if pair not in self.type_names]
        if missing and self.load_type_names is not None:
            self.type_names.update(self.load_type_names(missing))
        columns = tuple((name, self.type_names.get(pair, str(pair[0]))) for name, pair in zip(names, pairs))
        change = self.shapes.seen(state.table_name, columns, self._commit_lsn)
        if change is None:
            return
        payload = encode_schema_change(state.table_name, self._timestamp, change.old, change.new)
        headers = {"table": state.table_name, "operation": SCHEMA_CHANGE, "lsn": self._lsn_text}
        partitions = [state.partition] if state.partition is not None else range(self.partitions)
        for partition in partitions:
            message_id = schema_change_id(state.table_name, self._commit_lsn, change.new, partition)
            out.add(state.topic, message_id, partition, payload, headers)

    def _envelope(self, oid: int, state: _RelationState, operation: str) -> tuple:
        """(prefix, suffix, headers) of ``operation`` on a relation in this transaction, built once.

        prefix and suffix are UTF-8 bytes (empty without metadata).
        """
        parts = self._parts.get((oid, operation))
        if parts is None:
            if self.include_metadata:
                prefix, suffix = (part.encode() for part in envelope_parts(state.table_name, operation, self._timestamp))
            else:
                prefix = suffix = b""
            headers = {"table": state.table_name, "operation": operation, "lsn": self._lsn_text}
            if self.txn_headers:  # txn_index "": each message's position, from its id (pgsource/encode/frames.py)
                headers |= {"xid": self._xid_text, TXN_INDEX: ""}
            if state.relation_name:
                headers["relation"] = state.relation_name
            parts = self._parts[(oid, operation)] = (prefix, suffix, headers)
        return parts

    def feed_buffer(self, b: bytes, s: str | None, start: int, end: int, out: ChangeBatch) -> None:
        """Feed the message ``b[start:end]``; ``s`` is ``b`` decoded as latin-1, or None.

        ``s`` only speeds up the pure-Python row functions (see ``needs_text``).
        """
        kind = b[start]
        if (kind == 73 or kind == 85) and end - start > 6:  # Insert, Update
            if out is not self._routes_batch:
                self._routes = {}
                self._routes_batch = out
            head = b[start : start + 6]
            route = self._routes.get(head)
            if route is None:
                route = self._routes[head] = self._route(head, out)
            if route is _SKIP:
                self._position += 1
                return
            if route is not False:
                row, prefix, suffix, partition, headers, ids, parts, payloads, header_list, tally = route
                payload = row(b, s, start + 6, end, prefix, suffix)
                if payload is not None:
                    position = self._position
                    ids.append(self._id_base | position)
                    parts.append(partition)
                    payloads.append(payload)
                    header_list.append(headers)
                    out.count += 1
                    if tally is not None:
                        tally[0] += 1
                    self._position = position + 1
                    return
        self.feed(po.decode_message(b[start:end]), out)

    def _route(self, head: bytes, out: ChangeBatch) -> tuple | bool:
        """What feed_buffer does with the Inserts/Updates that start with ``head``, in this batch.

        ``False``: the general path (an old tuple, no transaction, a relation without row
        function); ``_SKIP``: an operation not captured, only the position moves; else
        (row function, prefix, suffix, partition, headers, and the batch's 4 lists of the topic).
        """
        if head[5] != 78 or self._begin is None:  # 'N': the new tuple alone
            return False
        oid = _I32(head, 1)[0]
        state = self.relations.get(oid)
        if state is None or state.row is None or state.table_name in self.watched:
            return False  # (a table being backfilled: its keys are reported, on the general path)
        operation = "UPDATE" if head[0] == 85 else "INSERT"
        if not self._captured_ops[operation] or self._commit_lsn < state.start_lsn:
            return _SKIP
        tally = self.markers.tally(state.table_name, out.add) if self.markers is not None else None
        prefix, suffix, headers = self._envelope(oid, state, operation)
        lists = out.topic_messages.get(state.topic) or out.topic_messages.setdefault(state.topic, new_message_batch())
        return (state.row, prefix, suffix, state.partition, headers, *lists, tally)

    def _change(self, oid: int, operation: str, new, old, old_kind, out: ChangeBatch) -> None:
        state = self.relations.get(oid)
        if state is None:
            raise SourceError(f"change for relation oid {oid} before its Relation message")
        if self._begin is None:
            raise SourceError(f"{operation} on {state.table_name} outside a transaction")
        position = self._position
        self._position += 1
        if not state.captured or operation not in self.operations or self._commit_lsn < state.start_lsn:
            return
        if state.table_name in self.watched:
            self._report_keys(state, operation, new, old)
        if new is not None and old is not None and old_kind == "O" and po.UNCHANGED in new:
            new = tuple(o if n is po.UNCHANGED else n for n, o in zip(new, old))  # FULL gives the value
        if state.payload_position is not None:
            self._payload_change(state, oid, operation, new, old, position, out)
            return
        data = decode_tuple_json(state.decoders, new) if new is not None else None
        old_data = None
        if old is not None:
            if old_kind == "K":
                old_data = decode_tuple_json(state.key_decoders, [old[i] for i in state.key_positions])
            else:
                old_data = decode_tuple_json(state.decoders, old)
        prefix, suffix, headers = self._envelope(oid, state, operation)
        if self.include_metadata:
            data = "null" if data is None else data
            if old_data is not None:
                suffix = envelope_suffix(old_data).encode()
            payload = prefix + data.encode() + suffix
        else:
            payload = (data if data is not None else (old_data or "null")).encode()
        message_id = self._id_base | (position & 0xFFFF_FFFF_FFFF)
        partition = state.partition
        if partition is None:
            partition = self._partition(state, new if new is not None else old, old_kind)
        self._add(state, out, message_id, partition, payload, headers)

    def _add(self, state: _RelationState, out: ChangeBatch, message_id: int, partition: int, payload: bytes,
             headers: dict) -> None:
        """A change's message into the batch (counted for its transaction's COMMIT message)."""
        if self.markers is not None:
            self.markers.tally(state.table_name, out.add)[0] += 1
        out.add(state.topic, message_id, partition, payload, headers)

    def _report_keys(self, state: _RelationState, operation: str, new, old) -> None:
        """The keys a change of a table being backfilled touches (its old and new key; a TRUNCATE: None)."""
        if operation == TRUNCATE:
            self.on_key(state.table_name, None)
            return
        for values in (new, old):
            if values is not None:
                self.on_key(state.table_name, tuple(values[i] for i in state.partition_positions))

    def _partition(self, state: _RelationState, values, old_kind) -> int:
        if self.partitions == 1 or self.partitioning is Partitioning.TABLE:
            return key_partition(state.table_name, self.partitions)
        if values is None or not state.partition_positions:
            return key_partition(state.table_name, self.partitions)
        if self.partitioning is Partitioning.BALANCED:
            return self._position % self.partitions
        # as polling: the key columns' text, NUL-joined when there are several
        key = "\x00".join("" if not isinstance(values[i], str) else values[i] for i in state.partition_positions)
        return key_partition(key, self.partitions)


TRUNCATE = Operation.TRUNCATE.value
_I32 = struct.Struct("!I").unpack_from
_SKIP = ("skip",)  # the route of an operation that is not captured
