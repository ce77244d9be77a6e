"""The fault matrix's scenarios (issue 12): each injects one fault into a running pipeline.

A scenario gets a ``Run`` (``tests/faults/harness.py``) with its service, database and stand-in,
drives the load, injects the fault, ends it (``run.end_fault()``: recovery_s counts from there)
and leaves the checks to ``Run.finish``. Outages last a few seconds (the issue's 30 s, sized for
CI); the sleeps below are the length of a fault or of a load phase, never a wait for something to
happen (those wait on a condition).
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

import psutil

from tests.faults.harness import MODES, Run, wait
from tests.support import batch_channel_fill

OUTAGE = 3.0  # seconds an outage lasts (the "30 s", sized for CI)
ORPHAN_GRACE = 15.0  # seconds the children of a killed supervisor may take to notice and exit


@dataclass(frozen=True)
class Scenario:
    name: str
    inject: Callable[[Run], None]
    modes: tuple[str, ...] = MODES
    own_cluster: bool = False  # PostgreSQL itself is restarted: not on the shared cluster
    weight: int = 1  # rough cost (tens of seconds): the pool starts the heaviest runs first


def begin(run: Run, writers: int = 5, **source) -> None:
    """The service running, the slot capturing, writers committing out of order, messages arriving."""
    run.start(**source)
    run.wait_capturing()
    run.start_writers(writers)
    run.wait_messages(20, what="first messages")


def settle(run: Run) -> None:
    """After the fault: a message acknowledged after it, and a moment more of load."""
    run.wait_recovered()
    time.sleep(0.5)  # the load goes on a little past the recovery


# -- 1-3: processes killed -----------------------------------------------------------------------


def kill_worker(run: Run) -> None:
    begin(run)
    run.iggy.set_latency(0.1)  # acks lag: the worker has batches in flight when it dies
    time.sleep(0.7)
    victim = run.worker_pid()
    os.kill(victim, signal.SIGKILL)
    run.begin_fault()
    run.iggy.set_latency(0)
    run.end_fault()
    wait(lambda: run.worker_pid() != victim, 60, "a new worker")
    settle(run)


def kill_publisher(run: Run) -> None:
    begin(run)
    run.iggy.set_latency(0.2)  # a send in flight when it dies
    time.sleep(0.7)
    victim = run.publisher_pid()
    os.kill(victim, signal.SIGKILL)
    run.begin_fault()
    run.iggy.set_latency(0)
    run.end_fault()
    wait(lambda: run.publisher_pid() != victim, 60, "a new publisher")
    settle(run)


def kill_worker_mid_block(run: Run) -> None:
    """kill -9 while the worker's block is half written into the batch channel: Iggy answers each call
    after half a second, so the shared ring and the pipe fill behind the publisher (a whole second, with
    send_timeout 1.5 s, made one late answer on a loaded machine unrecoverable: a reconnect's login and
    the send then took 2 s, every attempt timed out, and the pipe never filled); 8,000 rows of 2 KB (blocks
    of 2 MB, more than a ring slot: they cross the pipe) are being read when the pipe is full and the
    worker dies inside its write. The half block is never sent (the stand-in checks every frame of
    every batch), the pipeline restarts on fresh channels, and every committed row arrives."""
    begin(run, batch_size=1000)
    run.iggy.set_latency(0.5)
    run.execute("INSERT INTO t (writer, note) SELECT 98, repeat('x', 2000) FROM generate_series(1, 8000)")
    publisher, victim = run.publisher_pid(), run.worker_pid()

    def kill_when_full():  # at once: the publisher may read a block off the pipe between two looks
        fill = batch_channel_fill(publisher)
        if fill is not None and fill[0] > fill[1] - 4096:
            os.kill(victim, signal.SIGKILL)
            return fill
        return None

    fill = wait(lambda: kill_when_full() or run.died(), 60, "the batch channel's pipe to be full", interval=0.01)
    if fill is True:  # the service died first: reported below and by the run's checks
        fill = None
    run.begin_fault()
    if fill is None:
        run.problem(f"the pipe was not full when the worker was killed ({fill}): no block was half written")
    run.iggy.set_latency(0)
    run.end_fault()
    wait(lambda: run.worker_pid() != victim, 60, "a new worker")
    settle(run)
    if "restarting the publisher and every worker on fresh queues" not in run.log():
        run.problem("the pipeline was not restarted on fresh channels after the worker died mid-block")


def kill_supervisor(run: Run) -> None:
    """No child outlives its supervisor holding the slot or a lock; a restart resumes."""
    begin(run)
    children = run.children()
    pids = {child.pid for child in children}
    run.service.kill()  # SIGKILL the supervisor alone
    if run.service.wait(10) != -signal.SIGKILL:
        run.problem(f"the supervisor ended with {run.service.returncode}, not by SIGKILL")
    run.begin_fault()

    def gone() -> bool:
        return not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]

    try:
        wait(gone, ORPHAN_GRACE, "the children of the killed supervisor to exit")
    except AssertionError:
        left = [f"{c.pid} {' '.join(c.cmdline()[-2:])}" for c in children if c.is_running()]
        run.problem(f"orphans of the killed supervisor still run after {ORPHAN_GRACE:.0f}s: {left}")
        for child in children:
            if child.is_running():
                child.kill()
    backends = run.query("SELECT pid, application_name, state FROM pg_stat_activity"
                         " WHERE application_name LIKE 'pgsource-%%' AND datname = current_database()")
    if backends:
        run.problem(f"backends of the killed service are still connected: {backends}")
    if run.cdc:
        active = run.query("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s AND active", (run.slot,))
        if active:
            run.problem(f"the slot is still held (active_pid {active[0][0]}) after the service died")
    locks = run.query("SELECT pid, locktype, mode FROM pg_locks WHERE pid = ANY(%s)", (list(pids),))
    if locks:
        run.problem(f"locks held by the dead service's processes: {locks}")
    run.start()
    run.end_fault()
    run.wait_capturing()
    settle(run)


# -- 4-6: Iggy -----------------------------------------------------------------------------------


def iggy_restart(run: Run) -> None:
    begin(run)
    accepted = run.iggy.connections_accepted()
    run.begin_fault()
    run.iggy.restart(keep_data=True)
    run.end_fault()
    settle(run)
    if run.iggy.connections_accepted() <= accepted:
        run.problem("the publisher never connected again after Iggy restarted: the restart did not reach it")


def iggy_unreachable(run: Run) -> None:
    begin(run)
    accepted = run.iggy.connections_accepted()
    run.begin_fault(iggy_down=True)
    run.iggy.refuse_connections(True)
    run.iggy.drop_connections()
    time.sleep(OUTAGE)
    run.lifting()
    run.iggy.refuse_connections(False)
    run.end_fault()
    settle(run)
    if run.iggy.connections_accepted() <= accepted:
        run.problem("the publisher never connected again after the outage")


def iggy_frozen(run: Run) -> None:
    """Connections are accepted, nothing is answered: every call ends in send_timeout and a retry."""
    begin(run)
    run.begin_fault(iggy_down=True)
    run.iggy.freeze(True)
    time.sleep(OUTAGE)
    run.lifting()
    run.iggy.freeze(False)
    run.end_fault()
    settle(run)


# -- 7-8: PostgreSQL -----------------------------------------------------------------------------


def pg_restart(mode: str) -> Callable[[Run], None]:
    def inject(run: Run) -> None:
        begin(run)
        # PostgreSQL 15 writes a logical slot's confirmed_flush_lsn to disk only when the slot is
        # dirty for another reason (its restart_lsn or catalog_xmin moved), even at a shutdown
        # checkpoint (fixed in 17): after any restart the slot may resume a little earlier, and
        # pgsource re-sends those changes with their ids. pgsource's own record must not go back.
        run.allowed_backward.append(("slot confirmed_flush_lsn", time.time(), time.time() + 3600))
        started = run.query("SELECT pg_postmaster_start_time()")[0][0]
        run.begin_fault()
        run.cluster.stop_server(mode)
        time.sleep(OUTAGE)
        run.cluster.start_server()
        run.end_fault()
        if run.query("SELECT pg_postmaster_start_time()")[0][0] <= started:
            run.problem("PostgreSQL did not restart")
        settle(run)

    return inject


def terminate_backend(run: Run) -> None:
    """pg_terminate_backend of the worker's backend while it runs a statement (a read, a peek)."""
    begin(run)

    def terminated() -> bool:
        return any(ok for ok, in run.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                                           " WHERE application_name = 'pgsource-worker-0' AND state = 'active'"))

    run.begin_fault()
    wait(terminated, 30, "the worker's backend running a statement", interval=0.002)
    run.end_fault()
    settle(run)


