"""Backfills while the stream goes on (issue 20, part 1): ``pgsource snapshot --table T`` under
concurrent INSERT/UPDATE/DELETE of the same keys, and a kill -9 in the middle. Replayed in order,
what a consumer builds equals the table, and no backfill row is older than a change before it."""

from __future__ import annotations

import json
import random
import threading

import pytest

from pgsource.state import BackfillPhase, BackfillRecord, FileStateStore, backfills_key
from tests.cdc.common import TRANSPORTS, cdc_config, replay, stored, wait_slot_caught_up, wait_until_capturing
from tests.support import execute, kill_service, query, run_cli, start_service, stop_service, wait_for

ROWS = 3000


def _record(tmp_path) -> BackfillRecord | None:
    return FileStateStore(str(tmp_path / "state")).load(backfills_key("iggy_slot"), BackfillRecord)


def _phase(tmp_path) -> BackfillPhase | None:
    record = _record(tmp_path)
    return record.backfills[-1].phase if record and record.backfills else None


class _Writer(threading.Thread):
    """INSERT, UPDATE (v = v + 1: a row's versions only grow) and DELETE of keys the backfill reads."""

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.stop = threading.Event()
        self.statements = 0

    def run(self) -> None:
        import psycopg2

        conn = psycopg2.connect(self.dsn)
        conn.autocommit = True
        chance = random.Random(20)
        with conn.cursor() as cur:
            while not self.stop.is_set():
                key = chance.randrange(1, ROWS + 200)
                what = chance.random()
                if what < 0.6:
                    cur.execute("UPDATE t SET v = v + 1 WHERE id = %s", (key,))
                elif what < 0.8:
                    cur.execute("DELETE FROM t WHERE id = %s", (key,))
                else:
                    cur.execute("INSERT INTO t (id, v) VALUES (%s, 0) ON CONFLICT (id) DO UPDATE SET v = t.v + 1",
                                (key,))
                self.statements += 1
        conn.close()


