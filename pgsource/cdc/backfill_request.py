"""A backfill request, as it travels: a logical decoding message in the WAL.

``pgsource snapshot --table T`` (or an operator's own ``SELECT``, see docs/cdc.md
"Backfills") writes ``pg_logical_emit_message(true, 'pgsource.backfill', '<json>')``: a
transactional message, so it reaches every slot in commit order, a running service at once
and a stopped one at its next start (the slot replays it from its confirmed LSN). The JSON:

    {"table": "sales.orders", "id": "…", "where": "…", "chunk_size": 1000,
     "action": "start" | "cancel", "slot": "…"}

Only ``table`` is required. ``id`` defaults to the message's LSN (a request's LSN is unique
and the same each time the slot replays it); ``slot`` restricts the request to the service
streaming that slot (without it, every slot capturing the table acts on it).

The watermarks a running backfill writes around each chunk are non-transactional messages
of the prefix ``pgsource.watermark`` (``pgsource/cdc/watermarks.py``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pgsource.config.names import parse_table_reference, table_reference
from pgsource.config.predicate import predicate_problem

BACKFILL_PREFIX = "pgsource.backfill"
WATERMARK_PREFIX = "pgsource.watermark"
ACTIONS = ("start", "cancel")
MAX_CHUNK_SIZE = 1_000_000


class BadRequest(ValueError):
    """A request that cannot be acted on; the message says which field and why."""


@dataclass(frozen=True)
class BackfillRequest:
    id: str
    table: str  # the table's reference, as ``tables`` writes it (``sales.orders``, ``"a.b"``)
    where: str | None = None  # the user's predicate, AND-ed with the table's row filter
    chunk_size: int | None = None  # None: source.backfill_chunk_size
    action: str = "start"
    slot: str | None = None

    def to_json(self) -> str:
        raw = {"id": self.id, "table": self.table, "action": self.action}
        raw |= {key: value for key, value in (("where", self.where), ("chunk_size", self.chunk_size),
                                              ("slot", self.slot)) if value is not None}
        return json.dumps(raw, separators=(",", ":"))


def decode_request(content: bytes, lsn: int) -> BackfillRequest:
    """The request a ``pgsource.backfill`` message holds; ``BadRequest`` names what is wrong."""
    try:
        raw = json.loads(content)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"not JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise BadRequest("not a JSON object")
    unknown = sorted(set(raw) - {"id", "table", "where", "chunk_size", "action", "slot"})
    if unknown:
        raise BadRequest(f"unknown field(s) {', '.join(unknown)}")
    table = raw.get("table")
    if not isinstance(table, str) or not table:
        raise BadRequest("table: required, a table name as in source.tables")
    try:
        table = table_reference(*parse_table_reference(table))
    except ValueError as exc:
        raise BadRequest(f"table: {exc}") from None
    where = raw.get("where")
    if where is not None and (not isinstance(where, str) or not where.strip() or predicate_problem(where)):
        raise BadRequest(f"where: {predicate_problem(where) if isinstance(where, str) and where.strip() else 'a predicate (text)'}")
    chunk_size = raw.get("chunk_size")
    if chunk_size is not None and (type(chunk_size) is not int or not 1 <= chunk_size <= MAX_CHUNK_SIZE):
        raise BadRequest(f"chunk_size: a whole number from 1 to {MAX_CHUNK_SIZE:,}")
    action = raw.get("action", "start")
    if action not in ACTIONS:
        raise BadRequest(f"action: {' or '.join(ACTIONS)}")
    request_id = raw.get("id", str(lsn))
    if not isinstance(request_id, str) or not request_id or len(request_id) > 100:
        raise BadRequest("id: text of 1 to 100 characters")
    slot = raw.get("slot")
    if slot is not None and not isinstance(slot, str):
        raise BadRequest("slot: a replication slot name")
    return BackfillRequest(request_id, table, where, chunk_size, action, slot)
