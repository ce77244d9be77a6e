"""The ``pgsource`` command: ``run``, ``check``, ``demo``, ``drop-slot``, ``status``, ``reset``, ``rejoin``,
``snapshot``, ``verify`` and ``tail``.

The admin commands' logic is in ``pgsource/ops/admin/``; here they are parsed, confirmed
(only when stdin is a terminal; ``--yes`` skips the question) and printed.

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
    from pgsource.ops.checks import check_prerequisites

    report = check_prerequisites(config)
    for problem in report.problems:
        click.echo(f"problem: {problem}", err=True)
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
    if report.grants:  # on stdout, as SQL: `pgsource check --config FILE | psql ADMIN_DSN` applies them
        click.echo("-- what the PostgreSQL user lacks; run as a superuser or the tables' owner:")
        for grant in report.grants:
            click.echo(grant)
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
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (it is asked only on a terminal).")
def drop_slot(config_path: str, keep_publication: bool, yes: bool) -> None:
    """Decommission CDC: drop the replication slot(s) and publication(s) this config uses.

    The slots are those that capture the configured tables (read from the publications, as
    ``run`` does) and those the configuration names; their records in ``state.dir`` go too,
    so a later ``run`` is a first start, not a missing slot.
    """
    config = _load(config_path)
    from pgsource.pg import connect as pg
    from pgsource.pg import publications as pubs
    from pgsource.pg import replication as rep
    from pgsource.plan.assignment import configured_channels, plan_cdc
    from pgsource.state import FileStateStore

    try:
        conn = pg.connect(config.source.connection_string, application_name="pgsource-drop-slot", connect_timeout=10)
    except PgSourceError as exc:
        _fail(exc)
    try:
        slots = rep.existing_slots(conn)
        try:
            plan = plan_cdc(config, pubs.load_publications(conn, config.source.publication_name), slots)
            pairs = {(units[0].slot, units[0].publication) for units in plan.assignment.values()}
        except PgSourceError as exc:  # a table in two publications: drop what the configuration names
            click.echo(f"note: {exc}", err=True)
            pairs = set()
        pairs |= {(ch.slot, ch.publication) for ch in configured_channels(config)}
        slot_list = ", ".join(slot for slot, _ in sorted(pairs))
        _confirm(f"Drop replication slot(s) {slot_list}{'' if keep_publication else ' and their publication(s)'}?"
                 " Changes not yet delivered are lost with them.", yes)
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
                dropped = pubs.drop_publication(conn, publication)
                click.echo(f"publication {publication}: {'dropped' if dropped else 'absent'}")
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

    from pgsource.ops.admin.status import collect_status

    try:
        found = collect_status(config)
    except PgSourceError as exc:
        _fail(exc)
    if as_json:
        click.echo(json.dumps(found.to_json(), indent=2))
        return
    from pgsource.ops.admin.status import backfill_line

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
        for backfill in slot.backfills:
            click.echo(f"{slot.worker}: {backfill_line(backfill)}")


@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help="YAML (or JSON) file.")
@click.option("--table", "table_name", required=True, help="A table of source.tables (or custom_query).")
@click.option("--to", "to", default=None, help="Read the rows after this tracking value on the next run.")
@click.option("--to-start", is_flag=True, help="Start over where a first start would (initial_offset, else the first row).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (it is asked only on a terminal).")
def reset(config_path: str, table_name: str, to: str | None, to_start: bool, yes: bool) -> None:
    """Move a polling table's stored offset on purpose (the service must be stopped)."""
    config = _load(config_path)
    from pgsource.ops.admin.reset import apply_reset, check_not_running, plan_reset

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
@click.option("--table", "table_name", required=True, help="A table of source.tables, captured in mode: cdc.")
@click.option("--where", "where", default=None, help="Only the rows matching this SQL predicate (checked by PostgreSQL).")
@click.option("--chunk-size", "chunk_size", default=None, type=int, help="Rows per chunk (default: source.backfill_chunk_size).")
@click.option("--cancel", is_flag=True, help="Cancel the table's running backfill instead.")
def snapshot(config_path: str, table_name: str, where: str | None, chunk_size: int | None, cancel: bool) -> None:
    """Backfill one CDC table while the stream goes on (docs/cdc.md, "Backfills"); running service or not."""
    config = _load(config_path)
    from pgsource.ops.admin.backfill import request_backfill

    try:
        requested = request_backfill(config, table_name, where, chunk_size, cancel)
    except PgSourceError as exc:
        _fail(exc)
    click.echo(requested.describe())


