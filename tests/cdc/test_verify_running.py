"""``pgsource verify`` in CDC does not fail a healthy running pipeline (issue 23, bug 5: it reported
messages missing, exit 10, until the worker's next 10 s copy of the confirmed LSN was written: the
slot was confirmed beyond the record, as it is whenever changes flow)."""

from __future__ import annotations

import pytest

from pgsource.state import FileStateStore, SlotProgress
from tests.cdc.common import TRANSPORTS, cdc_config, confirmed_lsn, wait_until_capturing
from tests.support import bodies, execute, run_cli, start_service, stop_service, wait_for


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_verify_passes_while_changes_are_confirmed_beyond_the_record(pg_dsn, iggy, tmp_path, transport):
    execute(pg_dsn, "CREATE TABLE t (id int PRIMARY KEY)")
    config = cdc_config(tmp_path, pg_dsn, iggy, transport, tables=["t"])
    store = FileStateStore(str(tmp_path / "state"))
    service = start_service(config)
    try:
        wait_until_capturing(pg_dsn, transport)
        wait_for(lambda: store.load("cdc/iggy_slot", SlotProgress), 30, message="the slot's record")
        execute(pg_dsn, "INSERT INTO t SELECT generate_series(1, 50)")
        wait_for(lambda: len(bodies(iggy, "t")) == 50, 30, message="50 changes in Iggy")
        recorded = store.load("cdc/iggy_slot", SlotProgress).lsn
        wait_for(lambda: confirmed_lsn(pg_dsn) > recorded, 30, message="the slot confirmed beyond its record")
        result = run_cli("verify", "--config", str(config), timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "ok: nothing missing" in result.stderr + result.stdout
        assert f"the messages themselves: pgsource tail --config {config}" in result.stdout
    finally:
        assert stop_service(service) == 0
