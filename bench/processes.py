"""What pgsource's processes cost: RSS and CPU of the process tree (and its PostgreSQL backends), and ``--profile``."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import psutil
import psycopg2

from bench.database import rows_of

REPO = Path(__file__).resolve().parent.parent
PROFILE_DIR = ""  # --profile: cProfile every pgsource process, .prof files here
PGSOURCE_BACKENDS = "SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'pgsource-%'"


def profile_into(directory: str) -> None:
    """``--profile DIR``: every pgsource process started from now on writes its .prof files under DIR."""
    global PROFILE_DIR
    PROFILE_DIR = os.path.abspath(directory)
    os.makedirs(PROFILE_DIR, exist_ok=True)


def with_profiler(env: dict, name: str) -> dict:
    """``env`` for a pgsource process tree, cProfiled into ``PROFILE_DIR/name`` when profiling (skews every figure)."""
    if PROFILE_DIR:
        out = os.path.join(PROFILE_DIR, name)
        os.makedirs(out, exist_ok=True)
        env["BENCH_CPROFILE_DIR"] = out
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "bench" / "cprofile"), env["PYTHONPATH"]])
    return env


def pgsource_backends(dsn: str) -> list[int]:
    """pids of the PostgreSQL backends that serve pgsource's connections (same machine)."""
    try:
        return [pid for (pid,) in rows_of(dsn, PGSOURCE_BACKENDS)]
    except psycopg2.Error:
        return []


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
