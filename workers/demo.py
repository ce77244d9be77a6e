"""``pgsource demo``: the real pipeline on an embedded default, for a bounded time.

It starts a throw-away PostgreSQL (wal_level=logical) with a sample table and ongoing
writes, the Iggy stand-in (or uses a real Iggy given by ``--iggy HOST:PORT``), runs
``pgsource run`` against them as a user would, stops it with SIGTERM, and shows what
arrived in Iggy the way ``pgsource tail`` shows it, read back through the real SDK.

It leaves the machine as it found it, also when interrupted (Ctrl-C, SIGTERM): the
service is stopped, the cluster stopped and its directory removed before the process
leaves (through ``exit_after_sdk``, which skips the interpreter's own clean-up); an interrupt
that lands while something is being started waits until its clean-up is registered. Each
run writes to a topic of its own (``orders_<time>``), so a run against a real Iggy
counts only its own messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

import click
import yaml

from workers.exits import exit_after_sdk

SAMPLE_TABLE = """
CREATE TABLE orders (
    id bigserial PRIMARY KEY,
    customer text NOT NULL,
    email text NOT NULL,
    quantity integer NOT NULL,
    amount numeric(12, 2) NOT NULL,
    paid boolean NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    details jsonb,
    reference uuid NOT NULL DEFAULT gen_random_uuid()
)"""
SAMPLE_ROWS = """
INSERT INTO orders (customer, email, quantity, amount, paid, details)
SELECT 'customer ' || g, 'c' || g || '@example.com', g %% 7 + 1, (g %% 1000) * 1.25, g %% 3 = 0,
       jsonb_build_object('source', 'demo', 'n', g)
