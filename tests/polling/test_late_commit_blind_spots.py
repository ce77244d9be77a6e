"""Issue 18, polling: what the late-commit horizon cannot see is guarded, or refused at start.

1. writers with ``track_activities = off`` (invisible in ``pg_stat_activity``) hold the offset;
2. a time column is guarded by where its value comes from (its default), not by its type;
   a value written explicitly under the horizon is reported when a re-read finds it;
3. a sequence changed while running (CACHE, the sequence behind the default) stops the table;
4. ``timestamp`` without time zone in a zone whose clock runs backward (DST) is refused.
"""

from __future__ import annotations

import uuid

import psycopg2
import pytest
from psycopg2 import sql

from pgsource_testkit.postgres import free_port
from tests.polling.test_metrics import scrape
from tests.support import (
    TEST_PASSWORD,
    bodies,
    execute,
    polled_after,
    query,
    run_cli,
    start_service,
    stop_service,
    stored_offset,
    wait_for,
    write_config,
)


def _ids(iggy, topic: str = "t") -> list[int]:
    return [m["data"]["id"] for m in bodies(iggy, topic)]


def _database(dsn: str) -> str:
    return dsn.rsplit("/", 1)[1].split("?", 1)[0]


@pytest.fixture
def blind_writer(pg_dsn, pg_cluster):
    """A login role whose sessions run with track_activities = off (ALTER ROLE ... SET), as a
    superuser may set it: its sessions show state 'disabled' and no xact_start."""
    name = f"blind_{uuid.uuid4().hex[:8]}"
    password = f"{TEST_PASSWORD}-{name}"
    role = sql.Identifier(name)
    execute(pg_dsn, sql.SQL("CREATE ROLE {} LOGIN PASSWORD %s; ALTER ROLE {} SET track_activities = off").format(role, role),
            (password,))
    try:
        yield name, pg_cluster.dsn(_database(pg_dsn), user=name, password=password)
    finally:
        execute(pg_dsn, sql.SQL("DROP OWNED BY {}; DROP ROLE {}").format(role, role))


