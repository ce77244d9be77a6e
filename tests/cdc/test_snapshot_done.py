"""Issue 9, item 3: the initial snapshot is done only when Iggy acknowledged every row of it.

A stop while its last batches wait for acks leaves it unfinished: the next start sends it
again (the rows a consumer already has keep their ids, a row changed meanwhile gets a new
one), then streams from the slot's consistent point, so the changes made meanwhile arrive
too (a row deleted meanwhile gets its DELETE).
"""

from __future__ import annotations

import pytest

from tests.cdc.common import TRANSPORTS, cdc_config, key_of, replay, stored
from tests.support import execute, query, start_service, stop_service, wait_for

ROWS = 1000  # 20 batches of 50, twice what the queue holds


def _worker_gone(dsn: str) -> bool:
    return query(dsn, "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pgsource-worker-0%'")[0][0] == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_stop_before_the_snapshot_was_acknowledged_sends_it_again(pg_dsn, iggy, tmp_path, transport):
    from pgsource.state import FileStateStore, SlotProgress, SnapshotPhase

    execute(pg_dsn, "CREATE TABLE s (id int PRIMARY KEY, v text)")
    execute(pg_dsn, "INSERT INTO s SELECT g, 'old' FROM generate_series(1, %s) g", (ROWS,))
    config = cdc_config(tmp_path, pg_dsn, iggy, transport, tables=["s"], snapshot="initial", batch_size=50,
                        sections={"supervisor": {"restart_backoff": "100ms", "stop_timeout": "3s"}})
    iggy.set_latency(0.3)  # slow acks: the snapshot is still in flight when the stop comes
    service = start_service(config)
    try:
        wait_for(lambda: len(stored(iggy, "s")) >= 50, 60, message="the first snapshot batch in Iggy")
        service.terminate()  # SIGTERM while batches wait for room in the queue and for their acks
        wait_for(lambda: _worker_gone(pg_dsn), 30, message="the worker to leave")
        iggy.refuse_connections()  # what the publisher still holds cannot be delivered any more
        iggy.drop_connections()
    finally:
        assert stop_service(service) == 0
    first = {key_of(body): message_id for message_id, body, _ in stored(iggy, "s")}
    assert 0 < len(first) < ROWS
    record = FileStateStore(str(tmp_path / "state")).load("cdc/iggy_slot", SlotProgress)
    assert record.phase is SnapshotPhase.IN_PROGRESS  # not "done": its rows were not all acknowledged
    execute(pg_dsn, "UPDATE s SET v = 'changed' WHERE id = 1")  # delivered in the first attempt, changed since
    execute(pg_dsn, "DELETE FROM s WHERE id = 2")  # delivered in the first attempt, deleted since
    execute(pg_dsn, "UPDATE s SET v = 'changed' WHERE id = %s", (ROWS,))  # never delivered, changed since
    iggy.set_latency(0)
    iggy.refuse_connections(False)
    service = start_service(config)
    try:
        wait_for(lambda: {key_of(b) for _, b, _ in stored(iggy, "s") if b["operation_type"] == "SELECT"}
                 >= set(range(1, ROWS + 1)) - {2}, 60, message="every row of the snapshot")
        execute(pg_dsn, "INSERT INTO s VALUES (%s, 'new')", (ROWS + 1,))
        wait_for(lambda: any(key_of(b) == ROWS + 1 for _, b, _ in stored(iggy, "s")), 30, message="a change after it")
    finally:
        assert stop_service(service) == 0
    messages = stored(iggy, "s")
    table = {row_id: {"id": row_id, "v": v} for row_id, v in query(pg_dsn, "SELECT id, v FROM s")}
    assert replay(messages) == table  # a consumer that drops repeated ids ends with the table
    second = {}
    for message_id, body, _ in messages:
        if body["operation_type"] == "SELECT":
            second[key_of(body)] = message_id  # the last SELECT of each row: the redo's
    assert second[3] == first[3]  # re-sent unchanged: the same id, a recognisable duplicate
    assert second[1] != first[1]  # changed between the attempts: another version, another id
    assert [b["operation_type"] for _, b, _ in messages if key_of(b) == 2][-1] == "DELETE"
    record = FileStateStore(str(tmp_path / "state")).load("cdc/iggy_slot", SlotProgress)
    assert record.phase is SnapshotPhase.DONE