FROM generate_series(1, %s) g"""
STARTUP_WAIT = 120.0  # seconds the first row may take to reach Iggy before the timed run starts anyway
INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command stopped by Ctrl-C


def _writer(dsn: str, stop: threading.Event, rate: int) -> None:
    """Ongoing writes while pgsource runs: ``rate`` rows a second in small transactions."""
    from pgsource.errors import PgSourceError
    from pgsource.pg import connect as pg
    from pgsource.pg.statements import run

    try:
        conn = pg.connect(dsn, application_name="pgsource-demo-writer")
        while not stop.wait(0.1):
            run(conn, SAMPLE_ROWS, (max(1, rate // 10),))
        conn.close()
    except (PgSourceError, pg.Error):  # the cluster is going away with the demo
        pass


class _Interrupts:
    """The first Ctrl-C (or SIGTERM, SIGHUP) ends the demo, as one KeyboardInterrupt; the clean-up that
    follows is not cut short. While something is started and its clean-up registered (``held``), the
    interrupt waits for the end of that step: one landing between a fork and the registration left a
    ``pgsource run`` that nobody stopped, which re-created the removed directory (3 runs in 30 on two cores)."""

    held = False
    pending = False

    @classmethod
    def handle(cls, signum, frame) -> None:
        for other in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            # swallowed, not SIG_IGN: an ignored SIGTERM is inherited through exec, and a service started
            # in a held step would then ignore the demo's SIGTERM (the demo waited 60 s for it)
            signal.signal(other, cls.swallow)
        if cls.held:
            cls.pending = True
            return
        raise KeyboardInterrupt

    @staticmethod
    def swallow(signum, frame) -> None:
        """A second Ctrl-C while the demo cleans up: nothing to do, the clean-up is already under way."""

    @classmethod
    @contextlib.contextmanager
    def deferred(cls):
        """Start one thing and register its clean-up as one step."""
        cls.held = True
        try:
            yield
        finally:
            cls.held = False
            if cls.pending:
                raise KeyboardInterrupt


@click.command("demo")
@click.option("--seconds", default=10.0, show_default=True, help="How long pgsource runs.")
@click.option("--rows", default=100_000, show_default=True, help="Rows in the sample table at start.")
@click.option("--rate", default=500, show_default=True, help="Rows written per second while it runs.")
@click.option("--workers", default=2, show_default=True)
@click.option("--iggy", "iggy_address", default=None, help="A real Iggy at HOST:PORT instead of the stand-in.")
def demo(seconds: float, rows: int, rate: int, workers: int, iggy_address: str | None) -> None:
    """Run the real pipeline against a throw-away PostgreSQL and the Iggy stand-in."""
    from pgsource.config.address import parse_address
    from pgsource.errors import PgSourceError

    if iggy_address is not None:
        try:
            parse_address(iggy_address)
        except ValueError as exc:
            click.echo(f"error: --iggy: {exc}", err=True)
            sys.exit(2)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _Interrupts.handle)
    try:
        code = _demo(seconds, rows, rate, workers, iggy_address)
    except KeyboardInterrupt:
        click.echo("interrupted: the demo's PostgreSQL, processes and files are gone", err=True)
        code = INTERRUPTED
    except (PgSourceError, RuntimeError, OSError) as exc:  # e.g. pg_ctl missing or failing: said, cleaned up
        click.echo(f"error: {exc}", err=True)
        code = 1
    exit_after_sdk(code)  # the clean-up above is done: nothing is left for the interpreter's exit


def _demo(seconds: float, rows: int, rate: int, workers: int, iggy_address: str | None) -> int:
    from pgsource_testkit.iggy import IggyStandIn
    from pgsource_testkit.postgres import LocalPostgres

    with contextlib.ExitStack() as cleanup:
        with _Interrupts.deferred():
            work = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="pgsource-demo-"))
        click.echo("starting a private PostgreSQL ...")
        with _Interrupts.deferred():
            pg = LocalPostgres()
            cleanup.callback(pg.stop)
        pg.start()
        dsn = pg.dsn(pg.create_database("demo"))
        _create_sample(dsn, rows)
        own_iggy = iggy_address is not None
        if iggy_address is None:
            with _Interrupts.deferred():
                standin = IggyStandIn()
                cleanup.callback(standin.stop)
            iggy_address = standin.start().address
            click.echo(f"Iggy stand-in (a test double, not an Iggy server) on {iggy_address}")
        topic = time.strftime("orders_%Y%m%d_%H%M%S") + f"_{os.getpid()}"
        path = _write_config(work, dsn, iggy_address, topic, workers)
        stop = threading.Event()
        writer = threading.Thread(target=_writer, args=(dsn, stop, rate), daemon=True)
        with _Interrupts.deferred():
            cleanup.callback(writer.join, 10)
            cleanup.callback(stop.set)
            writer.start()
        click.echo(f"running `pgsource run --config {path}` for {seconds:.0f}s ({rows} rows + {rate} rows/s of live writes)")
        started = time.monotonic()
        with _Interrupts.deferred():
            # a session of its own: the terminal's Ctrl-C reaches the demo alone, which stops the service
            # with SIGTERM (a SIGINT in the service's own start-up, before it takes signals, printed a traceback)
            service = subprocess.Popen([sys.executable, "-m", "workers.cli", "run", "--config", path],
                                       start_new_session=True)
            cleanup.callback(_stop_service, service)
        code = _wait_and_stop(service, path, topic, seconds, stop)
        elapsed = time.monotonic() - started
        return _report(path, topic, code, elapsed, iggy_address if own_iggy else None)


def _create_sample(dsn: str, rows: int) -> None:
    from pgsource.pg import connect as pgc
    from pgsource.pg.statements import run

    conn = pgc.connect(dsn, application_name="pgsource-demo-setup")
    run(conn, SAMPLE_TABLE)
    run(conn, SAMPLE_ROWS, (rows,))
    conn.close()


def _write_config(work: str, dsn: str, iggy_address: str, topic: str, workers: int) -> str:
    config = {
        "source": {"connection_string": dsn, "mode": "polling", "tables": ["orders"],
                   "poll_interval": "200ms", "batch_size": 1000},
        "iggy": {"address": iggy_address, "stream": "demo", "topic": topic},
        "state": {"dir": os.path.join(work, "state")},
        "workers": workers,
    }
    path = os.path.join(work, "pgsource.yaml")
    with open(path, "w") as out:
        yaml.safe_dump(config, out)
    return path


def _count(path: str, topic: str) -> int:
    from pgsource.config import load_config
    from pgsource.errors import PgSourceError
    from pgsource.sink.reader import TopicReader, topic_message_count

    async def count() -> int:
        return await topic_message_count(await TopicReader(load_config(path).iggy).connect(), "demo", topic)

    try:
        return asyncio.run(count())
    except PgSourceError:
        return 0


def _wait_and_stop(service: subprocess.Popen, path: str, topic: str, seconds: float, writes: threading.Event) -> int:
    """The clock starts with the first row in Iggy: a slow start-up (a loaded host) does not eat the run."""
    deadline = time.monotonic() + STARTUP_WAIT
    while service.poll() is None and time.monotonic() < deadline and not _count(path, topic):
        time.sleep(0.5)
    time.sleep(seconds)
    writes.set()
    return _stop_service(service)


def _stop_service(service: subprocess.Popen) -> int:
    if service.poll() is None:
        service.send_signal(signal.SIGTERM)
    try:
        return service.wait(60)
    except subprocess.TimeoutExpired:
        service.kill()
        return service.wait()


def _report(path: str, topic: str, code: int, elapsed: float, own_iggy: str | None) -> int:
    from pgsource.config import load_config
    from pgsource.ops.admin.tail import plan_tail, run_tail

    count = _count(path, topic)
    click.echo(f"\npgsource exited with code {code}")
    click.echo(f"messages in Iggy demo/{topic}: {count} ({count / elapsed:,.0f} rows/s averaged over the whole"
               f" {elapsed:.1f}s run, start-up and idle polls included; bench/ measures throughput)")
    click.echo(f"\nthe newest 3 of them, as `pgsource tail --config {path} -n 3` shows them:")
    config = load_config(path)
    asyncio.run(run_tail(config, plan_tail(config, None, 3, False, False), click.echo, click.echo))
    click.echo("\nOn your own database: write a configuration (README.md), `pgsource run --config FILE`, and"
               " `pgsource tail --config FILE` to see the messages.")
    if own_iggy is not None:
        click.echo(f"The demo's messages stay in the Iggy at {own_iggy}: stream demo, topic {topic}.")
    return 1 if code != 0 or count == 0 else 0
