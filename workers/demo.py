"""``pgsource demo``: the real pipeline on an embedded default, for a bounded time.

It starts a throw-away PostgreSQL (wal_level=logical) with a sample table and ongoing
writes, the Iggy stand-in (or uses a real Iggy given by ``--iggy HOST:PORT``), runs
``pgsource run`` against them as a user would, stops it with SIGTERM, and prints what
arrived in Iggy, read back through the real SDK.
"""

from __future__ import annotations

import asyncio
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


def _writer(dsn: str, stop: threading.Event, rate: int) -> None:
    """Ongoing writes while pgsource runs: ``rate`` rows a second in small transactions."""
    from pgsource.pg import connect as pg
    from pgsource.pg.statements import run

    conn = pg.connect(dsn, application_name="pgsource-demo-writer")
    while not stop.wait(0.1):
        run(conn, SAMPLE_ROWS, (max(1, rate // 10),))
    conn.close()


STARTUP_WAIT = 120.0  # seconds the first row may take to reach Iggy before the timed run starts anyway


async def _read_back(address: str, stream: str, topic: str) -> tuple[int, list[bytes]]:
    from pgsource.sink.reader import read_topic

    return await read_topic(address, "iggy", "iggy", stream, topic)


@click.command("demo")
@click.option("--seconds", default=10.0, show_default=True, help="How long pgsource runs.")
@click.option("--rows", default=100_000, show_default=True, help="Rows in the sample table at start.")
@click.option("--rate", default=500, show_default=True, help="Rows written per second while it runs.")
@click.option("--workers", default=2, show_default=True)
@click.option("--iggy", "iggy_address", default=None, help="A real Iggy at HOST:PORT instead of the stand-in.")
def demo(seconds: float, rows: int, rate: int, workers: int, iggy_address: str | None) -> None:
    """Run the real pipeline against a throw-away PostgreSQL and the Iggy stand-in."""
    from pgsource_testkit.iggy import IggyStandIn
    from pgsource_testkit.postgres import LocalPostgres

    click.echo("starting a private PostgreSQL ...")
    with LocalPostgres() as pg, tempfile.TemporaryDirectory(prefix="pgsource-demo-") as work:
        dbname = pg.create_database("demo")
        dsn = pg.dsn(dbname)
        from pgsource.pg import connect as pgc
        from pgsource.pg.statements import run

        conn = pgc.connect(dsn, application_name="pgsource-demo-setup")
        run(conn, SAMPLE_TABLE)
        run(conn, SAMPLE_ROWS, (rows,))
        conn.close()
        standin = None
        if iggy_address is None:
            standin = IggyStandIn().start()
            iggy_address = standin.address
            click.echo(f"Iggy stand-in (a test double, not an Iggy server) on {iggy_address}")
        config = {
            "source": {"connection_string": dsn, "mode": "polling", "tables": ["orders"],
                       "poll_interval": "200ms", "batch_size": 1000},
            "iggy": {"address": iggy_address, "stream": "demo", "topic": "{table}"},
            "state": {"dir": os.path.join(work, "state")},
            "workers": workers,
        }
        path = os.path.join(work, "pgsource.yaml")
        with open(path, "w") as out:
            yaml.safe_dump(config, out)
        stop = threading.Event()
        writer = threading.Thread(target=_writer, args=(dsn, stop, rate), daemon=True)
        writer.start()
        click.echo(f"running `pgsource run --config {path}` for {seconds:.0f}s ({rows} rows + {rate} rows/s of live writes)")
        started = time.monotonic()
        service = subprocess.Popen([sys.executable, "-m", "workers.cli", "run", "--config", path])
        try:
            # the clock starts with the first row in Iggy: a slow start-up (a loaded host) does not eat the run
            deadline = time.monotonic() + STARTUP_WAIT
            while service.poll() is None and time.monotonic() < deadline:
                if asyncio.run(_read_back(iggy_address, "demo", "orders"))[0]:
                    break
                time.sleep(0.5)
            time.sleep(seconds)
        finally:
            stop.set()
            service.send_signal(signal.SIGTERM)
            code = service.wait(60)
        elapsed = time.monotonic() - started
        count, samples = asyncio.run(_read_back(iggy_address, "demo", "orders"))
        click.echo(f"\npgsource exited with code {code}")
        click.echo(f"messages in Iggy demo/orders: {count} ({count / elapsed:,.0f} rows/s averaged over the whole {elapsed:.1f}s run,"
                   " start-up and idle polls included; bench/ measures throughput)")
        for payload in samples:
            click.echo("  " + bytes(payload).decode()[:300])
        if standin is not None:
            standin.stop()
        exit_after_sdk(1 if code != 0 or count == 0 else 0)  # this process read Iggy back through the SDK