def _check(pg_dsn: str, iggy, request_id: str, where=lambda row: True) -> list:
    """The table a consumer builds is the table (the rows ``where`` keeps); returns the messages."""
    messages = stored(iggy, "t")
    rows = [{"id": row[0], "v": row[1], "note": row[2]} for row in query(pg_dsn, "SELECT id, v, note FROM t")]
    assert replay(messages) == {row["id"]: row for row in rows if where(row)}
    last: dict[int, dict | None] = {}  # per key, what the last change before now left (None: deleted)
    for _, body, message in messages:
        data = body["data"] or body["old_data"]
        if body["operation_type"] != "SELECT":
            last[data["id"]] = body["data"]
            continue
        assert message.headers["backfill"] == request_id and message.headers["operation"] == "SELECT"
        if data["id"] in last:  # a backfill row is never older than the change before it (v only grows while a row lives)
            before = last[data["id"]]
            assert before is not None and data["v"] >= before["v"], f"backfill row {data} is older than {before}"
    return messages


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_backfill_under_concurrent_writes_of_the_same_keys(pg_dsn, iggy, tmp_path, transport):
    execute(pg_dsn, "CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, note text);"
                    " INSERT INTO t SELECT g, 0, 'n' || g FROM generate_series(1, %s) g", (ROWS,))
    config = cdc_config(tmp_path, pg_dsn, iggy, transport, tables=["t"], backfill_chunk_size=150, batch_size=100)
    service = start_service(config)
    writer = _Writer(pg_dsn)
    try:
        wait_until_capturing(pg_dsn, transport)
        writer.start()
        wait_for(lambda: writer.statements > 50, 30, message="the writer running")
        result = run_cli("snapshot", "--config", str(config), "--table", "t")
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("backfill of t requested: id ")
        request_id = result.stdout.split("id ", 1)[1].split(",", 1)[0]
        wait_for(lambda: _phase(tmp_path) is BackfillPhase.DONE, 120, message="the backfill done")
        writer.stop.set()
        writer.join(10)
        wait_slot_caught_up(pg_dsn)
    finally:
        writer.stop.set()
        assert stop_service(service) == 0
    messages = _check(pg_dsn, iggy, request_id)
    selected = [m for _, body, m in messages if body["operation_type"] == "SELECT"]
    assert len({m.id for m in selected}) == len(selected)  # each key once
    assert len(selected) > ROWS // 2 and writer.statements > 200
    order = [body["operation_type"] for _, body, _ in messages]
    first, last = order.index("SELECT"), len(order) - 1 - order[::-1].index("SELECT")
    assert any(op != "SELECT" for op in order[first:last])  # changes came between the chunks: they overlapped
    assert _record(tmp_path).backfills[-1].rows == len(selected)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_backfill_killed_in_the_middle_goes_on_after_its_last_acknowledged_chunk(pg_dsn, iggy, tmp_path, transport):
    execute(pg_dsn, "CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, note text);"
                    " INSERT INTO t SELECT g, 0, repeat('x', 200) FROM generate_series(1, 20000) g")
    config = cdc_config(tmp_path, pg_dsn, iggy, transport, tables=["t"], backfill_chunk_size=100, batch_size=250)
    service = start_service(config)
    try:
        wait_until_capturing(pg_dsn, transport)
        result = run_cli("snapshot", "--config", str(config), "--table", "t", "--where", "id % 2 = 0 OR v > 0")
        assert result.returncode == 0, result.stderr
        request_id = result.stdout.split("id ", 1)[1].split(",", 1)[0]
        wait_for(lambda: (_record(tmp_path) and _record(tmp_path).backfills[-1].rows >= 2000), 60, interval=0.01,
                 message="some chunks acknowledged")
        iggy.freeze()  # the kill comes in the middle, however fast the backfill goes
        execute(pg_dsn, "UPDATE t SET v = 1 WHERE id IN (9999, 10000, 19999); DELETE FROM t WHERE id = 19998")
    finally:
        kill_service(service)
        iggy.freeze(False)
    stopped_at = _record(tmp_path).backfills[-1]
    assert stopped_at.phase is BackfillPhase.RUNNING and 0 < stopped_at.rows < 10000
    status = run_cli("status", "--config", str(config))
    assert f"backfill {request_id} of t: {stopped_at.rows} of ~" in status.stdout
    service = start_service(config)
    try:
        wait_for(lambda: _phase(tmp_path) is BackfillPhase.DONE, 120, message="the backfill done after the restart")
        wait_slot_caught_up(pg_dsn)
    finally:
        assert stop_service(service) == 0
    messages = _check(pg_dsn, iggy, request_id, where=lambda row: row["id"] % 2 == 0 or row["v"] > 0)
    selected = [(m.id, json.loads(m.payload)["data"]["id"]) for _, body, m in messages if body["operation_type"] == "SELECT"]
    keys = {key for _, key in selected}
    assert all(key % 2 == 0 or key in (9999, 19999) for key in keys)
    assert len({mid for mid, _ in selected}) == len(keys)  # a row sent again after the kill kept its id
    # at most the rows unacknowledged at the kill are sent again: 8 batches in flight and the one being built
    assert len(selected) - len(keys) <= 250 * 9


