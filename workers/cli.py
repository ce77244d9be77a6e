"""The ``pgsource`` command: ``run``, ``check``, ``demo``, ``drop-slot``, ``status``, ``reset`` and ``verify``.

The admin commands' logic is in ``pgsource/admin/``; here they are parsed, confirmed
(only when stdin is a terminal; ``--yes`` skips the question) and printed.

These names and options are a contract that users script against; keep them.
"""

from __future__ import annotations

import logging
import os
import sys

import click

from pgsource.errors import PgSourceError
from workers.logs import setup_logging

log = logging.getLogger("pgsource")


def _load(path: str):
    from pgsource.config import load_config

    try:
        return load_config(path)
    except PgSourceError as exc:
        click.echo(f"configuration error in {path}:", err=True)
        for line in str(exc).splitlines():
            click.echo(f"  {line}", err=True)
        sys.exit(exc.exit_code)


@click.group()
@click.option("--log-level", default=None, help="DEBUG, INFO (default), WARNING or ERROR.")
def main(log_level: str | None) -> None:
    """Stream PostgreSQL rows (polling) or changes (cdc) into Apache Iggy."""
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
    if not report.ok:
        sys.exit(3)
    _check_iggy(config)
    tables = ", ".join(table.qualified for table in config.source.tables) or "custom_query"
    click.echo(f"ok: {config.source.mode.value} mode, {tables}")
    exit_after_sdk(0)