@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help="YAML (or JSON) file.")
@click.option("--table", "table_name", required=True, help="A table of source.tables.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (it is asked only on a terminal).")
def rejoin(config_path: str, table_name: str, yes: bool) -> None:
    """CDC: take a table anew at the next start (joined with a snapshot), after the relation its slot
    captured was replaced under its name or dropped from the publication (the service must be stopped)."""
    config = _load(config_path)
    from pgsource.ops.admin.rejoin import apply_rejoin, plan_rejoin
    from pgsource.ops.admin.reset import check_not_running

    try:
        check_not_running(config)
        plan = plan_rejoin(config, table_name)
        _confirm(f"Take {plan.table} anew in slot {plan.slot} at the next start (its rows sent again as a snapshot)?", yes)
        apply_rejoin(config, plan)
    except PgSourceError as exc:
        _fail(exc)
    click.echo(f"rejoin {plan.table}: the next start joins it to slot {plan.slot} with a snapshot of its rows")


@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help="YAML (or JSON) file.")
@click.option("--table", "table_name", default=None, help="A table of source.tables (polling: required).")
@click.option("--after", "after", default=None, help="Polling: check only rows after this tracking value (expired messages).")
def verify(config_path: str, table_name: str | None, after: str | None) -> None:
    """Reconcile: every row up to the committed offset is in Iggy (exit 10 naming what is missing)."""
    config = _load(config_path)
    from pgsource.ops.admin.verify import verify as run_verify

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
    click.echo(f"the messages themselves: pgsource tail --config {config_path}{f' --table {table_name}' if table_name else ''}")
    exit_after_sdk(0 if report.ok else VerificationError.exit_code)


@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help="YAML (or JSON) file.")
@click.option("--table", "table_name", default=None, help="Only this table's topic (default: every table's).")
@click.option("-n", "count", type=click.IntRange(min=0), default=None,
              help="Messages per partition: the last N (default 10); with --from-start the first N (default all).")
@click.option("--follow", "-f", is_flag=True, help="Then wait for new messages until Ctrl-C.")
@click.option("--from-start", is_flag=True, help="Start at offset 0 instead of the last N.")
def tail(config_path: str, table_name: str | None, count: int | None, follow: bool, from_start: bool) -> None:
    """Print the messages of the configuration's topics, one a line (id, partition, offset, payload), like kcat -C.

    Reading leaves no trace on the server: no consumer offset is stored, no consumer group joined.
    """
    config = _load(config_path)
    import asyncio
    import signal

    from pgsource.ops.admin.tail import plan_tail, run_tail

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stopped like Ctrl-C: a clean exit
    try:
        plan = plan_tail(config, table_name, count, from_start, follow)
        printed = asyncio.run(run_tail(config, plan, click.echo, lambda line: click.echo(f"note: {line}", err=True)))
        if not printed:
            click.echo(f"note: no messages in {', '.join(config.iggy.stream + '/' + t for t in plan.topics)}", err=True)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # `pgsource tail ... | head`
        exit_after_sdk(0)
    except PgSourceError as exc:
        click.echo(f"error: {exc}", err=True)
        exit_after_sdk(exc.exit_code)
    exit_after_sdk(0)


def _register_demo() -> None:
    from workers.demo import demo

    main.add_command(demo)


_register_demo()


if __name__ == "__main__":  # pragma: no cover
    main()
