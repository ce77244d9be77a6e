"""pgsource's benchmark: throughput against the physical limits of the same run, latency, memory.

``python -m bench.run --rows 1000000 --json out.json`` (see bench/README.md). It starts a
private PostgreSQL and the Iggy stand-in (in its own process), builds a realistic table,
then measures each figure ``--repeat`` times (median reported):

- ``COPY t TO STDOUT`` and ``COPY (SELECT row_to_json(t) ...) TO STDOUT`` read and discarded;
- pgsource polling end to end (``python -m workers.cli run``) with 1 worker and with
  ``--workers`` workers (the table split into that many key-range chunks);
- CDC of one transaction of N updates and of 1,000 transactions of N/1000 updates:
  pgsource end to end against a do-nothing streaming consumer and a SQL peek count;
- latency at a steady change rate (commit time → the stand-in's receive time);
- peak RSS of all pgsource processes together and their CPU seconds per million rows.

``--iggy HOST:PORT`` measures the same into a real Iggy server instead of the stand-in
(``--iggy-username``/``--iggy-password``, default iggy/iggy). Its CPU is measured when it
runs on this machine (the process listening on that port). A server that refuses the
create-topic options of apache-iggy 0.9.0 gets each run's topic created beforehand,
without options, and pgsource runs with ``create_missing: false``.

Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import psutil
import psycopg2
import psycopg2.extras
import yaml

REPO = Path(__file__).resolve().parent.parent
TABLE = "bench_t"
PROFILE_DIR = ""  # --profile: cProfile every pgsource process, .prof files here
PUBLICATION = "bench_pub"


class Target:
    """The Iggy the benchmark writes to: the stand-in it starts, or a real server (--iggy)."""

    def __init__(self, address: str, kind: str, pid: int | None, username: str = "iggy", password: str = "iggy") -> None:
        self.address = address
        self.kind = kind  # "stand-in" | "iggy-server"
        self.pid = pid  # its process on this machine, for CPU; None when unknown
        self.username = username
        self.password = password
        self.precreate = False  # True: the server refuses the wheel's create-topic options

    def cpu_seconds(self) -> float:
        if self.pid is None:
            return float("nan")
        try:
            times = psutil.Process(self.pid).cpu_times()
        except psutil.Error:
            return float("nan")
        return times.user + times.system


IGGY: Target | None = None


def local_listener_pid(address: str) -> int | None:
    """The process of this machine listening on ``address``'s port (the real server), if any."""
    port = int(address.rsplit(":", 1)[1])
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return conn.pid
    except psutil.Error:
        return None
    return None


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- PostgreSQL ---------------------------------------------------------------------------


def execute(dsn: str, *statements: str) -> None:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
    finally:
        conn.close()


def scalar(dsn: str, statement: str, params=None):
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchone()[0]
    finally:
        conn.close()


def build_table(dsn: str, rows: int) -> None:
    execute(
        dsn,
        f"DROP TABLE IF EXISTS {TABLE}",
        f"""CREATE TABLE {TABLE} (
            id bigserial PRIMARY KEY,
            name text NOT NULL,
            email text NOT NULL,
            quantity integer NOT NULL,
            price numeric(12,2) NOT NULL,
            active boolean NOT NULL,
            created_at timestamptz NOT NULL,
            attributes jsonb NOT NULL,
            ref uuid NOT NULL)""",
        f"""INSERT INTO {TABLE} (name, email, quantity, price, active, created_at, attributes, ref)
            SELECT 'Customer ' || g || ' ' || md5(g::text),
                   'user' || g || '@example' || (g % 97) || '.com',
                   ((g::bigint * 7919) % 100000)::int,
                   round((random() * 100000)::numeric, 2),
                   g % 3 = 0,
                   timestamptz '2024-01-01 00:00:00+00' + g * interval '1.234567 second',
                   jsonb_build_object('tier', g % 5, 'tags', jsonb_build_array('a', 'b' || (g % 11)), 'vip', g % 13 = 0),
                   gen_random_uuid()
            FROM generate_series(1, {rows}) AS g""",
        f"VACUUM (ANALYZE, FREEZE) {TABLE}",
    )


class _Discard:
    """A file-like sink for ``copy_expert`` that throws everything away (counting bytes)."""

    def __init__(self) -> None:
        self.bytes = 0

    def write(self, data) -> int:
        self.bytes += len(data)
        return len(data)