def test_what_a_backfill_cannot_do_is_refused_before_anything_is_written(pg_dsn, iggy, tmp_path):
    execute(pg_dsn, "CREATE TABLE keyless (v int); CREATE TABLE t (id int PRIMARY KEY, v int)")
    config = cdc_config(tmp_path, pg_dsn, iggy, "replication", tables=["keyless", "t"])
    execute(pg_dsn, "SELECT pg_create_logical_replication_slot('probe', 'test_decoding')")  # sees any request written
    refused = run_cli("snapshot", "--config", str(config), "--table", "keyless")
    assert refused.returncode == 3
    assert refused.stderr.strip() == ("error: table keyless has no primary key or unique NOT NULL key: a backfill reads"
                                      " it in key order, chunk by chunk, and matches each row with the stream's changes"
                                      " by that key; add one")
    bad = run_cli("snapshot", "--config", str(config), "--table", "t", "--where", "nope > 1")
    assert bad.returncode == 2 and bad.stderr.strip() == 'error: --where: column "nope" does not exist'
    unknown = run_cli("snapshot", "--config", str(config), "--table", "missing")
    assert unknown.returncode == 2 and "--table missing: not in source.tables" in unknown.stderr
    def written() -> int:
        return query(pg_dsn, "SELECT count(*) FROM pg_logical_slot_peek_changes('probe', NULL, NULL)"
                             " WHERE data LIKE %s", ("%pgsource.backfill%",))[0][0]

    assert written() == 0  # no request was written
    assert run_cli("snapshot", "--config", str(config), "--table", "t").returncode == 0
    assert written() == 1  # (the probe does see one)
    execute(pg_dsn, "SELECT pg_drop_replication_slot('probe')")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_cancelled_backfill_stops_and_the_stream_goes_on(pg_dsn, iggy, tmp_path, transport):
    execute(pg_dsn, "CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, note text);"
                    " INSERT INTO t SELECT g, 0, 'n' FROM generate_series(1, 50000) g")
    config = cdc_config(tmp_path, pg_dsn, iggy, transport, tables=["t"], backfill_chunk_size=100, batch_size=100)
    service = start_service(config)
    try:
        wait_until_capturing(pg_dsn, transport)
        assert run_cli("snapshot", "--config", str(config), "--table", "t").returncode == 0
        wait_for(lambda: (_record(tmp_path) and _record(tmp_path).backfills[-1].rows >= 300), 60, message="some chunks")
        cancel = run_cli("snapshot", "--config", str(config), "--table", "t", "--cancel")
        assert cancel.returncode == 0 and cancel.stdout.startswith("cancel of the backfill of t requested: id ")
        wait_for(lambda: _phase(tmp_path) is BackfillPhase.CANCELLED, 30, message="the backfill cancelled")
        execute(pg_dsn, "UPDATE t SET v = 1 WHERE id = 50000")
        wait_slot_caught_up(pg_dsn)
    finally:
        assert stop_service(service) == 0
    bodies = [body for _, body, _ in stored(iggy, "t")]
    assert 300 <= sum(b["operation_type"] == "SELECT" for b in bodies) < 50000
    assert bodies[-1]["operation_type"] == "UPDATE" and bodies[-1]["data"]["v"] == 1
    assert "backfill of t cancelled" in config.with_suffix(".log").read_text()


