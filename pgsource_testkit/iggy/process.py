"""The Iggy stand-in in its own OS process, so that its work does not share a GIL.

A stand-in for tests and local use, not an Iggy server. Readers in the parent see
its data only through the SDK (``get_topic(...).messages_count``, polling).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[3])


class IggyStandInProcess:
    """Spawns ``python -m pgsource_testkit.iggy`` and waits until it listens."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, username: str = "iggy", password: str = "iggy"
    ) -> None:
        self._argv = [
            sys.executable,
            "-m",
            "pgsource_testkit.iggy",
            "--host",
            host,
            "--port",
            str(port),
            "--username",
            username,
            "--password",
            password,
        ]
        self._proc: subprocess.Popen | None = None
        self._address = ""

    def start(self, timeout: float = 30.0) -> IggyStandInProcess:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH", "")) if p)
        self._proc = subprocess.Popen(self._argv, stdout=subprocess.PIPE, env=env, text=True)
        line = self._proc.stdout.readline().strip()
        if not line:
            code = self._proc.wait(timeout)
            raise RuntimeError(f"the Iggy stand-in process exited ({code}) before listening")
        self._address = line
        return self

    @property
    def address(self) -> str:
        return self._address

    @property
    def port(self) -> int:
        return int(self._address.rsplit(":", 1)[1])

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL and reap."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()

    def __enter__(self) -> IggyStandInProcess:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
