"""``pgsource snapshot``: ask for a backfill of one table (or cancel it), running service or not.

The request is a transactional logical decoding message (``pgsource/cdc/backfill_request.py``):
the slot capturing the table brings it to its worker in commit order, now if the service runs,
at its next start otherwise (the slot replays it). Nothing else is written anywhere, so the
command needs only a database connection; an operator without shell access writes the same
message with one ``SELECT`` (docs/cdc.md, "Backfills").

What can be checked here is checked before the message is written: the table is configured
and captured in CDC mode, it has a key to read it in order by, and PostgreSQL accepts
``--where`` on it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from pgsource.cdc.backfill_request import BACKFILL_PREFIX, MAX_CHUNK_SIZE, BackfillRequest
from pgsource.config.model import Config
from pgsource.config.predicate import predicate_problem
from pgsource.errors import ConfigError, PrerequisiteError
from pgsource.lsn import format_lsn
from pgsource.ops.admin.common import cdc_slots, connection, find_table
from pgsource.pg import connect as pg
from pgsource.pg.catalog import describe_table
from pgsource.pg.messages import emit_logical_message
from pgsource.pg.row_filter import build_filter_probe
from pgsource.pg.statements import result_columns


@dataclass(frozen=True)
class Requested:
    request: BackfillRequest
    lsn: int
    worker: str

    def describe(self) -> str:
        what = "cancel of the backfill" if self.request.action == "cancel" else "backfill"
        return (f"{what} of {self.request.table} requested: id {self.request.id}, at {format_lsn(self.lsn)}, slot"
                f" {self.request.slot} ({self.worker}); a running service acts on it now, a stopped one at its next start")


def request_backfill(config: Config, table_name: str, where: str | None, chunk_size: int | None,
                     cancel: bool) -> Requested:
    """Check what can be checked, then write the request into the WAL."""
    if not config.source.cdc:
        raise ConfigError("pgsource snapshot backfills a table captured in mode: cdc; in polling, "
                          "`pgsource reset --table T --to-start` reads a table again")
    table = find_table(config, table_name)
    if where is not None and (not where.strip() or predicate_problem(where)):
        raise ConfigError(f"--where: {predicate_problem(where) if where.strip() else 'an empty predicate'}")
    if chunk_size is not None and not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise ConfigError(f"--chunk-size: a whole number from 1 to {MAX_CHUNK_SIZE:,}")
    with connection(config, "snapshot") as conn:
        slot, worker = _slot_of(conn, config, table.qualified)
        if not cancel:
            _check_table(conn, table, where)
        request = BackfillRequest(uuid.uuid4().hex[:16], table.qualified, where, chunk_size,
                                  "cancel" if cancel else "start", slot)
        lsn = emit_logical_message(conn, True, BACKFILL_PREFIX, request.to_json())
    return Requested(request, lsn, worker)


def _slot_of(conn, config: Config, reference: str) -> tuple[str, str]:
    """The slot capturing the table as ``run`` plans it: only that slot's worker acts on the request."""
    for worker, (slot, units) in cdc_slots(conn, config).items():
        if any(unit.table.qualified == reference for unit in units):
            return slot, worker
    raise PrerequisiteError(f"table {reference}: no slot of this configuration captures it (is it in this shard?)")


def _check_table(conn, table, where: str | None) -> None:
    info = describe_table(conn, table.schema_, table.name)
    if not info.identity:
        raise PrerequisiteError(
            f"table {table.qualified} has no primary key or unique NOT NULL key: a backfill reads it in key order,"
            " chunk by chunk, and matches each row with the stream's changes by that key; add one")
    if where is None:
        return
    try:
        result_columns(conn, build_filter_probe(table.schema_, table.name, where), {})
    except pg.DatabaseError as exc:
        raise ConfigError(f"--where: {str(exc).strip().splitlines()[0]}") from None