def test_a_running_backfill_shows_its_progress_in_metrics_and_status_chunk_by_chunk(pg_dsn, iggy, tmp_path):
    """--chunk-size sets the chunk: progress moves 300 rows at a time. Held still (Iggy frozen), a
    running backfill is in /metrics (rows sent, the planner's estimate, an ETA) and in ``status``,
    with the same figures; once done, every row is counted and the ETA is 0."""
    from pgsource_testkit.postgres import free_port
    from tests.polling.test_metrics import scrape

    execute(pg_dsn, "CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, note text);"
                    " INSERT INTO t SELECT g, 0, 'n' FROM generate_series(1, 30000) g; ANALYZE t")
    port = free_port()
    config = cdc_config(tmp_path, pg_dsn, iggy, "replication", tables=["t"], batch_size=100,
                        sections={"metrics": {"port": port, "host": "127.0.0.1"}})
    labels = (("table", "t"), ("worker", "worker-0"))
    seen: set[int] = set()  # the acknowledged rows the record showed

    def running_rows() -> int | None:
        record = _record(tmp_path)
        if not record or not record.backfills or record.backfills[-1].phase is not BackfillPhase.RUNNING:
            return None
        seen.add(record.backfills[-1].rows)
        return record.backfills[-1].rows

    def unchanged() -> int | None:  # the same rows at two looks half a second apart
        rows, last = running_rows(), seen_last[:]
        seen_last[:] = [rows]
        return rows if last == [rows] else None

    seen_last: list = []

    def figures_of(rows: int):
        samples = scrape(port)
        return samples if samples.get(("pgsource_cdc_backfill_rows_total", labels)) == rows else None

    service = start_service(config)
    try:
        wait_until_capturing(pg_dsn, "replication")
        result = run_cli("snapshot", "--config", str(config), "--table", "t", "--chunk-size", "300")
        assert result.returncode == 0, result.stderr
        request_id = result.stdout.split("id ", 1)[1].split(",", 1)[0]
        wait_for(lambda: (running_rows() or 0) >= 3000 and running_rows() % 1000, 60, interval=0.01,
                 message="3000 rows acknowledged, not a multiple of the default chunk")
        iggy.freeze()
        try:
            rows = wait_for(unchanged, 10, interval=0.5, message="the backfill held still")
            samples = wait_for(lambda: figures_of(rows), 10, message="the metrics of the rows acknowledged")
            assert samples[("pgsource_cdc_backfill_estimated_rows", labels)] == 30000
            assert samples[("pgsource_cdc_backfill_eta_seconds", labels)] > 0
            status = run_cli("status", "--config", str(config))
            assert f"worker-0: backfill {request_id} of t: {rows} of ~30000 row(s) sent" in status.stdout
        finally:
            iggy.freeze(False)
        wait_for(lambda: _phase(tmp_path) is BackfillPhase.DONE, 120, message="the backfill done")
        done = wait_for(lambda: figures_of(30000), 30, message="every row counted")
        assert done[("pgsource_cdc_backfill_eta_seconds", labels)] == 0
        assert "backfill" not in run_cli("status", "--config", str(config)).stdout  # none runs any more
    finally:
        assert stop_service(service) == 0
    assert _record(tmp_path).backfills[-1].chunk_size == 300
    assert all(rows % 300 == 0 for rows in seen)  # whole chunks of 300 (and not of the default's 1000: above)
    assert sum(body["operation_type"] == "SELECT" for _, body, _ in stored(iggy, "t")) == 30000


def test_a_backfill_requested_while_stopped_runs_at_the_start_and_a_second_one_has_new_ids(pg_dsn, iggy, tmp_path):
    """The request waits in the slot while the service is stopped; a later backfill of the same rows
    is a new generation: new ids, so a consumer that drops repeated ids does not drop it."""
    execute(pg_dsn, "CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, note text);"
                    " INSERT INTO t SELECT g, 0, 'n' FROM generate_series(1, 500) g")
    config = cdc_config(tmp_path, pg_dsn, iggy, "sql", tables=["t"], backfill_chunk_size=200)
    service = start_service(config)
    wait_until_capturing(pg_dsn, "sql")
    assert stop_service(service) == 0
    first = run_cli("snapshot", "--config", str(config), "--table", "t")
    assert first.returncode == 0 and "a stopped one at its next start" in first.stdout
    service = start_service(config)
    try:
        wait_for(lambda: _phase(tmp_path) is BackfillPhase.DONE, 60, message="the first backfill done")
        assert run_cli("snapshot", "--config", str(config), "--table", "t").returncode == 0
        wait_for(lambda: len(_record(tmp_path).backfills) == 2 and _phase(tmp_path) is BackfillPhase.DONE, 60,
                 message="the second backfill done")
    finally:
        assert stop_service(service) == 0
    by_request: dict[str, set[int]] = {}
    generations: dict[str, set[str]] = {}  # per request, the generation header its rows carry
    for _, body, message in stored(iggy, "t"):
        assert body["operation_type"] == "SELECT"
        by_request.setdefault(message.headers["backfill"], set()).add(message.id)
        generations.setdefault(message.headers["backfill"], set()).add(message.headers["generation"])
    first_ids, second_ids = by_request.values()
    assert len(first_ids) == len(second_ids) == 500 and not first_ids & second_ids
    first_generation, second_generation = generations.values()
    assert len(first_generation) == len(second_generation) == 1 and first_generation != second_generation


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_backfill_does_not_wait_for_the_wal_writer_between_chunks(pg_dsn, iggy, tmp_path, transport):
    """A chunk's rows go out when its high watermark comes back in the stream; a non-transactional
    message alone reached the walsender only when the WAL writer flushed (every wal_writer_delay): 5
    chunks a second by default. Here the WAL writer waits 10 s: 20 chunks still take seconds."""
    execute(pg_dsn, "CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL); INSERT INTO t SELECT g, 0 FROM"
                    " generate_series(1, 2000) g")
    execute(pg_dsn, "ALTER SYSTEM SET wal_writer_delay = '10s'")
    execute(pg_dsn, "SELECT pg_reload_conf()")
    config = cdc_config(tmp_path, pg_dsn, iggy, transport, tables=["t"], backfill_chunk_size=100)
    service = start_service(config)
    try:
        wait_until_capturing(pg_dsn, transport)
        assert run_cli("snapshot", "--config", str(config), "--table", "t").returncode == 0
        wait_for(lambda: _phase(tmp_path) is BackfillPhase.DONE, 30, message="20 chunks within 30 s")
    finally:
        execute(pg_dsn, "ALTER SYSTEM RESET wal_writer_delay")
        execute(pg_dsn, "SELECT pg_reload_conf()")
        assert stop_service(service) == 0
    assert sum(body["operation_type"] == "SELECT" for _, body, _ in stored(iggy, "t")) == 2000


