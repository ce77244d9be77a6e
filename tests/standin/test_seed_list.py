"""``iggy.address`` as a list of seed nodes (a cluster's): pgsource connects through the first that
answers, and after a failure starts with the next one, so the loss of the node it was connected
through never needs a restart. Two stand-ins play two seeds here (they are not a cluster: each
keeps what it was sent); tests/real/test_real_cluster.py runs the same against a 3-node cluster."""

from __future__ import annotations

import pytest
from psycopg2 import sql

from pgsource.config import parse_config
from pgsource.errors import ConfigError
from pgsource_testkit.iggy import IggyStandIn
from pgsource_testkit.postgres import free_port
from tests.support import bodies, execute, run_cli, start_service, stop_service, wait_for, write_config

BASE = "source: {connection_string: x, mode: polling, tables: [t]}\n"


def test_a_list_or_a_comma_separated_string_of_seeds():
    listed = parse_config(BASE + "iggy: {address: [a.example:8090, '10.0.0.2:8091', '[::1]:8092']}").iggy
    assert listed.seeds == ["a.example:8090", "10.0.0.2:8091", "[::1]:8092"]
    assert parse_config(BASE + "iggy:\n  address: a.example:8090, b.example:8090").iggy.seeds == ["a.example:8090", "b.example:8090"]
    assert parse_config(BASE + "iggy: {address: 'one:8090'}").iggy.seeds == ["one:8090"]
    for wrong, line in [("[]", "a list of seed nodes needs at least one"), ("[a:1, 2]", "a list of seed nodes needs"),
                        ("'a:1,b'", "iggy.address: 'b' is not host:port")]:
        with pytest.raises(ConfigError, match=line):
            parse_config(BASE + f"iggy: {{address: {wrong}}}")


def _table(dsn: str, first: int, last: int) -> None:
    execute(dsn, "CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY, note text)")
    execute(dsn, sql.SQL("INSERT INTO t SELECT g, 'n' FROM generate_series(%s, %s) g"), (first, last))


def test_the_first_seed_down_pgsource_connects_through_the_next(pg_dsn, iggy, tmp_path):
    _table(pg_dsn, 1, 50)
    dead = f"127.0.0.1:{free_port()}"
    config = write_config(tmp_path, pg_dsn, [dead, iggy.address], source={"tables": ["t"], "late_commits": "off"})
    service = start_service(config)
    try:
        wait_for(lambda: len(bodies(iggy, "t")) == 50, 60, message="every row through the second seed")
    finally:
        assert stop_service(service) == 0
    log = config.with_suffix(".log").read_text()
    assert f"connected to Iggy through {iggy.address} (Iggy at {dead}:" in log


def test_check_names_every_seed_that_did_not_answer(pg_dsn, tmp_path):
    _table(pg_dsn, 1, 1)
    seeds = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    result = run_cli("check", "--config", str(write_config(tmp_path, pg_dsn, seeds, source={"tables": ["t"], "late_commits": "off"})))
    assert result.returncode == 0
    assert all(f"Iggy at {seed}:" in result.stderr for seed in seeds) and "pgsource run waits for it" in result.stderr


def test_the_seed_in_use_lost_pgsource_goes_on_through_the_next_without_a_restart(pg_dsn, iggy, tmp_path):
    _table(pg_dsn, 1, 30)
    second = IggyStandIn().start()
    try:
        config = write_config(tmp_path, pg_dsn, [iggy.address, second.address],
                              source={"tables": ["t"], "late_commits": "off"}, iggy={"send_timeout": "3s"})
        service = start_service(config)
        try:
            wait_for(lambda: len(bodies(iggy, "t")) == 30, 60, message="the first rows through the first seed")
            iggy.refuse_connections()  # the node is gone: no new connection, the open ones dropped
            iggy.drop_connections()
            execute(pg_dsn, sql.SQL("INSERT INTO t SELECT g, 'after' FROM generate_series(31, 60) g"))
            wait_for(lambda: {b["data"]["id"] for b in bodies(second, "t")} >= set(range(31, 61)), 60,
                     message="the later rows through the second seed")
            assert service.poll() is None
        finally:
            assert stop_service(service) == 0
        delivered = {b["data"]["id"] for b in bodies(iggy, "t")} | {b["data"]["id"] for b in bodies(second, "t")}
        assert delivered == set(range(1, 61))
        assert f"connected to Iggy at {second.address} again" in config.with_suffix(".log").read_text()
    finally:
        second.stop()
