"""The pgsource service as users run it (``python -m workers.cli run --config FILE``), one per measurement."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from bench.iggy_target import IggyView
from bench.processes import REPO, ProcessTreeSampler, with_profiler
from bench.table import TABLE


class Service:
    """``python -m workers.cli run --config FILE`` with a config written for one measurement."""

    def __init__(self, workdir: str, source: dict, view: IggyView, stream: str, workers=1, **extra) -> None:
        os.makedirs(workdir, exist_ok=True)
        self.state_dir = os.path.join(workdir, "state")
        target = view.target
        iggy = {"address": target.address, "username": target.username, "password": target.password,
                "stream": stream, "topic": "{table}"}
        if target.precreate:
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
        env = with_profiler(env, os.path.basename(os.path.dirname(self.config_path)))
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

    def figures(self, view: IggyView, stream: str, rows: int, started: float, done: float, iggy_cpu: float) -> dict:
        """The figures of a finished run of ``rows`` rows into ``stream`` (dropped from Iggy afterwards)."""
        delivered = view.count(stream, TABLE)
        view.drop(stream)
        return {
            "seconds": done - started,
            "rows_per_s": rows / (done - started),
            "delivered": delivered,
            "peak_rss_mb": self.sampler.peak_rss / 2**20,
            "cpu_s_per_m_rows": self.sampler.cpu_seconds / rows * 1e6,
            "iggy_cpu_s_per_m_rows": (view.target.cpu_seconds() - iggy_cpu) / rows * 1e6,
        }

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


def wait_until(predicate, service: Service, timeout: float, what: str, interval: float = 0.02) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.perf_counter()
        service.check_alive()
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what} (log: {service.log_path})")