def measure_copy(dsn: str, statement: str) -> float:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            sink = _Discard()
            started = time.perf_counter()
            cur.copy_expert(statement, sink, size=1 << 20)
            return time.perf_counter() - started
    finally:
        conn.close()


# -- Iggy ---------------------------------------------------------------------------------


class IggyView:
    """The benchmark's own SDK client: counts what Iggy acknowledged, reads it back."""

    def __init__(self, target: Target) -> None:
        from pgsource.sink.reader import connect_client

        self.loop = asyncio.new_event_loop()
        self.client = self.loop.run_until_complete(connect_client(target.address, target.username, target.password))

    def refuses_wheel_topic_options(self) -> bool:
        """True when the server refuses the create-topic options apache-iggy 0.9.0 sends."""

        async def probe() -> bool:
            await self.client.create_stream("bench_probe")
            try:
                await self.client.create_topic("bench_probe", "probe", 1)
                return False
            except RuntimeError as exc:
                if "unsupported option key" not in str(exc).lower():
                    raise
                return True
            finally:
                await self.client.delete_stream("bench_probe")

        return self.loop.run_until_complete(probe())

    def precreate(self, stream: str, topic: str, partitions: int = 1) -> None:
        """The stream and the topic, created without create-topic options."""
        import struct

        async def create() -> None:
            if await self.client.get_stream(stream) is not None:  # left by an interrupted run
                await self.client.delete_stream(stream)
            await self.client.create_stream(stream)
            body = bytes((2, len(stream))) + stream.encode() + struct.pack("<I", partitions)
            await self.client.send_binary_request(302, body + bytes((len(topic),)) + topic.encode())

        self.loop.run_until_complete(create())

    def count(self, stream: str, topic: str) -> int:
        from pgsource.sink.reader import topic_message_count

        try:
            return self.loop.run_until_complete(topic_message_count(self.client, stream, topic))
        except RuntimeError:
            return 0

    def drop(self, stream: str) -> None:
        """Free Iggy's memory and disk between runs (it keeps every message it was sent)."""

        async def delete() -> None:  # the SDK's awaitables need a running loop when created
            await self.client.delete_stream(stream)

        try:
            self.loop.run_until_complete(delete())
        except RuntimeError as exc:
            raise RuntimeError(f"deleting stream {stream} from Iggy: {exc}") from None

    def read_all(self, stream: str, topic: str, total: int) -> list:
        import apache_iggy as iggy

        out: list = []
        while len(out) < total:
            async def poll(offset: int):
                return await self.client.poll_messages(
                    stream, topic, consumer=iggy.Consumer.Single("bench"),
                    polling_strategy=iggy.PollingStrategy.Offset(value=offset),
                    count=5000, auto_commit=False, partition_id=0,
                )

            polled = self.loop.run_until_complete(poll(len(out)))
            if not polled:
                break
            out.extend((m.timestamp(), m.payload()) for m in polled)
        return out


# -- the pgsource service as users run it --------------------------------------------------


