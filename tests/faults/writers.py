"""Writers that commit out of order, for the late-commit tests and the fault matrix.

Several sessions insert rows into one table (``id bigserial``) and commit them out of the order
they took their ids in: random delays between insert and commit, savepoints (some rolled back),
plain rollbacks, prepared (2PC) transactions committed later from another session, and updates of
rows they committed earlier (CDC changes). They run for a number of transactions each, or until
``stop()``, and survive what the fault matrix does to PostgreSQL (restarts, terminated backends):
a transaction whose COMMIT got no answer is *uncertain* (it may or may not have committed); the
table itself says which rows exist at the end.
"""

from __future__ import annotations

import random
import threading
import time

import psycopg2
from psycopg2 import sql

_LOST = (psycopg2.OperationalError, psycopg2.InterfaceError)


class Writers:
    """``writers`` sessions writing ``table``; ``committed`` ids and ``updates`` (id, v) known committed."""

    def __init__(self, dsn: str, writers: int = 6, transactions: int | None = 12, seed: int = 7, *,
                 table: str = "t", updates: bool = False, pace: float = 1.0) -> None:
        self.dsn = dsn
        self.table = table
        self.updates_enabled = updates
        self.pace = pace  # scales every pause: < 1 writes faster
        self.committed: set[int] = set()
        self.updates: set[tuple[int, int]] = set()  # (id, v) of committed UPDATEs
        self.uncertain_updates: set[tuple[int, int]] = set()  # their COMMIT got no answer
        self.commit_times: list[float] = []  # when each known-committed transaction's COMMIT returned
        self.transactions = 0
        self.lock = threading.Lock()
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._timers: list[threading.Thread] = []
        self.threads = [
            threading.Thread(target=self._run, args=(index, transactions, random.Random(seed + index)),
                             name=f"writer-{index}", daemon=True)
            for index in range(writers)
        ]

    def start(self) -> Writers:
        for thread in self.threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Finish the transaction in progress and stop; prepared transactions still get committed."""
        self._stop.set()
        self.join()

    def join(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.1, deadline - time.monotonic()))
        for thread in self._timers:  # complete once the writers that start them are done
            thread.join(max(0.1, deadline - time.monotonic()))
        alive = [t.name for t in [*self.threads, *self._timers] if t.is_alive()]
        assert not alive, f"writers still running: {alive}"
        assert not self.errors, self.errors

    # -- one writer ----------------------------------------------------------------------------

    def _sleep(self, rng: random.Random, low: float, high: float) -> None:
        time.sleep(rng.uniform(low, high) * self.pace)

    def _insert(self, cur, writer: int, rows: int) -> list[int]:
        cur.execute(sql.SQL("INSERT INTO {} (writer) SELECT %s FROM generate_series(1, %s) RETURNING id")
                    .format(sql.Identifier(self.table)), (writer, rows))
        return [row[0] for row in cur.fetchall()]

    def _update(self, cur, own: list[int], rng: random.Random) -> tuple[int, int] | None:
        cur.execute(sql.SQL("UPDATE {} SET v = v + 1 WHERE id = %s RETURNING id, v").format(sql.Identifier(self.table)),
                    (rng.choice(own),))
        row = cur.fetchone()
        return (row[0], row[1]) if row else None

    def _connect(self):
        """A session, retried while PostgreSQL is away (a restart in the fault matrix)."""
        deadline = time.monotonic() + 90
        while True:
            try:
                conn = psycopg2.connect(self.dsn, connect_timeout=5, application_name="fault-writer")
                conn.cursor().execute("SET lock_timeout = '20s'")
                conn.commit()
                return conn
            except _LOST:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def _run(self, writer: int, transactions: int | None, rng: random.Random) -> None:
        try:
            conn = self._connect()
            own: list[int] = []  # this writer's committed rows (only it updates them: no conflicts)
            n = 0
            while (transactions is None or n < transactions) and not self._stop.is_set():
                n += 1
                try:
                    self._transaction(conn, writer, n, rng, own)
                except _LOST:
                    conn.close()
                    conn = self._connect()
            conn.close()
        except BaseException as exc:  # noqa: BLE001 - reported by join()
            self.errors.append(exc)

    def _transaction(self, conn, writer: int, n: int, rng: random.Random, own: list[int]) -> None:
        cur = conn.cursor()
        self._sleep(rng, 0, 0.15)
        ids = self._insert(cur, writer, rng.randint(1, 3))
        updated = None
        if self.updates_enabled and own and rng.random() < 0.25:
            updated = self._update(cur, own, rng)
        self._sleep(rng, 0, 0.4)  # others commit later rows meanwhile
        if rng.random() < 0.3:  # a savepoint: its rows belong to the top transaction
            cur.execute("SAVEPOINT s")
            inner = self._insert(cur, writer, 2)
            if rng.random() < 0.5:
                cur.execute("ROLLBACK TO SAVEPOINT s")
            else:
                cur.execute("RELEASE SAVEPOINT s")
                ids += inner
            self._sleep(rng, 0, 0.2)
        if writer == 0 and n % 4 == 1:  # 2PC: prepared, then committed from another session later
            gid = f"late-{id(self):x}-{writer}-{n}"
            timer = threading.Thread(target=self._commit_prepared, args=(gid, ids, updated, rng.uniform(0.3, 1.0)),
                                     name=f"commit-{gid}", daemon=True)
            try:
                cur.execute("PREPARE TRANSACTION %s", (gid,))
                conn.commit()  # ends the client-side transaction block (the xact is now prepared)
            finally:  # also when PREPARE got no answer: it may have been prepared, and must end
                self._timers.append(timer)
                timer.start()
            return
        if rng.random() < 0.15:
            conn.rollback()
            return
        try:
            conn.commit()
        except _LOST:
            if updated is not None:
                with self.lock:
                    self.uncertain_updates.add(updated)
            raise
        own.extend(ids)
        with self.lock:
            self.committed.update(ids)
            self.transactions += 1
            self.commit_times.append(time.time())
            if updated is not None:
                self.updates.add(updated)

    def _commit_prepared(self, gid: str, ids: list[int], updated, delay: float) -> None:
        time.sleep(delay)
        try:
            deadline = time.monotonic() + 90
            seen = False  # it was prepared: once gone, it committed (nobody here rolls one back)
            while True:
                try:
                    conn = psycopg2.connect(self.dsn, connect_timeout=5, application_name="fault-writer")
                    try:
                        conn.autocommit = True
                        cur = conn.cursor()
                        cur.execute("SELECT 1 FROM pg_prepared_xacts WHERE gid = %s", (gid,))
                        if cur.fetchone() is not None:
                            seen = True
                            cur.execute("COMMIT PREPARED %s", (gid,))
                    finally:
                        conn.close()
                    break
                except _LOST:  # PostgreSQL is restarting: the prepared transaction survives it
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            if not seen:  # PREPARE itself got no answer and did not happen
                return
            with self.lock:
                self.committed.update(ids)
                self.transactions += 1
                self.commit_times.append(time.time())
                if updated is not None:
                    self.updates.add(updated)
        except BaseException as exc:  # noqa: BLE001
            self.errors.append(exc)