def exit_after_sdk(code: int) -> None:
    """Exit without finalizing the interpreter once the Iggy SDK was used.

    apache-iggy 0.9.0 may complete a future from a tokio thread while Python finalizes,
    which aborts the process (SIGABRT) after the work is done and reported: ``check``
    printed "ok" and still exited 134 about one time in seven.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


def _check_iggy(config) -> None:
    """Iggy being down is not a problem for ``run`` (it waits for it), so only a warning here."""
    import asyncio

    from pgsource.sink import IggySink

    sink = IggySink(config.iggy.model_copy(update={"send_timeout": 5.0}))
    try:
        asyncio.run(sink.connect())
    except PgSourceError as exc:
        click.echo(f"warning: {exc} (pgsource run waits for it)", err=True)


@main.command("drop-slot")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help="YAML (or JSON) file.")
@click.option("--keep-publication", is_flag=True, help="Drop only the replication slot(s).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (it is asked only on a terminal).")
def drop_slot(config_path: str, keep_publication: bool, yes: bool) -> None:
    """Decommission CDC: drop the replication slot(s) and publication(s) this config uses."""
    config = _load(config_path)
    from pgsource.assignment import assign_units
    from pgsource.pg import connect as pg
    from pgsource.pg import replication as rep

    workers = assign_units(config)
    slots = ", ".join(rep.slot_names(config, worker, len(workers))[0] for worker in workers)
    _confirm(f"Drop replication slot(s) {slots}{'' if keep_publication else ' and their publication(s)'}?"
             " Changes not yet delivered are lost with them.", yes)
    conn = pg.connect(config.source.connection_string, application_name="pgsource-drop-slot")
    try:
        for worker in workers:
            slot, publication = rep.slot_names(config, worker, len(workers))
            state = rep.slot_state(conn, slot)
            if state is not None and state.active_pid is not None:
                click.echo(f"slot {slot} is in use by pid {state.active_pid}: stop pgsource first", err=True)
                sys.exit(3)
            dropped = rep.drop_slot(conn, slot)
            click.echo(f"slot {slot}: {'dropped' if dropped else 'absent'}")
            if not keep_publication:
                rep.drop_publication(conn, publication)
                click.echo(f"publication {publication}: dropped")
    finally:
        conn.close()


def _confirm(question: str, yes: bool) -> None:
    """Ask only when a person is there (stdin is a terminal); scripts are never blocked by a question."""
    if yes or not sys.stdin.isatty():
        return
    if not click.confirm(question, default=False):
        click.echo("aborted", err=True)
        sys.exit(1)


def _fail(exc: PgSourceError) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(exc.exit_code)


@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help="YAML (or JSON) file.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of text.")
def status(config_path: str, as_json: bool) -> None:
    """Per table the committed offset and rows behind; per CDC slot its state and retained WAL."""
    config = _load(config_path)
    import json

    from pgsource.admin.status import collect_status

    try:
        found = collect_status(config)
    except PgSourceError as exc:
        _fail(exc)
    if as_json:
        click.echo(json.dumps(found.to_json(), indent=2))
        return
    click.echo(f"mode {found.mode}; {'running: ' + found.running if found.running else 'not running'}")
    for table in found.tables:
        offset = ", ".join(table.offset) if table.offset else ("the start" if table.offset == [] else "nothing committed")
        behind = "unknown" if table.rows_behind is None else str(table.rows_behind)
        click.echo(f"{table.key}: offset {offset}; {table.rows_sent} row(s) sent; {behind} row(s) behind"
                   + (f" ({table.note})" if table.note else ""))
    for slot in found.slots:
        if not slot.exists:
            click.echo(f"{slot.worker}: slot {slot.slot} does not exist")
            continue
        click.echo(f"{slot.worker}: slot {slot.slot} {'active (pid ' + str(slot.active_pid) + ')' if slot.active_pid else 'inactive'},"
                   f" wal_status {slot.wal_status}, confirmed {slot.confirmed_lsn}, {slot.bytes_behind} byte(s) behind,"
                   f" {slot.retained_wal_bytes} byte(s) of WAL retained")


@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help="YAML (or JSON) file.")
@click.option("--table", "table_name", required=True, help="A table of source.tables (or custom_query).")
@click.option("--to", "to", default=None, help="Read the rows after this tracking value on the next run.")
@click.option("--to-start", is_flag=True, help="Start over where a first start would (initial_offset, else the first row).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (it is asked only on a terminal).")
def reset(config_path: str, table_name: str, to: str | None, to_start: bool, yes: bool) -> None:
    """Move a polling table's stored offset on purpose (the service must be stopped)."""
    config = _load(config_path)
    from pgsource.admin.reset import apply_reset, check_not_running, plan_reset

    if (to is None) == (not to_start):
        click.echo("error: give exactly one of --to VALUE and --to-start", err=True)
        sys.exit(2)
    try:
        check_not_running(config)
        moves = plan_reset(config, table_name, to)
        for move in moves:
            click.echo(f"will move {move.describe()}")
        _confirm("Move these offsets? Rows after them are sent again (or skipped, when moving forward).", yes)
        apply_reset(config, moves)
    except PgSourceError as exc:
        _fail(exc)
    click.echo(f"reset {table_name}: {len(moves)} offset(s) moved")


@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help="YAML (or JSON) file.")
@click.option("--table", "table_name", default=None, help="A table of source.tables (polling: required).")
@click.option("--after", "after", default=None, help="Polling: check only rows after this tracking value (expired messages).")
def verify(config_path: str, table_name: str | None, after: str | None) -> None:
    """Reconcile: every row up to the committed offset is in Iggy (exit 10 naming what is missing)."""
    config = _load(config_path)
    from pgsource.admin.verify import verify as run_verify

    if table_name is None and not config.source.cdc:
        click.echo("error: --table is required in polling mode", err=True)
        sys.exit(2)
    try:
        report = run_verify(config, table_name, after)
    except PgSourceError as exc:
        click.echo(f"error: {exc}", err=True)
        exit_after_sdk(exc.exit_code)
    for line in report.lines:
        click.echo(line)
    for line in report.missing:
        click.echo(line, err=True)
    from pgsource.errors import VerificationError

    click.echo("ok: nothing missing" if report.ok else "FAILED: messages missing from Iggy", err=not report.ok)
    exit_after_sdk(0 if report.ok else VerificationError.exit_code)


def _register_demo() -> None:
    from workers.demo import demo

    main.add_command(demo)


_register_demo()


if __name__ == "__main__":  # pragma: no cover
    main()