class ProcessTreeSampler:
    """Sums RSS over a process and its descendants every ``interval``; keeps CPU per pid."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak_rss = 0
        self.cpu: dict[int, float] = {}
        self.roles: dict[int, str] = {}
        self.backends: dict[int, float] = {}  # PostgreSQL backends serving pgsource: pid → CPU s
        self.backend_finder = None  # () -> pids of those backends (set by the caller)
        self._last_find = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return
        rss = 0
        for proc in procs:
            try:
                with proc.oneshot():
                    rss += proc.memory_info().rss
                    times = proc.cpu_times()
                    self.cpu[proc.pid] = times.user + times.system
            except psutil.Error:
                continue
        self.peak_rss = max(self.peak_rss, rss)
        if self.backend_finder is not None:
            now = time.monotonic()
            pids = list(self.backends)
            if now - self._last_find > 1.0:
                self._last_find = now
                pids = sorted(set(pids) | set(self.backend_finder()))
            for pid in pids:
                try:
                    times = psutil.Process(pid).cpu_times()
                    self.backends[pid] = times.user + times.system
                except psutil.Error:
                    continue

    def classify(self) -> None:
        """Name each live process of the tree: supervisor, publisher (holds the SDK), worker, other."""
        for proc in [self.root, *self.root.children(recursive=True)]:
            try:
                if proc.pid == self.root.pid:
                    self.roles[proc.pid] = "supervisor"
                elif "resource_tracker" in " ".join(proc.cmdline()):
                    self.roles[proc.pid] = "other"
                elif any("apache_iggy" in m.path for m in proc.memory_maps()):
                    self.roles[proc.pid] = "publisher"
                else:
                    self.roles[proc.pid] = "worker"
            except psutil.Error:
                continue

    def cpu_by_role(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for pid, seconds in self.cpu.items():
            role = self.roles.get(pid, "other")
            out[role] = out.get(role, 0.0) + seconds
        out["postgres_backends"] = sum(self.backends.values())
        return out

    def stop(self) -> None:
        self.sample()
        self._stop.set()
        self._thread.join()

    @property
    def cpu_seconds(self) -> float:
        return sum(self.cpu.values())


class Service:
    """``python -m workers.cli run --config FILE`` with a config written for one measurement."""

    def __init__(self, workdir: str, source: dict, view, stream: str, workers=1, **extra) -> None:
        os.makedirs(workdir, exist_ok=True)
        self.state_dir = os.path.join(workdir, "state")
        iggy = {"address": IGGY.address, "username": IGGY.username, "password": IGGY.password,
                "stream": stream, "topic": "{table}"}
        if IGGY.precreate:
            view.precreate(stream, TABLE)
            iggy["create_missing"] = False
        config = {
            "source": source,
            "iggy": iggy,
            "state": {"dir": self.state_dir},
            "workers": workers,
            "supervisor": {"stop_timeout": "10s"},
            **extra,
        }
        self.config_path = os.path.join(workdir, "pgsource.yaml")
        with open(self.config_path, "w") as out:
            yaml.safe_dump(config, out)
        self.log_path = os.path.join(workdir, "pgsource.log")
        self.process: subprocess.Popen | None = None
        self.sampler: ProcessTreeSampler | None = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO), "PGSOURCE_LOG_LEVEL": "WARNING"}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        command = [sys.executable, "-m", "workers.cli", "run", "--config", self.config_path]
        if PROFILE_DIR:  # cProfile in every process of the tree: skews every figure of this run
            out = os.path.join(PROFILE_DIR, os.path.basename(os.path.dirname(self.config_path)))
            os.makedirs(out, exist_ok=True)
            env["BENCH_CPROFILE_DIR"] = out
            env["PYTHONPATH"] = os.pathsep.join([str(REPO / "bench" / "cprofile"), env["PYTHONPATH"]])
        self.process = subprocess.Popen(
            command,
            cwd=str(REPO), env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.sampler = ProcessTreeSampler(self.process.pid)

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            tail = Path(self.log_path).read_text(errors="replace")[-3000:]
            raise RuntimeError(f"pgsource exited with {self.process.returncode}:\n{tail}")

    def stop(self) -> None:
        self.sampler.stop()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()

    def committed_rows(self) -> int:
        total = 0
        for path in glob.glob(os.path.join(self.state_dir, "polling*.json")):
            try:
                with open(path) as handle:
                    raw = json.load(handle)
                total += int(raw.get("record", raw).get("rows", 0) or 0)  # typed records keep it under "record"
            except (OSError, ValueError):
                continue
        return total


def iggy_cpu_seconds() -> float:
    return IGGY.cpu_seconds()


def wait_until(predicate, service: Service, timeout: float, what: str, interval: float = 0.02) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.perf_counter()
        service.check_alive()
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what} (log: {service.log_path})")


# -- measurements -------------------------------------------------------------------------


def run_polling(args, dsn: str, view: IggyView, workers: int, run: int, workdir: str) -> dict:
    stream = f"poll_w{workers}_r{run}"
    table = {"name": TABLE, "chunks": workers} if workers > 1 and args.split == "chunks" else TABLE
    source = {
        "connection_string": dsn,
        "mode": "polling",
        "tables": [table],
        "poll_interval": "100ms",
        "batch_size": args.batch_size,
    }
    service = Service(os.path.join(workdir, stream), source, view, stream, workers=workers)
    rows = args.rows
    iggy_cpu = iggy_cpu_seconds()
    started = time.perf_counter()
    service.start()
    service.sampler.backend_finder = lambda: pgsource_backends(dsn)
    try:
        first = wait_until(lambda: view.count(stream, TABLE) > 0, service, 120, "the first message")
        done = wait_until(
            lambda: view.count(stream, TABLE) >= rows and service.committed_rows() >= rows,
            service, 600, f"{rows} messages acknowledged and committed",
        )
        service.sampler.sample()
        service.sampler.classify()
    finally:
        service.stop()
    by_role = {role: seconds / rows * 1e6 for role, seconds in service.sampler.cpu_by_role().items()}
    delivered = view.count(stream, TABLE)
    view.drop(stream)
    return {
        "seconds": done - started,
        "startup_seconds": first - started,
        "rows_per_s": rows / (done - started),
        "delivered": delivered,
        "peak_rss_mb": service.sampler.peak_rss / 2**20,
        "cpu_s_per_m_rows": service.sampler.cpu_seconds / rows * 1e6,
        "iggy_cpu_s_per_m_rows": (iggy_cpu_seconds() - iggy_cpu) / rows * 1e6,
        "cpu_s_per_m_rows_by_process": by_role,
    }


def pgsource_backends(dsn: str) -> list[int]:
    """pids of the PostgreSQL backends that serve pgsource's connections (same machine)."""
    try:
        return [pid for (pid,) in rows_of(dsn, "SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'pgsource-%'")]
    except psycopg2.Error:
        return []