def test_a_change_streamed_before_it_is_visible_is_not_overwritten_by_an_older_chunk_row(pg_dsn, iggy, tmp_path):
    """With synchronous replication a commit is in the WAL (and streamed) before other sessions see it:
    a chunk read then would hold the row before that change, and send it after. The chunk waits."""
    import psycopg2

    execute(pg_dsn, "CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL, note text);"
                    " INSERT INTO t SELECT g, 0, 'n' FROM generate_series(1, 1000) g")
    database = query(pg_dsn, "SELECT current_database()")[0][0]
    execute(pg_dsn, psycopg2.sql.SQL("ALTER DATABASE {} SET synchronous_commit = local").format(
        psycopg2.sql.Identifier(database)))  # only the session below waits for the standby that never answers
    execute(pg_dsn, "ALTER SYSTEM SET synchronous_standby_names = 'nobody'")
    execute(pg_dsn, "SELECT pg_reload_conf()")
    config = cdc_config(tmp_path, pg_dsn, iggy, "replication", tables=["t"], backfill_chunk_size=100)
    waiting = psycopg2.connect(pg_dsn)
    pid = waiting.get_backend_pid()

    def commit_waiting_for_the_standby() -> None:
        with waiting.cursor() as cur:
            cur.execute("SET synchronous_commit = on")
            cur.execute("UPDATE t SET v = 1 WHERE id = 5")
        try:
            waiting.commit()  # committed locally; waits until cancelled below
        except psycopg2.Error:
            pass

    writer = threading.Thread(target=commit_waiting_for_the_standby, daemon=True)
    service = start_service(config)
    try:
        wait_until_capturing(pg_dsn, "replication")
        writer.start()
        wait_for(lambda: "pg" in iggy.streams() and "t" in iggy.topics("pg") and stored(iggy, "t"), 30,
                 message="the update streamed")
        assert query(pg_dsn, "SELECT v FROM t WHERE id = 5") == [(0,)]  # not visible yet
        assert run_cli("snapshot", "--config", str(config), "--table", "t").returncode == 0
        wait_for(lambda: "backfill chunk put off" in config.with_suffix(".log").read_text(), 30,
                 message="the chunk put off")
        execute(pg_dsn, "SELECT pg_cancel_backend(%s)", (pid,))  # the commit becomes visible
        writer.join(10)
        wait_for(lambda: _phase(tmp_path) is BackfillPhase.DONE, 30, message="the backfill done")
        wait_slot_caught_up(pg_dsn)
    finally:
        execute(pg_dsn, "ALTER SYSTEM RESET synchronous_standby_names")
        execute(pg_dsn, "SELECT pg_reload_conf()")
        writer.join(10)
        waiting.close()
        assert stop_service(service) == 0
    assert replay(stored(iggy, "t"))[5]["v"] == 1
    assert _check(pg_dsn, iggy, _record(tmp_path).backfills[-1].id)
