"""CDC end to end against a real Iggy server: INSERT/UPDATE/DELETE arrive in commit order, exact values."""

from __future__ import annotations

import uuid

import pytest

from tests.cdc.common import wait_slot_caught_up
from tests.real.conftest import topics_for
from tests.real.reader import message_count, read_topic
from tests.support import execute, query, start_service, stop_service, wait_for, write_config

pytestmark = pytest.mark.timeout(900)


@pytest.mark.parametrize("transport", ["sql", "replication"])
def test_insert_update_delete_arrive_in_order(real_iggy, real_pg_dsn, real_stream, tmp_path, transport):
    execute(real_pg_dsn, "CREATE TABLE accounts (id int PRIMARY KEY, owner text NOT NULL, balance numeric(12,2) NOT NULL)")
    suffix = uuid.uuid4().hex[:8]
    slot, publication = f"slot_{suffix}", f"pub_{suffix}"
    config = write_config(
        tmp_path, real_pg_dsn, real_iggy.address,
        source={
            "mode": "cdc", "tables": ["accounts"], "replication_slot": slot, "publication_name": publication,
            "cdc_transport": transport, "batch_size": 100,
        },
        iggy=real_iggy.iggy_section(real_stream, **topics_for(real_iggy, real_stream, ["accounts"])),
    )
    service = start_service(config)
    try:
        # changes count from the slot's creation on: wait for it before writing
        wait_for(lambda: query(real_pg_dsn, "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,)),
                 60, 0.2, message=f"replication slot {slot}")
        execute(real_pg_dsn, "INSERT INTO accounts VALUES (1, 'ann', 10.00)")
        execute(real_pg_dsn, "INSERT INTO accounts VALUES (2, 'bob', 20.50), (3, 'cy', 0.01)")
        execute(real_pg_dsn, "UPDATE accounts SET balance = 99.99 WHERE id = 2")
        execute(real_pg_dsn, "DELETE FROM accounts WHERE id = 1")
        execute(real_pg_dsn, "BEGIN; UPDATE accounts SET owner = 'cyd' WHERE id = 3; INSERT INTO accounts VALUES (4, 'dee', 4.00); COMMIT")
        wait_for(lambda: message_count(real_iggy, real_stream, "accounts") >= 7, 60, 0.2, message="seven changes")
        wait_slot_caught_up(real_pg_dsn, slot)  # everything written was read and confirmed: no extra can follow
    finally:
        assert stop_service(service) == 0

    stored = read_topic(real_iggy, real_stream, "accounts")
    changes = [m.body() for m in stored]
    assert [(c["operation_type"], (c["data"] or c["old_data"])["id"]) for c in changes] == [
        ("INSERT", 1), ("INSERT", 2), ("INSERT", 3), ("UPDATE", 2), ("DELETE", 1), ("UPDATE", 3), ("INSERT", 4),
    ]
    assert {c["table_name"] for c in changes} == {"accounts"}
    assert str(changes[3]["data"]["balance"]) == "99.99"
    assert changes[4]["data"] is None and changes[4]["old_data"] == {"id": 1}  # default replica identity: the key
    assert changes[5]["data"] == {"id": 3, "owner": "cyd", "balance": changes[5]["data"]["balance"]}
    assert str(changes[5]["data"]["balance"]) == "0.01"
    assert len({m.id for m in stored}) == 7
    headers = stored[3].headers
    assert headers["table"] == "accounts" and headers["operation"] == "UPDATE" and "/" in headers["lsn"]