@pytest.mark.parametrize(
    ("tracking", "ddl"),
    [
        ("id", "CREATE TABLE t (id bigserial PRIMARY KEY, note text)"),
        ("at", "CREATE TABLE t (id bigserial PRIMARY KEY, note text, at timestamptz NOT NULL DEFAULT now())"),
    ],
)
def test_a_writer_with_track_activities_off_holds_the_offset_and_its_late_row_arrives(
        pg_dsn, blind_writer, iggy, tmp_path, tracking, ddl):
    """Item 1: such a session pins the horizon where it was first seen, for as long as it exists."""
    role, writer_dsn = blind_writer
    execute(pg_dsn, ddl)
    execute(pg_dsn, sql.SQL("GRANT SELECT, INSERT ON t TO {0}; GRANT USAGE ON t_id_seq TO {0}").format(sql.Identifier(role)))
    config = write_config(tmp_path, pg_dsn, iggy.address,
                          source={"tables": ["t"], "tracking_column": tracking, "batch_size": 25},
                          state={"dir": str(tmp_path / "state"), "commit_interval": 0})
    service = start_service(config)
    try:
        wait_for(lambda: query(pg_dsn, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgsource-worker-0'")[0][0],
                 30, message="the worker's session")
        a_conn = psycopg2.connect(writer_dsn)
        a = a_conn.cursor()
        a.execute(sql.SQL("INSERT INTO t (note) VALUES ('A') RETURNING id, {}::text, pg_backend_pid()").format(
            sql.Identifier(tracking)))
        a_id, a_value, a_pid = a.fetchone()
        assert query(pg_dsn, "SELECT state FROM pg_stat_activity WHERE pid = %s", (a_pid,)) == [("disabled",)]
        execute(pg_dsn, "INSERT INTO t (note) SELECT 'B' FROM generate_series(1, 120)")
        wait_for(lambda: len(bodies(iggy, "t")) >= 120, 30, message="B's rows, read past A's value")
        # every range of B's rows had the time to be sealed (the time column's margin is 1 s)
        moment = query(pg_dsn, "SELECT clock_timestamp() + interval '1.5 s'")[0][0]
        for _ in range(2):
            wait_for(lambda moment=moment: polled_after(pg_dsn, moment), 30, message="a poll after B's rows arrived")
            moment = query(pg_dsn, "SELECT clock_timestamp()")[0][0]
        committed = stored_offset(tmp_path, "polling/t")
        kind = sql.SQL("bigint" if tracking == "id" else "timestamptz")
        passed = committed is not None and query(pg_dsn, sql.SQL("SELECT %s::{0} >= %s::{0}").format(kind),
                                                 (committed.position[0], a_value))[0][0]
        a_conn.commit()
        assert not passed, f"the committed offset {committed.position} passed row {a_id} of a transaction still open"
        a_conn.close()  # the session ends: the horizon it held moves on
        wait_for(lambda: "A" in [m["data"]["note"] for m in bodies(iggy, "t")], 30, message="A's late row")
    finally:
        assert stop_service(service) == 0
    assert sorted(set(_ids(iggy))) == list(range(1, 122))
    log = config.with_suffix(".log").read_text()
    assert f"pid {a_pid} (role {role}) runs with track_activities = off" in log, log
    checked = run_cli("check", "--config", str(config))
    assert checked.returncode == 0 and f"track_activities is off for role {role}" in checked.stderr, checked.stderr


def test_a_time_column_is_guarded_by_its_default_not_by_its_type(pg_dsn, iggy, tmp_path):
    """Item 2: a column the client (or an unknown trigger) fills is refused, naming table, column and
    default; the clock defaults are guarded; with a lag, a client-set late row arrives."""
    execute(pg_dsn, """
        CREATE TABLE bare (id bigserial PRIMARY KEY, created_at timestamptz NOT NULL);
        CREATE TABLE shifted (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now() + interval '1 hour');
        CREATE TABLE stamped (id bigserial PRIMARY KEY, at timestamptz);
        CREATE FUNCTION stamp() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.at := now(); RETURN NEW; END $$;
        CREATE TRIGGER stamp BEFORE INSERT OR UPDATE ON stamped FOR EACH ROW EXECUTE FUNCTION stamp();
        CREATE TABLE clock_a (id bigserial PRIMARY KEY, v timestamptz DEFAULT clock_timestamp());
        CREATE TABLE clock_b (id bigserial PRIMARY KEY, v timestamptz(0) DEFAULT CURRENT_TIMESTAMP(0));
        CREATE TABLE clock_c (id bigserial PRIMARY KEY, v date DEFAULT CURRENT_DATE);
        CREATE TABLE clock_d (id bigserial PRIMARY KEY, v timestamp DEFAULT timezone('UTC', now()));
        CREATE TABLE clock_e (id bigserial PRIMARY KEY, v timestamp DEFAULT LOCALTIMESTAMP);
    """)
    tables = [{"name": "bare", "tracking_column": "created_at"}, {"name": "shifted", "tracking_column": "at"},
              {"name": "stamped", "tracking_column": "at"}]
    config = write_config(tmp_path, pg_dsn, iggy.address, source={"tables": tables})
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 3, result.stderr
    for line in ("table bare: tracking_column 'created_at': it has no default",
                 "table shifted: tracking_column 'at': it takes its value from (now() + '01:00:00'::interval)",
                 "table stamped: tracking_column 'at': it has no default",
                 "BEFORE trigger(s) stamp: if one of them sets it from now()",
                 "tracking_filled_by: trigger"):
        assert line in result.stderr, result.stderr
    assert result.stderr.count("set source.lag") == 3, result.stderr
    code = run_cli("run", "--config", str(config)).returncode
    assert code == 3
    declared = [{"name": "stamped", "tracking_column": "at", "tracking_filled_by": "trigger"}]
    declared += [{"name": f"clock_{column}", "tracking_column": "v"} for column in "abcde"]
    config = write_config(tmp_path, pg_dsn, iggy.address, source={"tables": declared})
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 0, result.stderr

    # with a lag, a value stamped by the client before its transaction, committed late, still arrives
    config = write_config(tmp_path, pg_dsn, iggy.address,
                          source={"tables": ["bare"], "tracking_column": "created_at", "lag": "2s", "batch_size": 5})
    service = start_service(config)
    try:
        a_conn = psycopg2.connect(pg_dsn)
        a_conn.cursor().execute("INSERT INTO bare (created_at) VALUES (clock_timestamp())")  # the ORM's stamp
        execute(pg_dsn, "INSERT INTO bare (created_at) SELECT clock_timestamp() FROM generate_series(1, 30)")
        wait_for(lambda: len(bodies(iggy, "bare")) >= 30, 30, message="the later rows")
        a_conn.commit()
        a_conn.close()
        wait_for(lambda: 1 in _ids(iggy, "bare"), 30, message="the late row, within the lag")
    finally:
        assert stop_service(service) == 0
    assert sorted(_ids(iggy, "bare")) == list(range(1, 32))


def test_a_value_written_explicitly_below_the_horizon_is_reported(pg_dsn, iggy, tmp_path):
    """Item 2: an application that writes a DEFAULT now() column itself breaks the guard's premise; a
    re-read that finds such a row sends it, and says so (a WARNING and a counter naming the table)."""
    execute(pg_dsn, "CREATE TABLE t (id bigserial PRIMARY KEY, note text, at timestamptz NOT NULL DEFAULT now())")
    port = free_port()
    config = write_config(tmp_path, pg_dsn, iggy.address,
                          source={"tables": ["t"], "tracking_column": "at", "batch_size": 10},
                          metrics={"port": port, "host": "127.0.0.1"})
    service = start_service(config)
    try:
        holder = psycopg2.connect(pg_dsn)  # a writer in progress: ranges read meanwhile are held
        holder.cursor().execute("INSERT INTO t (note) VALUES ('held')")
        execute(pg_dsn, "INSERT INTO t (note) SELECT 'later' FROM generate_series(1, 20)")
        wait_for(lambda: len(bodies(iggy, "t")) >= 20, 30, message="the later rows")
        # the ORM's own clock, a minute behind: below the horizon observed before those rows were read
        execute(pg_dsn, "INSERT INTO t (note, at) VALUES ('explicit', now() - interval '1 minute')")
        holder.commit()
        holder.close()
        wait_for(lambda: {"held", "explicit"} <= {m["data"]["note"] for m in bodies(iggy, "t")}, 30,
                 message="the held row and the explicit one, re-read")
        wait_for(lambda: scrape(port).get(("pgsource_source_rows_below_horizon_total", (("table", "t"), ("worker", "worker-0")))),
                 10, message="the counter of rows found below the horizon")
    finally:
        assert stop_service(service) == 0
    assert sorted(_ids(iggy)) == list(range(1, 23))
    log = config.with_suffix(".log").read_text()
    assert "t: 1 row(s) re-read below the horizon observed before their range was read" in log, log


def test_a_sequence_changed_while_running_stops_the_table_before_it_loses_rows(pg_dsn, iggy, tmp_path):
    """Item 3: ALTER SEQUENCE ... CACHE 50 while running; a pooled session hands out cached ids after
    later ids were read. The table stops (exit 3) before an observation after the change seals
    anything; with a lag that covers it, the next start sends every row."""
    execute(pg_dsn, "CREATE TABLE t (id bigserial PRIMARY KEY, note text)")
    expected = set(range(1, 17)) | set(range(56, 156))  # 1-5, the pooled 6, the others' 56-155, the cached 7-16
    config = write_config(tmp_path, pg_dsn, iggy.address, source={"tables": ["t"], "batch_size": 10},
                          state={"dir": str(tmp_path / "state"), "commit_interval": 0})
    service = start_service(config)
    try:
        execute(pg_dsn, "INSERT INTO t (note) SELECT 'before' FROM generate_series(1, 5)")
        wait_for(lambda: len(bodies(iggy, "t")) >= 5, 30, message="the first rows")
        pooled = psycopg2.connect(pg_dsn)  # a pool's connection: it outlives the ALTER
        pooled.autocommit = True
        execute(pg_dsn, "ALTER SEQUENCE t_id_seq CACHE 50")
        pooled.cursor().execute("INSERT INTO t (note) VALUES ('pooled')")  # takes 50 ids, uses one
        execute(pg_dsn, "INSERT INTO t (note) SELECT 'other' FROM generate_series(1, 100)")  # ids after those 50
        wait_for(lambda: service.poll() is not None or len(bodies(iggy, "t")) >= 106, 30,
                 message="the service to stop, or the later ids to arrive")
        pooled.cursor().execute("INSERT INTO t (note) SELECT 'cached' FROM generate_series(1, 10)")  # ids 7..16
        pooled.close()
        missing = sorted(expected - set(_ids(iggy)))
        assert service.poll() is not None, f"still running after the ALTER; rows missing: {missing}"
    finally:
        if service.poll() is None:
            stop_service(service)
    assert service.returncode == 3
    log = config.with_suffix(".log").read_text()
    assert "table t: sequence public.t_id_seq changed while running (CACHE 1 -> 50)" in log, log
    committed = stored_offset(tmp_path, "polling/t")
    assert committed is None or int(committed.position[0]) <= 6, committed  # never past the ids cached meanwhile
    result = run_cli("run", "--config", str(config))
    assert result.returncode == 3 and "sequence public.t_id_seq has CACHE 50" in result.stderr
    config = write_config(tmp_path, pg_dsn, iggy.address, source={"tables": ["t"], "batch_size": 10, "lag": "1s"})
    service = start_service(config)
    try:
        wait_for(lambda: expected <= set(_ids(iggy)), 30, message="every row, with a lag")
    finally:
        assert stop_service(service) == 0


def test_timestamp_without_time_zone_in_a_zone_that_runs_back_is_refused(pg_dsn, iggy, tmp_path):
    """Item 4: local time runs back an hour at the end of summer time; a `timestamp` column is
    refused there (exit 3) unless a lag covers the shift; timestamptz is fine. A writer role with
    another TimeZone is named by check."""
    database = _database(pg_dsn)
    execute(pg_dsn, sql.SQL("ALTER DATABASE {} SET TimeZone = 'Europe/Berlin'").format(sql.Identifier(database)))
    execute(pg_dsn, "CREATE TABLE local (id bigserial PRIMARY KEY, ts timestamp NOT NULL DEFAULT now());"
                    " CREATE TABLE zoned (id bigserial PRIMARY KEY, ts timestamptz NOT NULL DEFAULT now())")
    config = write_config(tmp_path, pg_dsn, iggy.address, source={"tables": ["local", "zoned"], "tracking_column": "ts"})
    expected = ("table local: tracking_column 'ts' is a timestamp without time zone, and the database's TimeZone"
                " 'Europe/Berlin' runs back by up to 1:00:00 (daylight saving time)")
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 3 and expected in result.stderr, result.stderr
    assert "Use timestamptz, or a source.lag of at least 1:01:00" in result.stderr
    assert not [line for line in result.stderr.splitlines() if line.startswith("problem") and "zoned" in line]
    result = run_cli("run", "--config", str(config))
    assert result.returncode == 3 and expected in result.stderr, result.stderr
    role = f"writer_{uuid.uuid4().hex[:8]}"
    execute(pg_dsn, sql.SQL("CREATE ROLE {} NOLOGIN; ALTER ROLE {} IN DATABASE {} SET TimeZone = 'America/New_York'").format(
        sql.Identifier(role), sql.Identifier(role), sql.Identifier(database)))
    try:
        covered = write_config(tmp_path, pg_dsn, iggy.address,
                               source={"tables": ["local", "zoned"], "tracking_column": "ts", "lag": "62m"})
        result = run_cli("check", "--config", str(covered))
        assert result.returncode == 0, result.stderr
        assert f"role {role} has TimeZone 'America/New_York' in this database" in result.stderr, result.stderr
    finally:
        execute(pg_dsn, sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