@contextlib.contextmanager
def autocommit_cursor(dsn: str):
    """A cursor on a fresh autocommit connection, closed afterwards."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            yield cur
    finally:
        conn.close()


def rows_of(dsn: str, statement: str) -> list[tuple]:
    with autocommit_cursor(dsn) as cur:
        cur.execute(statement)
        return cur.fetchall()


def create_slots(dsn: str, names: list[str]) -> None:
    with autocommit_cursor(dsn) as cur:
        for name in names:
            cur.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (name,))


def drop_slots(dsn: str, names: list[str]) -> None:
    with autocommit_cursor(dsn) as cur:
        for name in names:
            cur.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s", (name,))


def cdc_workload(dsn: str, rows: int, transactions: int) -> None:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            per = rows // transactions
            for index in range(transactions):
                cur.execute(
                    f"UPDATE {TABLE} SET quantity = quantity + 1 WHERE id > %s AND id <= %s",
                    (index * per, (index + 1) * per),
                )
                conn.commit()
    finally:
        conn.close()


def drain_streaming(dsn: str, slot: str, expected: int, options: str | None = None) -> float:
    """A do-nothing pgoutput consumer; ``options``: session settings (pgsource's, for the 2nd reference)."""
    from psycopg2.extras import LogicalReplicationConnection, StopReplication

    started = time.perf_counter()
    extra = {"options": options} if options else {}
    conn = psycopg2.connect(dsn, connection_factory=LogicalReplicationConnection, **extra)
    cur = conn.cursor()
    cur.start_replication(slot_name=slot, decode=False, options={"proto_version": "1", "publication_names": PUBLICATION})
    seen = 0

    def consume(message) -> None:
        nonlocal seen
        if message.payload[0] in (73, 85, 68):  # I U D
            seen += 1
            if seen >= expected:
                raise StopReplication

    try:
        cur.consume_stream(consume)
    except StopReplication:
        pass
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


def drain_peek(dsn: str, slot: str) -> float:
    started = time.perf_counter()
    scalar(
        dsn,
        "SELECT count(*) FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL,"
        " 'proto_version', '1', 'publication_names', %s)",
        (slot, PUBLICATION),
    )
    return time.perf_counter() - started


def run_cdc_pgsource(args, dsn, view, slot, expected, workdir, transport) -> dict:
    stream = f"cdc_{slot}"
    source = {
        "connection_string": dsn,
        "mode": "cdc",
        "tables": [TABLE],
        "publication_name": PUBLICATION,
        "replication_slot": slot,
        "cdc_transport": transport,
        "batch_size": args.batch_size,
    }
    service = Service(os.path.join(workdir, stream), source, view, stream)
    iggy_cpu = iggy_cpu_seconds()
    started = time.perf_counter()
    service.start()
    try:
        done = wait_until(lambda: view.count(stream, TABLE) >= expected, service, 900, f"{expected} changes")
        service.sampler.sample()
    finally:
        service.stop()
    delivered = view.count(stream, TABLE)
    view.drop(stream)
    return {
        "seconds": done - started,
        "rows_per_s": expected / (done - started),
        "delivered": delivered,
        "peak_rss_mb": service.sampler.peak_rss / 2**20,
        "cpu_s_per_m_rows": service.sampler.cpu_seconds / expected * 1e6,
        "iggy_cpu_s_per_m_rows": (iggy_cpu_seconds() - iggy_cpu) / expected * 1e6,
    }


def run_cdc_shape(args, dsn, view, transactions: int, workdir: str) -> dict:
    rows = args.rows
    shape = "one_txn" if transactions == 1 else f"{transactions}_txns"
    transports = args.cdc_transport.split(",")
    pgs = {t: [f"b_{shape}_{t}_{r}" for r in range(args.repeat)] for t in transports}
    streaming = [f"b_{shape}_stream_{r}" for r in range(args.repeat)]
    streaming_same = [f"b_{shape}_streamopt_{r}" for r in range(args.repeat)]
    peek = f"b_{shape}_peek"
    every = [s for names in pgs.values() for s in names] + streaming + streaming_same + [peek]
    create_slots(dsn, every)
    log(f"cdc {shape}: workload ({rows} updates in {transactions} transaction(s))")
    started = time.perf_counter()
    cdc_workload(dsn, rows, transactions)
    workload_seconds = time.perf_counter() - started
    out: dict = {"workload_seconds": workload_seconds, "changes": rows, "transactions": transactions}
    try:
        peek_times = []
        for _ in range(args.repeat):
            peek_times.append(drain_peek(dsn, peek))
            log(f"cdc {shape}: SQL peek drain {rows / peek_times[-1]:,.0f} changes/s")
        stream_times = []
        for slot in streaming:
            stream_times.append(drain_streaming(dsn, slot, rows))
            log(f"cdc {shape}: streaming drain {rows / stream_times[-1]:,.0f} changes/s")
        # The same consumer with pgsource's session settings (TimeZone=UTC, DateStyle=ISO...):
        # they change what the walsender spends formatting values, so this is the fair twin.
        from pgsource.pg.connect import SESSION_OPTIONS

        same_times = []
        for slot in streaming_same:
            same_times.append(drain_streaming(dsn, slot, rows, SESSION_OPTIONS))
            log(f"cdc {shape}: streaming drain, pgsource's session settings {rows / same_times[-1]:,.0f} changes/s")
        out["peek_drain"] = summarize([{"rows_per_s": rows / t, "seconds": t} for t in peek_times])
        out["streaming_drain"] = summarize([{"rows_per_s": rows / t, "seconds": t} for t in stream_times])
        out["streaming_drain_same_settings"] = summarize([{"rows_per_s": rows / t, "seconds": t} for t in same_times])
        for transport, slots in pgs.items():
            runs = []
            for slot in slots:
                runs.append(run_cdc_pgsource(args, dsn, view, slot, rows, workdir, transport))
                log(f"cdc {shape}: pgsource ({transport}) {runs[-1]['rows_per_s']:,.0f} changes/s,"
                    f" peak RSS {runs[-1]['peak_rss_mb']:.0f} MB")
            out[f"pgsource_{transport}"] = summarize(runs)
    finally:
        drop_slots(dsn, every)
    return out


def run_latency(args, dsn, view, workdir: str) -> dict:
    slot = "b_latency"
    stream = "latency"
    create_slots(dsn, [slot])
    source = {
        "connection_string": dsn,
        "mode": "cdc",
        "tables": [TABLE],
        "publication_name": PUBLICATION,
        "replication_slot": slot,
        "cdc_transport": args.cdc_transport.split(",")[0],
        "batch_size": args.batch_size,
    }
    service = Service(os.path.join(workdir, stream), source, view, stream)
    service.start()
    per_txn = args.latency_txn_rows
    interval = per_txn / args.latency_rate
    transactions = int(args.latency_seconds / interval)
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            # PostgreSQL's default: the test cluster runs with synchronous_commit=off, which leaves
            # commits unflushed for up to wal_writer_delay (200 ms), and logical decoding reads
            # flushed WAL only; that would measure the WAL writer, not pgsource.
            cur.execute("SET synchronous_commit = on")
            cur.execute(f"UPDATE {TABLE} SET quantity = quantity + 1 WHERE id = 1")
            conn.commit()
            wait_until(lambda: view.count(stream, TABLE) >= 1, service, 60, "the probe change")
            log(f"latency: {args.latency_rate} changes/s for {args.latency_seconds}s ({per_txn} per transaction)")
            begin = time.perf_counter()
            for index in range(transactions):
                target = begin + index * interval
                pause = target - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
                low = (index * per_txn) % (args.rows - per_txn)
                cur.execute(f"UPDATE {TABLE} SET quantity = quantity + 1 WHERE id > %s AND id <= %s", (low, low + per_txn))
                conn.commit()
            achieved = transactions * per_txn / (time.perf_counter() - begin)
        expected = 1 + transactions * per_txn
        wait_until(lambda: view.count(stream, TABLE) >= expected, service, 120, f"{expected} changes")
        service.sampler.sample()
    finally:
        conn.close()
        service.stop()
    messages = view.read_all(stream, TABLE, expected)[1:]
    view.drop(stream)
    drop_slots(dsn, [slot])
    lags = []
    for received_us, payload in messages:
        body = json.loads(payload)
        committed = datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00")).timestamp()
        lags.append(received_us / 1e6 - committed)
    lags.sort()
    return {
        "changes": len(lags),
        "achieved_rate": achieved,
        "p50_ms": percentile(lags, 50) * 1000,
        "p99_ms": percentile(lags, 99) * 1000,
        "max_ms": lags[-1] * 1000 if lags else None,
        "peak_rss_mb": service.sampler.peak_rss / 2**20,
    }


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    index = min(len(values) - 1, max(0, round(pct / 100 * len(values)) - 1))
    return values[index]


def summarize(runs: list[dict]) -> dict:
    """The median of every numeric figure over the runs, plus the runs themselves."""
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float))]
    out = {k: statistics.median(run[k] for run in runs) for k in keys}
    if "peak_rss_mb" in out:
        out["peak_rss_mb_max"] = max(run["peak_rss_mb"] for run in runs)
    out["runs"] = runs
    return out


