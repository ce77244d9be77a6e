"""The warning "rows ... were given their values by the client" is said when the client did give
them (ids above the sequence), never for a writer that uses the sequence (issue 23, bug 4: the
demo said it in 3 of 4 runs: rows committed between the sequence's observation and the read's
snapshot were above the value observed, yet the sequence had handed them out)."""

from __future__ import annotations

import threading
import time

import psycopg2

from tests.support import bodies, execute, query, start_service, stop_service, wait_for, write_config

WARNING = "were given their values by the client"


def _write_with_the_sequence(dsn: str, stop: threading.Event) -> None:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        while not stop.is_set():
            cur.execute("INSERT INTO t (note) SELECT 'w' FROM generate_series(1, 3)")
    conn.close()


def test_only_ids_the_client_gave_are_warned_about(pg_dsn, iggy, tmp_path):
    execute(pg_dsn, "CREATE TABLE t (id bigserial PRIMARY KEY, note text)")
    config = write_config(tmp_path, pg_dsn, iggy.address, source={"tables": ["t"], "batch_size": 50,
                                                                  "poll_interval": "20ms"})
    log = config.with_suffix(".log")
    service = start_service(config)
    stop = threading.Event()
    writer = threading.Thread(target=_write_with_the_sequence, args=(pg_dsn, stop))
    try:
        wait_for(lambda: "t from the start" in log.read_text(), 60, message="the worker")
        writer.start()
        time.sleep(3)  # hundreds of reads racing the writer's commits
        stop.set()
        writer.join()
        written = query(pg_dsn, "SELECT count(*) FROM t")[0][0]
        wait_for(lambda: len(bodies(iggy, "t")) >= written, 60, message="every row written with the sequence")
        assert WARNING not in log.read_text()
        execute(pg_dsn, "INSERT INTO t (id, note) VALUES (10000000, 'given by the client')")
        wait_for(lambda: WARNING in log.read_text(), 30, message="the warning for the client's id")
    finally:
        stop.set()
        if writer.is_alive():
            writer.join()
        assert stop_service(service) == 0
    assert log.read_text().count(WARNING) == 1