def terminate_walsender(run: Run) -> None:
    begin(run)
    run.begin_fault()
    ended = run.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                      " WHERE application_name = 'pgsource-worker-0-wal' AND backend_type = 'walsender'")
    if not any(ok for ok, in ended):
        run.problem("no walsender of the worker was terminated")
    run.end_fault()
    settle(run)


# -- 9: state.dir ------------------------------------------------------------------------------


def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"mount {' '.join(args)}: exit {done.returncode}: {done.stderr.strip()}"


def _umount(path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def _broken_state_dir(run: Run, break_it: Callable[[], None], repair: Callable[[], None], reason: str) -> None:
    """At commit time the state.dir fails: the service stops with exit 7 naming the file, the stored
    position stays what it was, and a restart once it is repaired loses nothing."""
    begin(run)
    before = dict(run.sampler.series)
    break_it()
    broken_at = time.time()
    try:
        run.wait_exit(7, 60)
    finally:
        repair()
    log = run.log()
    if f"cannot write state file {run.state_dir}/" not in log or reason not in log:
        run.problem(f"the log does not say which state file could not be written, and why ({reason!r})")
    run.sampler.sample()
    for name, values in run.sampler.series.items():
        kept = [v for t, v in values if t <= broken_at]
        if name.startswith("state") and before.get(name) and kept and values[-1][1] < kept[-1]:
            run.problem(f"{name} lost its position: {kept[-1]} -> {values[-1][1]}")
    run.start()
    run.end_fault()
    run.wait_capturing()
    settle(run)


def state_dir_full(run: Run) -> None:
    run.state_dir.mkdir()
    _mount("-t", "tmpfs", "-o", "size=256k", "tmpfs", str(run.state_dir))
    run.cleanups.append(lambda: _umount(run.state_dir))
    filler = run.state_dir / "filler"

    def fill() -> None:
        with open(filler, "wb", buffering=0) as out:
            try:
                while True:
                    out.write(b"\0" * 4096)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc

    _broken_state_dir(run, fill, lambda: filler.unlink(), "No space left on device")


def state_dir_read_only(run: Run) -> None:
    """A read-only bind mount of the state.dir stacked onto it while the service runs.

    Not ``remount,ro`` of a mount the service uses: the kernel refuses that (EBUSY) while a file
    on it is open for writing, and the service holds ``.pgsource.lock`` open. The stacked mount
    has no writers; every path under the state.dir resolves through it from then on."""
    run.state_dir.mkdir()
    mounted = []

    def break_it() -> None:
        _mount("--bind", str(run.state_dir), str(run.state_dir))
        mounted.append(run.state_dir)
        run.cleanups.append(lambda: mounted and _umount(run.state_dir))
        _mount("-o", "remount,bind,ro", str(run.state_dir))
        probe = run.state_dir / ".probe"
        try:
            probe.write_text("x")
        except OSError as exc:
            assert exc.errno == errno.EROFS, exc
        else:
            raise AssertionError("the state.dir is still writable after the read-only mount")

    def repair() -> None:
        if mounted:
            subprocess.run(["umount", str(run.state_dir)], check=True, capture_output=True, timeout=30)
            mounted.clear()

    _broken_state_dir(run, break_it, repair, "Read-only file system")


# -- 10: SIGTERM -------------------------------------------------------------------------------


def _terminate_mid_way(run: Run, total: int) -> None:
    """SIGTERM while part of the ``total`` rows is acknowledged: a graceful stop within the grace
    period (exit 0), then a restart delivers the rest."""
    base = run.count()
    wait(lambda: run.count() > base + 100 or run.died(), 120, "the large batch under way", interval=0.01)
    if run.count() >= base + total:
        run.problem("the large batch was delivered before SIGTERM could interrupt it")
    run.iggy.set_latency(0)
    run.stop(0)
    run.start(batch_size=100)
    run.end_fault()
    run.wait_capturing()
    settle(run)


def sigterm_large_batch(run: Run) -> None:
    """A batch of 10,000 rows (polling: a bulk of new rows; CDC: one 40,000-row transaction)."""
    run.start(batch_size=10_000)
    run.wait_capturing()
    run.start_writers(3)
    run.wait_messages(5, what="first messages")
    run.iggy.set_latency(0.5)  # each large send takes a while to be acknowledged
    run.execute("INSERT INTO t (writer) SELECT 99 FROM generate_series(1, 40000)")
    _terminate_mid_way(run, 40_000)


def sigterm_initial_snapshot(run: Run) -> None:
    """CDC: SIGTERM while the initial snapshot is sent (the next start sends it again, then streams);
    polling: while the first read of a filled table is sent."""
    run.execute("INSERT INTO t (writer) SELECT 98 FROM generate_series(1, 30000)")
    run.iggy.set_latency(0.05)
    run.start(snapshot="initial", batch_size=1000) if run.cdc else run.start(batch_size=1000)
    run.start_writers(3)
    _terminate_mid_way(run, 30_000)


# -- 11: DDL -------------------------------------------------------------------------------------

DDL_STEPS = (
    ("add", "ALTER TABLE t ADD COLUMN added text DEFAULT 'a'"),
    ("rename", "ALTER TABLE t RENAME COLUMN note TO remark"),
    ("type", "ALTER TABLE t ALTER COLUMN amount TYPE text"),
    ("drop", "ALTER TABLE t DROP COLUMN gone"),
)


def _shape_after(step: str) -> dict:
    """What a row written after ``step`` (and every step before it) carries."""
    shape = {"note": "n", "amount": 7, "gone": "g", "blob": "AQ=="}
    for name, _ in DDL_STEPS:
        if name == "add":
            shape["added"] = "a"
        elif name == "rename":
            shape["remark"] = shape.pop("note")
        elif name == "type":
            shape["amount"] = "7"
        elif name == "drop":
            del shape["gone"]
        if name == step:
            return shape
    return shape


def ddl_while_running(run: Run) -> None:
    """A column added, renamed, its type changed, one dropped, while writers write: rows written
    after each change arrive with it, and no value is dropped (a bytea column makes polling name its
    columns instead of ``row_to_json(t)``)."""
    run.execute("ALTER TABLE t ADD COLUMN blob bytea DEFAULT '\\x01'")
    begin(run)
    marks = []
    for step, statement in DDL_STEPS:
        run.execute(statement)
        after = run.query("SELECT last_value FROM t_id_seq")[0][0]  # ids taken later: rows written after it
        marks.append((step, after))
        run.end_fault()
        wait(lambda a=after: any(m["data"]["id"] > a for m in run.bodies()[-50:]) or run.died(), 60,
             f"a row written after {step}", interval=0.2)
        run.check_alive()

    def check(body: dict) -> str | None:
        """A row whose id was taken after step k's mark was written after step k (maybe after later
        steps too: a mark is read once its step committed): it has one of those shapes, all values."""
        data = body["data"] or {}
        for index in range(len(marks) - 1, -1, -1):
            step, after = marks[index]
            if data.get("id", 0) > after:
                shapes = [_shape_after(later) for later, _ in marks[index:]]
                got = {k: v for k, v in data.items() if k not in ("id", "writer", "v")}
                if got not in shapes:
                    return f"row {data.get('id')} written after {step}: {got}; expected one of {shapes}"
                return None
        return None

    run.body_checks.append(check)
    settle(run)
    if run.cdc:  # source.schema_change_events: each step announced before its first row (replays repeat one)
        announced = {tuple((c["name"], c["type"]) for c in body["data"]["columns"]) for body in run.schema_changes}
        if len(announced) != len(DDL_STEPS):
            run.problem(f"{len(announced)} shape(s) announced for {len(DDL_STEPS)} DDL steps: {sorted(announced)}")


# -- 12: a 200,000-row transaction ---------------------------------------------------------------


def big_transaction_killed(run: Run) -> None:
    begin(run, batch_size=1000)
    base = run.count()
    run.execute("INSERT INTO t (writer) SELECT 97 FROM generate_series(1, 200000)")
    wait(lambda: run.count() > base + 20_000 or run.died(), 120, "the transaction's rows under way", interval=0.01)
    if run.count() >= base + 200_000:
        run.problem("the transaction was delivered before kill -9 could interrupt it")
    run.kill()
    run.start(batch_size=1000)
    run.end_fault()
    run.wait_capturing()
    settle(run)


SCENARIOS = (
    Scenario("1 kill -9 worker", kill_worker),
    Scenario("2 kill -9 publisher", kill_publisher),
    Scenario("3 kill -9 supervisor", kill_supervisor),
    Scenario("4 Iggy restart", iggy_restart),
    Scenario("5 Iggy unreachable", iggy_unreachable),
    Scenario("6 Iggy frozen", iggy_frozen),
    Scenario("7 PostgreSQL restart fast", pg_restart("fast"), own_cluster=True, weight=2),
    Scenario("7 PostgreSQL restart immediate", pg_restart("immediate"), own_cluster=True, weight=2),
    Scenario("8 terminate backend", terminate_backend, modes=("polling", "cdc-sql")),
    Scenario("8 terminate walsender", terminate_walsender, modes=("cdc-replication",)),
    Scenario("9 state.dir full", state_dir_full, weight=2),
    Scenario("9 state.dir read-only", state_dir_read_only, weight=2),
    Scenario("10 SIGTERM large batch", sigterm_large_batch, weight=3),
    Scenario("10 SIGTERM initial snapshot", sigterm_initial_snapshot, weight=3),
    Scenario("11 DDL while running", ddl_while_running),
    Scenario("12 200k-row transaction, kill -9", big_transaction_killed, weight=6),
    Scenario("13 kill -9 worker mid-block", kill_worker_mid_block, weight=2),
)
