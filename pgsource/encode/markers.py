"""Messages about the stream's structure rather than a row: transaction markers and schema changes.

- Transaction markers (``transaction_markers: messages``): a ``BEGIN`` before a transaction's
  first message and a ``COMMIT`` after its last, in a topic of their own. Their ids follow the
  changes' scheme (commit LSN, slot tag, a position), with the two highest positions, which no
  change can take (a transaction would need 2^48 - 2 changes): a re-sent marker keeps its id.
- Schema changes (``SCHEMA_CHANGE``): the envelope of a row message, with the table's columns
  (name and type, as ``format_type`` prints it) before (``old_data``) and after (``data``).
  Its id is XXH3-128 of table, the change's generation and the new columns: the same event
  seen again (a restart re-reads it) keeps its id, a later change to the same shape gets a new one.
"""

from __future__ import annotations

import json

import xxhash

from pgsource.encode.ids import cdc_message_id

BEGIN_POSITION = (1 << 48) - 2
COMMIT_POSITION = (1 << 48) - 1
SCHEMA_CHANGE = "SCHEMA_CHANGE"

Columns = tuple[tuple[str, str], ...]  # (name, type) in column order


def _dumps(value) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def transaction_marker_id(commit_lsn: int, slot: str, kind: str) -> int:
    return cdc_message_id(commit_lsn, slot, BEGIN_POSITION if kind == "BEGIN" else COMMIT_POSITION)


def encode_transaction_marker(kind: str, xid: int, commit_lsn: str, commit_time: str,
                              tables: dict[str, int] | None = None) -> bytes:
    """``{"type": "BEGIN"|"COMMIT", "xid", "commit_lsn", "commit_time"}``; a COMMIT adds the
    messages sent for the transaction, in all and per table (``table_name``)."""
    body: dict = {"type": kind, "xid": xid, "commit_lsn": commit_lsn, "commit_time": commit_time}
    if tables is not None:
        body["messages"] = sum(tables.values())
        body["tables"] = tables
    return _dumps(body)


def _columns(columns: Columns) -> dict:
    return {"columns": [{"name": name, "type": type_name} for name, type_name in columns]}


def encode_schema_change(table_name: str, timestamp: str, old: Columns | None, new: Columns) -> bytes:
    """The envelope of a schema change: ``data`` the new columns, ``old_data`` the old ones (null
    when they are not known)."""
    return _dumps({"table_name": table_name, "operation_type": SCHEMA_CHANGE, "timestamp": timestamp,
                   "data": _columns(new), "old_data": _columns(old) if old is not None else None})


def schema_change_id(table_name: str, generation: int, new: Columns, partition: int = 0) -> int:
    """Deterministic: table, the change's generation (in CDC the commit LSN of its first row, in
    polling the table's count of recorded changes) and the new columns; one id per partition."""
    text = "\x00".join([table_name, format(generation, "x"), str(partition), *(f"{n}\x01{t}" for n, t in new)])
    return xxhash.xxh3_128_intdigest(text.encode("utf-8")) or 1