# -- report -------------------------------------------------------------------------------


def report(results: dict) -> str:
    lines = []
    copy_text = results.get("copy_text", {}).get("rows_per_s", float("nan"))
    kind = results.get("iggy", {}).get("kind", "stand-in")
    lines.append(f"into {kind} at {results.get('iggy', {}).get('address', '?')}")

    def row(name: str, rate: float, note: str = "") -> None:
        lines.append(f"{name:<44} {rate:>12,.0f}   {note}")

    lines.append(f"{'measurement (median of ' + str(results['repeat']) + ')':<44} {'rows/s':>12}   ratio")
    row("COPY text (physical limit)", copy_text, "1.00 x COPY-text")
    if "copy_json" in results:
        row("COPY row_to_json", results["copy_json"]["rows_per_s"],
            f"{results['copy_json']['rows_per_s'] / copy_text:.2f} x COPY-text")
    polling = results.get("polling", {})
    one = polling["workers_1"]["rows_per_s"] if polling else 0
    for key, figures in polling.items():
        rate = figures["rows_per_s"]
        note = f"{rate / copy_text:.3f} x COPY-text"
        if key != "workers_1":
            note += f", {rate / one:.2f} x 1-worker"
        row(f"pgsource polling {key.replace('_', '=')} ({polling_split(results, key)})", rate,
            note + f"; RSS {figures['peak_rss_mb_max']:.0f} MB, CPU {figures['cpu_s_per_m_rows']:.1f} s/M rows,"
            f" {kind} {figures.get('iggy_cpu_s_per_m_rows', float('nan')):.1f}")
    for shape, figures in results.get("cdc", {}).items():
        stream = figures["streaming_drain"]["rows_per_s"]
        peek = figures["peek_drain"]["rows_per_s"]
        same = figures.get("streaming_drain_same_settings", {}).get("rows_per_s", float("nan"))
        row(f"CDC {shape}: raw streaming drain", stream)
        row(f"CDC {shape}: raw streaming drain, pgsource's settings", same, f"{same / stream:.2f} x streaming")
        row(f"CDC {shape}: raw SQL peek drain", peek, f"{peek / stream:.2f} x streaming")
        for key in figures:
            if key.startswith("pgsource_"):
                rate = figures[key]["rows_per_s"]
                row(f"CDC {shape}: {key.replace('_', ' ')}", rate,
                    f"{rate / stream:.2f} x streaming ({rate / same:.2f} x same settings), {rate / peek:.2f} x peek;"
                    f" RSS {figures[key]['peak_rss_mb_max']:.0f} MB, CPU {figures[key]['cpu_s_per_m_rows']:.1f} s/M rows,"
                    f" {kind} {figures[key].get('iggy_cpu_s_per_m_rows', float('nan')):.1f}")
    latency = results.get("latency")
    if latency:
        lines.append(
            f"latency at {latency['achieved_rate']:,.0f} changes/s: p50 {latency['p50_ms']:.1f} ms,"
            f" p99 {latency['p99_ms']:.1f} ms, max {latency['max_ms']:.1f} ms"
        )
    lines.append(f"peak RSS of all pgsource processes, any run: {results['peak_rss_mb']:.0f} MB")
    lines.append(f"rows={results['rows']} nproc={results['nproc']} batch_size={results['batch_size']}")
    return "\n".join(lines)


