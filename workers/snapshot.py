"""The optional initial snapshot of CDC: existing rows first, then the stream, no gap, no overlap.

The slot is created over a replication connection with ``EXPORT_SNAPSHOT``; the rows are
read in that exported snapshot (``SET TRANSACTION SNAPSHOT``), so they are exactly the
state at the slot's consistent point, and streaming then starts at that point. Rows go
out as ``operation_type: SELECT`` with the same keyset reading and encoding as polling.
If the snapshot does not finish, the next start drops the slot it made (nothing was
consumed from it) and begins again; re-sent rows keep their ids.
"""

from __future__ import annotations

import logging

from pgsource.pg import connect as pg
from pgsource.pg import replication as rep
from pgsource.polling import TableReader

log = logging.getLogger("pgsource.cdc")


def run_initial_snapshot(worker) -> None:
    config = worker.spec.config
    source = config.source
    replication = pg.connect_replication(source.connection_string, application_name=f"pgsource-{worker.spec.name}-snapshot")
    try:
        with replication.cursor() as cur:
            cur.execute(f'CREATE_REPLICATION_SLOT "{worker.slot}" LOGICAL pgoutput EXPORT_SNAPSHOT')
            _, consistent_point, snapshot_name, _ = cur.fetchone()
        worker._confirmed = rep.parse_lsn(consistent_point)
        reader_conn = pg.connect(source.connection_string, application_name=f"pgsource-{worker.spec.name}-snapshot", autocommit=False)
        try:
            with reader_conn.cursor() as cur:
                cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                cur.execute("SET TRANSACTION SNAPSHOT %s", (snapshot_name,))
            for unit in worker.spec.units:
                _copy_table(worker, TableReader(reader_conn, config, unit.table, by_identity=True))
            reader_conn.commit()
        finally:
            reader_conn.close()
        worker._wait_acks(deadline=None)
    finally:
        replication.close()
    log.info("%s: initial snapshot done, streaming from %s", worker.spec.name, consistent_point)


def _copy_table(worker, reader: TableReader) -> None:
    from pgsource.changes import ChangeBatch

    offset = None
    rows = 0
    while True:
        batch_rows = reader.fetch_batch(offset)
        if not batch_rows:
            return
        encoded = reader.encode_batch(batch_rows, worker.spec.config.source.include_metadata, rows)
        batch = ChangeBatch()
        headers = {"table": reader.table_name, "operation": "SELECT"}  # one dict: encoded once per batch
        for message_id, partition, payload in zip(encoded.ids, encoded.partitions, encoded.payloads):
            batch.add(reader.topic, message_id, partition, payload.encode(), headers)  # CDC batches carry bytes
        worker._send(batch)
        worker._collect_acks(block=False)
        offset = encoded.last_offset
        rows = offset.rows
