"""The ``pgsource`` command: ``run``, ``check``, ``demo`` and ``drop-slot``.

These names and options are a contract that users script against; keep them.
"""

from __future__ import annotations

import logging
import os
import sys

import click

from pgsource.errors import PgSourceError
from workers.exits import exit_after_sdk
from workers.logs import setup_logging

log = logging.getLogger("pgsource")


def _load(path: str):
    from pgsource.config import load_config

    try:
        config = load_config(path)
    except PgSourceError as exc:
        click.echo(f"configuration error in {path}:", err=True)
        for line in str(exc).splitlines():
            click.echo(f"  {line}", err=True)
        sys.exit(exc.exit_code)
    setup_logging(click.get_current_context().find_root().params.get("log_level"), config)
    return config


@click.group()
@click.option("--log-level", default=None, help="DEBUG, INFO (default), WARNING or ERROR.")
def main(log_level: str | None) -> None:
    """Stream PostgreSQL rows (polling) or changes (cdc) into Apache Iggy."""
    if log_level:  # the spawned processes read it from their environment
        os.environ["PGSOURCE_LOG_LEVEL"] = log_level
    setup_logging(log_level)


@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help="YAML (or JSON) file.")
def run(config_path: str) -> None:
    """Run in the foreground until SIGTERM/SIGINT, then stop gracefully (exit 0)."""
    config = _load(config_path)
    from workers.supervisor import Supervisor

    sys.exit(Supervisor(config).run())


@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help="YAML (or JSON) file.")
def check(config_path: str) -> None:
    """Validate the file and the prerequisites; one line per problem, non-zero exit on any."""
    config = _load(config_path)
    from pgsource.checks import check_prerequisites

    report = check_prerequisites(config)
    for problem in report.problems:
        click.echo(f"problem: {problem}", err=True)
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
    if not report.ok:
        sys.exit(report.exit_code)
    refused = _check_iggy(config)
    if refused:
        click.echo(f"problem: {refused}", err=True)
        exit_after_sdk(5)
    tables = ", ".join(table.qualified for table in config.source.tables) or "custom_query"
    click.echo(f"ok: {config.source.mode.value} mode, {tables}")
    exit_after_sdk(0)


def _check_iggy(config) -> str | None:
    """Iggy being down is not a problem for ``run`` (it waits for it), so only a warning here; a refusal
    that ``run`` would stop on (a wrong password...) is a problem, returned."""
    import asyncio

    from pgsource.errors import SinkRefused
    from pgsource.sink import IggySink

    sink = IggySink(config.iggy.model_copy(update={"send_timeout": 5.0}))
    try:
        asyncio.run(sink.connect())
    except SinkRefused as exc:
        return str(exc)
    except PgSourceError as exc:
        click.echo(f"warning: {exc} (pgsource run waits for it)", err=True)
    return None


@main.command("drop-slot")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help="YAML (or JSON) file.")
@click.option("--keep-publication", is_flag=True, help="Drop only the replication slot(s).")
def drop_slot(config_path: str, keep_publication: bool) -> None:
    """Decommission CDC: drop the replication slot(s) and publication(s) this config uses.

    The slots are those that capture the configured tables (read from the publications, as
    ``run`` does) and those the configuration names; their records in ``state.dir`` go too,
    so a later ``run`` is a first start, not a missing slot.
    """
    config = _load(config_path)
    from pgsource.assignment import configured_channels, plan_cdc
    from pgsource.pg import connect as pg
    from pgsource.pg import publications as pubs
    from pgsource.pg import replication as rep
    from pgsource.state import FileStateStore

    conn = pg.connect(config.source.connection_string, application_name="pgsource-drop-slot")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT slot_name FROM pg_replication_slots")
            slots = {row[0] for row in cur.fetchall()}
        try:
            plan = plan_cdc(config, pubs.load_publications(conn, config.source.publication_name), slots)
            pairs = {(units[0].slot, units[0].publication) for units in plan.assignment.values()}
        except PgSourceError as exc:  # a table in two publications: drop what the configuration names
            click.echo(f"note: {exc}", err=True)
            pairs = set()
        pairs |= {(ch.slot, ch.publication) for ch in configured_channels(config)}
        store = FileStateStore(config.state.dir)
        for slot, publication in sorted(pairs):
            state = rep.slot_state(conn, slot)
            if state is not None and state.active_pid is not None:
                click.echo(f"slot {slot} is in use by pid {state.active_pid}: stop pgsource first", err=True)
                sys.exit(3)
            dropped = rep.drop_slot(conn, slot)
            store.delete(f"cdc/{slot}")
            click.echo(f"slot {slot}: {'dropped' if dropped else 'absent'}")
            if not keep_publication:
                pubs.drop_publication(conn, publication)
                click.echo(f"publication {publication}: dropped")
    finally:
        conn.close()


def _register_demo() -> None:
    from workers.demo import demo

    main.add_command(demo)


_register_demo()


if __name__ == "__main__":  # pragma: no cover
    main()