def polling_split(results: dict, key: str) -> str:
    if key == "workers_1":
        return "1 table"
    return "1 table in key-range chunks" if results["split"] == "chunks" else "2 tables"


# -- main ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="the many-workers case (default: cores)")
    parser.add_argument("--batch-size", type=int, default=1000, help="source.batch_size (default: the product default)")
    parser.add_argument("--split", choices=["chunks"], default="chunks",
                        help="how the many-workers case splits the work: key-range chunks of the one table")
    parser.add_argument("--cdc-transport", default="sql", help="comma-separated: sql, replication")
    parser.add_argument("--latency-rate", type=int, default=2000)
    parser.add_argument("--latency-seconds", type=float, default=30)
    parser.add_argument("--latency-txn-rows", type=int, default=10)
    parser.add_argument("--only", default="copy,polling,cdc,latency", help="comma-separated parts to run")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, configs)")
    parser.add_argument("--profile", metavar="DIR", help="cProfile every pgsource process (one .prof per process under DIR); skews figures")
    parser.add_argument("--iggy", metavar="HOST:PORT", help="a real Iggy server instead of the stand-in")
    parser.add_argument("--iggy-username", default="iggy")
    parser.add_argument("--iggy-password", default="iggy")
    args = parser.parse_args(argv)
    global PROFILE_DIR, IGGY
    if args.profile:
        PROFILE_DIR = os.path.abspath(args.profile)
        os.makedirs(PROFILE_DIR, exist_ok=True)
    if args.rows % 1000:
        parser.error("--rows must be a multiple of 1000 (the 1,000-transaction CDC shape)")
    parts = set(args.only.split(","))

    sys.path.insert(0, str(REPO))
    from pgsource.testkit.iggy import IggyStandInProcess
    from pgsource.testkit.postgres import LocalPostgres

    workdir = tempfile.mkdtemp(prefix="pgsource-bench-")
    results: dict = {
        "rows": args.rows, "repeat": args.repeat, "nproc": os.cpu_count(), "batch_size": args.batch_size,
        "split": args.split, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(["python -m bench.run", *(argv if argv is not None else sys.argv[1:])]),
    }
    postgres = LocalPostgres().start()
    standin = None
    if args.iggy:
        IGGY = Target(args.iggy, "iggy-server", local_listener_pid(args.iggy), args.iggy_username, args.iggy_password)
    else:
        standin = IggyStandInProcess().start()
        IGGY = Target(standin.address, "stand-in", standin.pid)
    results["iggy"] = {"kind": IGGY.kind, "address": IGGY.address, "pid": IGGY.pid}
    try:
        database = postgres.create_database("bench")
        dsn = postgres.dsn(database)
        results["postgres"] = scalar(dsn, "SHOW server_version")
        log(f"PostgreSQL {results['postgres']} on port {postgres.port}; {IGGY.kind} at {IGGY.address} (pid {IGGY.pid})")
        started = time.perf_counter()
        build_table(dsn, args.rows)
        results["table_mb"] = scalar(dsn, f"SELECT pg_total_relation_size('{TABLE}')") / 2**20
        log(f"table of {args.rows} rows built in {time.perf_counter() - started:.1f}s ({results['table_mb']:.0f} MB)")
        view = IggyView(IGGY)
        if IGGY.kind == "iggy-server":
            IGGY.precreate = results["iggy"]["precreate_topics"] = view.refuses_wheel_topic_options()

        if "copy" in parts or "polling" in parts:
            for name, statement in (
                ("copy_text", f"COPY {TABLE} TO STDOUT"),
                ("copy_json", f"COPY (SELECT row_to_json(t) FROM {TABLE} t) TO STDOUT"),
            ):
                measure_copy(dsn, statement)  # warm the cache once
                times = [measure_copy(dsn, statement) for _ in range(args.repeat)]
                results[name] = summarize([{"rows_per_s": args.rows / t, "seconds": t} for t in times])
                log(f"{name}: {results[name]['rows_per_s']:,.0f} rows/s")

        if "polling" in parts:
            results["polling"] = {}
            for workers in sorted({1, args.workers}):
                runs = []
                for run in range(args.repeat):
                    runs.append(run_polling(args, dsn, view, workers, run, workdir))
                    figures = runs[-1]
                    cpu = ", ".join(f"{k} {v:.2f}" for k, v in sorted(figures["cpu_s_per_m_rows_by_process"].items()))
                    log(f"polling workers={workers}: {figures['rows_per_s']:,.0f} rows/s"
                        f" (startup {figures['startup_seconds']:.1f}s), peak RSS {figures['peak_rss_mb']:.0f} MB;"
                        f" CPU s/M rows: {cpu}, {IGGY.kind} {figures['iggy_cpu_s_per_m_rows']:.2f}")
                    if figures["delivered"] != args.rows:
                        log(f"WARNING: {figures['delivered']} messages delivered for {args.rows} rows")
                results["polling"][f"workers_{workers}"] = summarize(runs)

        if "cdc" in parts or "latency" in parts:
            execute(dsn, f"CREATE PUBLICATION {PUBLICATION} FOR TABLE {TABLE}")
        if "cdc" in parts:
            results["cdc"] = {}
            for transactions in (1, 1000):
                shape = "one_txn" if transactions == 1 else f"{transactions}_txns"
                results["cdc"][shape] = run_cdc_shape(args, dsn, view, transactions, workdir)
        if "latency" in parts:
            results["latency"] = run_latency(args, dsn, view, workdir)
            lat = results["latency"]
            log(f"latency: p50 {lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms")
    finally:
        if standin is not None:
            standin.stop()
        postgres.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"work directory kept: {workdir}")

    peaks = [f["peak_rss_mb_max"] for f in results.get("polling", {}).values()]
    for figures in results.get("cdc", {}).values():
        peaks += [v["peak_rss_mb_max"] for k, v in figures.items() if k.startswith("pgsource_")]
    if "latency" in results:
        peaks.append(results["latency"]["peak_rss_mb"])
    results["peak_rss_mb"] = max(peaks) if peaks else 0.0
    ratios: dict = {}
    if "copy_text" in results and "polling" in results:
        for key, figures in results["polling"].items():
            ratios[f"polling_{key}_over_copy_text"] = figures["rows_per_s"] / results["copy_text"]["rows_per_s"]
        keys = sorted(results["polling"])
        if len(keys) > 1:
            ratios["polling_many_over_one_worker"] = (
                results["polling"][keys[-1]]["rows_per_s"] / results["polling"]["workers_1"]["rows_per_s"]
            )
    for shape, figures in results.get("cdc", {}).items():
        for key in figures:
            if key.startswith("pgsource_"):
                rate = figures[key]["rows_per_s"]
                ratios[f"cdc_{shape}_{key}_over_streaming"] = rate / figures["streaming_drain"]["rows_per_s"]
                if "streaming_drain_same_settings" in figures:
                    ratios[f"cdc_{shape}_{key}_over_streaming_same_settings"] = (
                        rate / figures["streaming_drain_same_settings"]["rows_per_s"]
                    )
                ratios[f"cdc_{shape}_{key}_over_peek"] = rate / figures["peek_drain"]["rows_per_s"]
    results["ratios"] = ratios
    print(report(results))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # apache-iggy 0.9.0 may abort the interpreter's teardown (see pgsource/sink/sockets.py)
