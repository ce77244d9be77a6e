"""The fault matrix's harness: one run = one scenario in one mode, end to end.

A run has its own database (on the session's cluster, or on a cluster of its own when the
scenario restarts PostgreSQL), its own Iggy stand-in (driven through the real SDK by the
service), its own ``state.dir`` and replication slot, and runs ``pgsource run`` as a subprocess.
Writers (``tests/faults/writers.py``) commit out of order while the scenario injects its fault.
``Run.finish`` then checks what the issue asks:

1. every committed row (and, in CDC, every committed change) is in Iggy — the table itself says
   which rows were committed, the writers which updates;
2. every duplicate is a re-send under the same message id: no row or change under two ids, no id
   for two rows or changes, and (CDC) the same bytes each time;
3. positions never moved backward: the ``state.dir`` records (read with ``FileStateStore``) and the
   slot's ``confirmed_flush_lsn``, sampled on a thread through the whole run;
4. the service ended in the documented state (the scenario says which exit code, when), and a
   graceful stop took at most ``stop_timeout`` + 5 s;

and that no log of the run holds a password the configuration carries (the DSN's, Iggy's).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlparse

import psutil
import psycopg2
import yaml
from psycopg2 import sql

from pgsource_testkit.iggy import IggyStandIn
from pgsource_testkit.postgres import LocalPostgres
from tests.faults.writers import Writers
from tests.support import start_service

MODES = ("polling", "cdc-replication", "cdc-sql")
STOP_TIMEOUT = 5.0  # supervisor.stop_timeout of every run: a graceful stop must end within this + 5 s
SEND_TIMEOUT = 1.5  # iggy.send_timeout: a frozen Iggy turns into a retry this soon
STREAM = "pg"
TOPIC = "t"
ROLE = "pgsource_faults"  # the harness's login role, with a password, when the cluster's DSN has none

TABLE_DDL = (
    "CREATE TABLE t (id bigserial PRIMARY KEY, writer int NOT NULL, v int NOT NULL DEFAULT 0,"
    " note text DEFAULT 'n', amount int DEFAULT 7, gone text DEFAULT 'g')"
)


@dataclass
class Result:
    """One line of the RESULTS table, and what went wrong (empty: the run passed)."""

    scenario: str
    mode: str
    written: int = 0
    received: int = 0
    duplicates: int = 0
    lost: int = 0
    recovery_s: float | None = None
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def row(self) -> str:
        recovery = "-" if self.recovery_s is None else f"{self.recovery_s:.2f}"
        return f"| {self.scenario} | {self.mode} | {self.written} | {self.received} | {self.duplicates} | {self.lost} | {recovery} |"


def table_text(results: list[Result]) -> str:
    lines = ["| scenario | mode | written | received | duplicates | lost | recovery_s |", "|---|---|---|---|---|---|---|"]
    return "\n".join([*lines, *(r.row() for r in results)])


def with_password(dsn: str, cluster_admin_dsn: str) -> str:
    """The DSN the service gets: the cluster's own when it carries a password, else one for a role
    the harness gives a random password (the log check then has a password to look for)."""
    if urlparse(dsn).password:
        return dsn
    with _ROLE_LOCK:
        password = _ROLE_PASSWORDS.get(cluster_admin_dsn)
        if password is None:
            password = _ROLE_PASSWORDS[cluster_admin_dsn] = "pw-" + secrets.token_hex(12)
            conn = psycopg2.connect(cluster_admin_dsn)
            try:
                conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ROLE,))
                    verb = "ALTER" if cur.fetchone() else "CREATE"
                    cur.execute(sql.SQL(verb + " ROLE {} LOGIN SUPERUSER REPLICATION PASSWORD %s").format(sql.Identifier(ROLE)),
                                (password,))
            finally:
                conn.close()
    parsed = urlparse(dsn)
    return parsed._replace(netloc=f"{ROLE}:{quote(password)}@{parsed.hostname}:{parsed.port}").geturl()


_ROLE_LOCK = threading.Lock()
_ROLE_PASSWORDS: dict[str, str] = {}  # cluster -> the role's password (one per cluster: runs share it)


class Sampler(threading.Thread):
    """Reads the stored positions (and the slot's confirmed LSN) every 50 ms; records every value seen."""

    def __init__(self, run: Run) -> None:
        super().__init__(name=f"sampler-{run.name}", daemon=True)
        self.run_ = run
        self.series: dict[str, list[tuple[float, int]]] = {}
        self._halt = threading.Event()
        self._conn = None

    def _add(self, name: str, value: int | None) -> None:
        if value is None:
            return
        values = self.series.setdefault(name, [])
        if not values or values[-1][1] != value:
            values.append((time.time(), value))

    def sample(self) -> None:
        from pgsource.state import FileStateStore, PollingOffset, SlotProgress

        run = self.run_
        store = FileStateStore(str(run.state_dir))
        try:
            if run.cdc:
                record = store.load(f"cdc/{run.slot}", SlotProgress)
                self._add("state lsn", record.lsn if record else None)
            else:
                record = store.load("polling/t", PollingOffset)
                self._add("state offset", int(record.position[0]) if record and record.position else None)
        except Exception:  # noqa: BLE001 - a state.dir being broken on purpose (scenario 9)
            pass
        if run.cdc:
            try:
                if self._conn is None:
                    self._conn = psycopg2.connect(run.admin_dsn, connect_timeout=3)
                    self._conn.autocommit = True
                with self._conn.cursor() as cur:
                    cur.execute("SELECT confirmed_flush_lsn - '0/0' FROM pg_replication_slots WHERE slot_name = %s",
                                (run.slot,))
                    row = cur.fetchone()
                self._add("slot confirmed_flush_lsn", int(row[0]) if row and row[0] is not None else None)
            except psycopg2.Error:
                if self._conn is not None:
                    self._conn.close()
                self._conn = None

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(0.05)

    def stop(self) -> None:
        self._halt.set()
        self.join(10)
        self.sample()
        if self._conn is not None:
            self._conn.close()

    def backward(self, allowed: list[tuple[float, float]]) -> list[str]:
        """Every step back, except those of ``allowed`` (name, from, to) windows."""
        problems = []
        for name, values in self.series.items():
            for (_, a), (t1, b) in zip(values, values[1:]):
                if b < a and not any(n == name and lo <= t1 <= hi for n, lo, hi in allowed):
                    problems.append(f"{name} went backward: {a} -> {b} at +{t1 - self.run_.started_at:.2f}s")
        return problems


class Run:
    """One scenario in one mode; see the module docstring."""

    def __init__(self, scenario: str, mode: str, root: Path, cluster: LocalPostgres | None, *,
                 own_cluster: bool = False, source: dict | None = None) -> None:
        self.scenario, self.mode = scenario, mode
        self.name = f"{scenario.split()[0]}-{mode}-{uuid.uuid4().hex[:6]}"
        self.dir = root / self.name
        self.dir.mkdir(parents=True)
        self.state_dir = self.dir / "state"
        self.cdc = mode.startswith("cdc")
        self.transport = mode.removeprefix("cdc-") if self.cdc else None
        self.slot = f"fault_{uuid.uuid4().hex[:10]}"
        self.started_at = time.time()
        self.own_cluster = own_cluster
        self.cluster = LocalPostgres(settings={"shared_buffers": "32MB"}).start() if own_cluster else cluster
        self.database = self.cluster.create_database()
        self.admin_dsn = self.cluster.dsn(self.database)
        self.dsn = with_password(self.admin_dsn, self.cluster.dsn())
        self.iggy_password = "iggy-" + secrets.token_hex(12)
        self.iggy = IggyStandIn(password=self.iggy_password).start()
        self.services: list[subprocess.Popen] = []
        self.service: subprocess.Popen | None = None
        self.writers: Writers | None = None
        self.fault_start: float | None = None
        self.fault_end: float | None = None
        self.iggy_down = False  # the fault is an Iggy outage: nothing may be stored inside it
        self.outage_end: float | None = None  # just before the outage was lifted (lifting())
        self.allowed_backward: list[tuple[str, float, float]] = []  # (series, from, to) a scenario explains
        self.expected_exit = 0  # what the last service of the run must end with
        self.stop_seconds: list[float] = []
        self.extra_source = source or {}
        self.sections: dict = {}
        self.log_path = self.dir / "pgsource.log"
        self.result = Result(scenario, mode)
        self.cleanups: list = []  # undone at close, last first (mounts)
        self.body_checks: list = []  # body -> problem text or None, for every stored message
        self.sampler = Sampler(self)
        self._cursor: dict[int, int] = {}  # how far received() decoded the stand-in's topic
        self._received: list = []
        self.schema_changes: list[dict] = []  # SCHEMA_CHANGE announcements: not rows, kept apart
        self.execute(TABLE_DDL)

    # -- database -----------------------------------------------------------------------------

    def execute(self, statement: str, params=None) -> None:
        conn = psycopg2.connect(self.admin_dsn)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(statement, params)
        finally:
            conn.close()

    def query(self, statement: str, params=None) -> list[tuple]:
        conn = psycopg2.connect(self.admin_dsn, connect_timeout=5)
        try:
            with conn.cursor() as cur:
                cur.execute(statement, params)
                return cur.fetchall()
        finally:
            conn.close()

    # -- the service ----------------------------------------------------------------------------

    def config_path(self, **source) -> Path:
        base = {
            "connection_string": self.dsn,
            "mode": "cdc" if self.cdc else "polling",
            "tables": ["t"],
            "poll_interval": "100ms",
            "batch_size": 100,
        }
        if self.cdc:
            base |= {"cdc_transport": self.transport, "replication_slot": self.slot, "publication_name": "fault_pub"}
        else:
            base |= {"tracking_column": "id"}
        config = {
            "source": {**base, **self.extra_source, **source},
            "iggy": {"address": self.iggy.address, "username": "iggy", "password": self.iggy_password,
                     "stream": STREAM, "topic": "{table}", "send_timeout": f"{SEND_TIMEOUT}s"},
            "state": {"dir": str(self.state_dir)},
            "supervisor": {"restart_backoff": "100ms", "stop_timeout": f"{STOP_TIMEOUT:g}s", "heartbeat_timeout": "20s",
                           "max_restarts": 5, "restart_window": "60s"},
            **self.sections,
        }
        path = self.dir / "pgsource.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    def start(self, **source) -> subprocess.Popen:
        self.service = start_service(self.config_path(**source), log_path=self.log_path)
        self.services.append(self.service)
        if not self.sampler.is_alive() and self.sampler.ident is None:
            self.sampler.start()
        return self.service

    def wait_capturing(self, timeout: float = 60) -> None:
        """The worker is up (polling: connected to PostgreSQL); CDC: the slot is created and its record
        stored, so what commits from now on is captured.

        Not merely "the slot shows in pg_replication_slots": it shows while PostgreSQL still looks
        for its consistent point, and transactions that commit meanwhile are not decoded."""
        if not self.cdc:
            wait(lambda: self.died() or self._child_connected_to(self.cluster.port), timeout, "the worker")
            self._check_alive()
            return
        from pgsource.state import FileStateStore, SlotProgress

        def created() -> bool:
            try:
                record = FileStateStore(str(self.state_dir)).load(f"cdc/{self.slot}", SlotProgress)
            except Exception:  # noqa: BLE001 - a state.dir broken on purpose
                return False
            return record is not None and record.lsn > 0 and bool(self.query(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (self.slot,)))

        wait(lambda: created() or self.died(), timeout, "the replication slot")
        self._check_alive()

    def died(self) -> bool:
        """The service in charge has exited."""
        return self.service is not None and self.service.poll() is not None

    def check_alive(self) -> None:
        self._check_alive()

    def _check_alive(self) -> None:
        if self.died():
            raise AssertionError(f"the service exited with {self.service.returncode}: {self.log_tail()}")

    def stop(self, expect: int = 0) -> None:
        """SIGTERM; the stop must end within stop_timeout + 5 s with ``expect``."""
        service = self.service
        started = time.monotonic()
        service.send_signal(signal.SIGTERM)
        try:
            code = service.wait(STOP_TIMEOUT + 5 + 10)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the service did not stop within {STOP_TIMEOUT + 15:.0f}s of SIGTERM") from None
        elapsed = time.monotonic() - started
        self.stop_seconds.append(elapsed)
        if code != expect:
            self.problem(f"the service stopped with exit code {code}, not {expect}: {self.log_tail()}")
        if elapsed > STOP_TIMEOUT + 5:
            self.problem(f"the graceful stop took {elapsed:.1f}s, more than stop_timeout + 5 s ({STOP_TIMEOUT + 5:g}s)")

    def wait_exit(self, expect: int, timeout: float) -> int:
        try:
            code = self.service.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the service still runs {timeout:.0f}s later (expected exit {expect})") from None
        if code != expect:
            raise AssertionError(f"the service exited with {code}, not {expect}: {self.log_tail()}")
        return code

    def kill(self) -> None:
        """kill -9 the whole service (its process group)."""
        try:
            os.killpg(self.service.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.service.wait(10)

    def children(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.service.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def _child_connected_to(self, port: int) -> int | None:
        for child in self.children():
            try:
                if any(c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
                       for c in child.net_connections(kind="tcp")):
                    return child.pid
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return None

    def worker_pid(self) -> int:
        """The worker: the child holding connections to PostgreSQL (the publisher holds Iggy's)."""
        return wait(lambda: self._child_connected_to(self.cluster.port), 30, "the worker process")

    def publisher_pid(self) -> int:
        return wait(lambda: self._child_connected_to(self.iggy.port), 30, "the publisher process")

    def backend_pids(self, application_name: str, active: bool = False) -> list[int]:
        state = " AND state = 'active'" if active else ""
        return [row[0] for row in self.query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s" + state, (application_name,))]

    def log_tail(self, lines: int = 15) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- load -----------------------------------------------------------------------------------

    def start_writers(self, writers: int = 5, **options) -> Writers:
        self.writers = Writers(self.dsn, writers=writers, transactions=None, seed=hash(self.name) & 0xFFFF,
                               updates=self.cdc, **options).start()
        return self.writers

    def count(self) -> int:
        return self.iggy.message_count(STREAM, TOPIC)

    def wait_messages(self, at_least: int, timeout: float = 60, what: str = "messages") -> None:
        wait(lambda: self.count() >= at_least or self.died(), timeout, f"{at_least} {what} in Iggy")
        self._check_alive()

    def begin_fault(self, iggy_down: bool = False) -> None:
        """The fault starts now; ``iggy_down``: Iggy cannot store anything until ``end_fault`` (then
        ``finish`` checks that it did not, and that rows were committed meanwhile: the outage was
        real, and the service had something to deliver through it)."""
        self.fault_start = time.time()
        self.iggy_down = iggy_down

    def lifting(self) -> None:
        """The outage is about to be lifted: what Iggy stores from now on is not inside it (what
        piled up is stored the moment it is lifted, maybe before ``end_fault`` gets the GIL back)."""
        self.outage_end = time.time()

    def end_fault(self) -> None:
        """The fault is over (recovery_s counts from here)."""
        self.fault_end = time.time()

    def wait_recovered(self, timeout: float = 90) -> None:
        """A message acknowledged after the fault ended (the writers keep writing meanwhile)."""
        end_us = self.fault_end * 1e6
        wait(lambda: self.died() or self.iggy.last_stored_at(STREAM, TOPIC) > end_us, timeout,
             "the first message after the fault")
        self._check_alive()

    def bodies(self) -> list[dict]:
        return [body for *_, body in self.received()]

    def problem(self, text: str) -> None:
        self.result.problems.append(text)

    # -- the end ----------------------------------------------------------------------------------

    def expected(self) -> tuple[set, set]:
        """(keys that must be in Iggy, keys that may be): rows from the table, and CDC's updates."""
        rows = {("row", r[0]) for r in self.query("SELECT id FROM t")}
        known = self.writers.committed if self.writers else set()
        missing_in_table = {k for k in known if ("row", k) not in rows}
        if missing_in_table:
            self.problem(f"the writers committed rows the table does not hold: {sorted(missing_in_table)[:10]}")
        must, may = set(rows), set(rows)
        if self.cdc and self.writers:
            must |= {("update", i, v) for i, v in self.writers.updates}
            may |= must | {("update", i, v) for i, v in self.writers.uncertain_updates}
        return must, may

    def received(self) -> list[tuple[int, tuple, bytes, object, dict]]:
        """(message id, key, what must repeat identically, message, body) of every stored message.

        Decoded once each (the runs' stand-ins share the test process's GIL with everything else:
        re-decoding 200,000 messages every half second slowed every run)."""
        new, self._cursor = self.iggy.messages_after(STREAM, TOPIC, self._cursor)
        out = self._received
        for message in new:
            body = json.loads(message.payload)
            data = body["data"] or {}
            operation = body["operation_type"]
            if operation == "SCHEMA_CHANGE":  # source.schema_change_events: tests/*/test_schema_changes.py
                self.schema_changes.append(body)
                continue
            if operation == "UPDATE":
                key = ("update", data["id"], data["v"])
            elif operation == "SELECT" and self.cdc:  # a snapshot row: its id comes from its content
                key = ("snapshot", data["id"], data["v"])
            else:
                key = ("row", data["id"])
            # polling (and a snapshot) re-reads a row as it is now: same id, a new read timestamp (and
            # in polling maybe newer data); a CDC change is re-sent byte for byte
            if not self.cdc:
                same = b""
            elif operation == "SELECT":
                same = json.dumps(data, sort_keys=True).encode()
            else:
                same = message.payload
            out.append((message.id, key, same, message, body))
        return out

    def wait_complete(self, timeout: float = 120) -> None:
        must, _ = self.expected()

        def complete() -> bool:
            if self.count() < len(must):
                return False
            return must <= covered({key for _, key, *_ in self.received()})

        try:
            wait(complete, timeout, f"all {len(must)} committed rows and changes in Iggy", interval=0.5)
        except AssertionError as exc:
            self.problem(str(exc))

    def finish(self) -> Result:
        """Stop the load, let everything arrive, stop the service, check the four things."""
        result = self.result
        if self.writers is not None:
            self.writers.stop()
        if self.service is not None and self.service.poll() is None:
            self.wait_complete()
            self.stop(self.expected_exit)
        elif self.service is not None and self.service.returncode != self.expected_exit:
            self.problem(f"the service ended with exit code {self.service.returncode}, not {self.expected_exit}")
        self.sampler.stop()
        must, may = self.expected()
        messages = self.received()
        ids_of: dict[tuple, set[int]] = {}
        keys_of: dict[int, set[tuple]] = {}
        bytes_of: dict[int, set[bytes]] = {}
        for message_id, key, same, _, body in messages:
            for check in self.body_checks:
                text = check(body)
                if text and len(self.result.problems) < 20:
                    self.problem(text)
            ids_of.setdefault(key, set()).add(message_id)
            keys_of.setdefault(message_id, set()).add(key)
            bytes_of.setdefault(message_id, set()).add(same)
        got = covered(set(ids_of))
        lost = must - got
        result.written = len(must)
        result.received = len(messages)
        result.duplicates = len(messages) - len(keys_of)
        result.lost = len(lost)
        if lost:
            self.problem(f"{len(lost)} committed rows/changes not in Iggy, e.g. {sorted(lost)[:8]} (see {self.dir})")
            with open(self.dir / "received.txt", "w") as out:
                for message_id, key, _, message, _ in messages:
                    out.write(f"{message.partition} {message.offset} {message.timestamp} {message_id:#x} {key} {message.headers}\n")
        invented = {k for k in got if k not in may and k[0] != "snapshot"}
        if invented:
            self.problem(f"{len(invented)} rows/changes in Iggy that were never committed, e.g. {sorted(invented)[:8]}")
        twice = {key: ids for key, ids in ids_of.items() if len(ids) > 1}
        if twice:
            self.problem(f"{len(twice)} rows/changes under two message ids, e.g. {list(twice.items())[:3]}")
        shared = {mid: keys for mid, keys in keys_of.items() if len(keys) > 1}
        if shared:
            self.problem(f"{len(shared)} message ids carry different rows/changes, e.g. {list(shared.items())[:3]}")
        changed = [mid for mid, payloads in bytes_of.items() if len(payloads) > 1]
        if changed:
            self.problem(f"{len(changed)} re-sent CDC messages differ from their first copy (ids {changed[:3]})")
        self.problems_backward()
        self.problems_vacuous(messages)
        if self.fault_end is not None:
            after = [m.timestamp for _, _, _, m, _ in messages if m.timestamp > self.fault_end * 1e6]
            result.recovery_s = (min(after) / 1e6 - self.fault_end) if after else None
            if not after:
                self.problem("no message was acknowledged after the fault ended")
        self.check_secrets()
        result.seconds = time.time() - self.started_at
        return result

    def problems_vacuous(self, messages: list) -> None:
        """A run that proves nothing fails: no load, or an outage that did not happen."""
        if self.result.written == 0:
            self.problem("no row was written: the run proves nothing")
        if self.writers is not None and self.writers.transactions == 0:
            self.problem("the writers committed no transaction")
        if self.fault_end is None:
            self.problem("the scenario never ended its fault (end_fault)")
        if self.iggy_down and self.outage_end is None:
            self.problem("the scenario never said when its outage was lifted (lifting)")
        if self.iggy_down and self.fault_start is not None and self.outage_end is not None:
            lo, hi = self.fault_start + 0.5, self.outage_end  # what was under way at the start may land
            inside = [m for _, _, _, m, _ in messages if lo * 1e6 < m.timestamp < hi * 1e6]
            if inside:
                self.problem(f"Iggy stored {len(inside)} messages during the outage: the fault did not take effect")
            commits = [t for t in (self.writers.commit_times if self.writers else []) if self.fault_start < t < hi]
            if not commits:
                self.problem("no transaction committed during the outage: nothing was at risk")

    def problems_backward(self) -> None:
        for text in self.sampler.backward(self.allowed_backward):
            self.problem(text)
        if not self.sampler.series:
            self.problem("no position was ever stored")

    def check_secrets(self) -> None:
        passwords = [p for p in (urlparse(self.dsn).password, self.iggy_password) if p]
        logs = [self.log_path, *self.dir.glob("*.log")]
        for path in set(logs):
            if not path.exists():
                continue
            text = path.read_text(errors="replace")
            for password in passwords:
                if password in text:
                    self.problem(f"{path.name} contains a password the configuration carries")

    def close(self) -> None:
        """Whatever the run left: services, writers, the stand-in, the database or cluster."""
        for undo in reversed(self.cleanups):
            try:
                undo()
            except Exception:  # noqa: BLE001 - cleanup of a run that already failed
                pass
        for service in self.services:
            if service.poll() is None:
                try:
                    os.killpg(service.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                service.wait(10)
        if self.sampler.is_alive():
            self.sampler.stop()
        self.iggy.stop()
        try:
            if self.own_cluster:
                self.cluster.stop()
            else:
                self.cluster.drop_database(self.database)
        except Exception:  # noqa: BLE001 - cleanup of a run that already failed
            pass


def covered(keys: set) -> set:
    """``keys`` plus what its snapshot rows stand for: a row arrives by INSERT or in a snapshot, and
    an update made before the snapshot's consistent point arrives as the snapshot's row version."""
    snapshots: dict[int, int] = {}
    for key in keys:
        if key[0] == "snapshot":
            snapshots[key[1]] = max(snapshots.get(key[1], -1), key[2])
    return keys | {("row", row) for row in snapshots} | {
        ("update", row, v) for row, newest in snapshots.items() for v in range(1, newest + 1)}


def wait(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
