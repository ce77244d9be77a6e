"""A real ``iggy-server`` process the real-server suite controls: start, stop, restart, freeze.

Given the server's binary (``PGSOURCE_TEST_IGGY_SERVER=/path/to/iggy-server``), the suite
runs its own instances on loopback: a throw-away data directory, all four listeners
(TCP, HTTP, QUIC, WebSocket) on free ports, the root user from
``--with-default-root-credentials`` (``iggy``/``iggy``), the configuration embedded in
the binary plus these ``IGGY_*`` overrides (``IGGY_CONFIG_PATH`` points at a file that
does not exist, so a ``core/server/config.toml`` in the working directory is never
picked up). Nothing of the server is part of this repository.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

USERNAME = PASSWORD = "iggy"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def login_works(address: str, username: str = USERNAME, password: str = PASSWORD, timeout: float = 5.0) -> bool:
    """One SDK client connects and logs in within ``timeout`` (a fresh event loop; nothing left pending)."""
    import apache_iggy as iggy

    async def probe() -> None:
        client = iggy.IggyClient(iggy.TcpConfig(server_address=address))
        await asyncio.wait_for(client.connect(), timeout)
        await asyncio.wait_for(client.login_user(username, password), timeout)

    try:
        asyncio.run(probe())
        return True
    except (RuntimeError, OSError, asyncio.TimeoutError):
        return False


class IggyServerProcess:
    """One ``iggy-server`` on loopback; ``restart`` keeps the data directory and the ports."""

    def __init__(self, binary: str, data_dir: str | None = None, log_path: str | None = None,
                 ports: dict[str, int] | None = None) -> None:
        self.binary = binary
        self._own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="iggy-data-")
        os.makedirs(self.data_dir, exist_ok=True)
        self.ports = ports or {name: free_port() for name in ("tcp", "http", "quic", "websocket")}
        self.log_path = log_path or os.path.join(self.data_dir, "server.out")
        self.process: subprocess.Popen | None = None
        self._log = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.ports['tcp']}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def environment(self) -> dict[str, str]:
        """The overrides this instance runs with (recorded in tests/real/README.md)."""
        return {
            "IGGY_CONFIG_PATH": os.path.join(self.data_dir, "no-such-config.toml"),
            "IGGY_SYSTEM_PATH": os.path.join(self.data_dir, "local_data"),
            "IGGY_TCP_ADDRESS": f"127.0.0.1:{self.ports['tcp']}",
            "IGGY_HTTP_ADDRESS": f"127.0.0.1:{self.ports['http']}",
            "IGGY_QUIC_ADDRESS": f"127.0.0.1:{self.ports['quic']}",
            "IGGY_WEBSOCKET_ADDRESS": f"127.0.0.1:{self.ports['websocket']}",
            "IGGY_SYSTEM_LOGGING_LEVEL": os.environ.get("PGSOURCE_TEST_IGGY_LOG_LEVEL", "warn"),
            "IGGY_SYSTEM_LOGGING_FILE_ENABLED": "false",
        }

    def arguments(self) -> list[str]:
        return ["--with-default-root-credentials"]

    def start(self, timeout: float = 60.0) -> IggyServerProcess:
        self.launch()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = Path(self.log_path).read_text(errors="replace")[-3000:]
                raise RuntimeError(f"iggy-server exited with {self.process.returncode} while starting:\n{tail}")
            if login_works(self.address, timeout=2.0):
                return self
            time.sleep(0.1)  # the pace of this condition loop
        raise RuntimeError(f"iggy-server at {self.address} did not accept a login within {timeout:.0f}s")

    def launch(self) -> None:
        """Start the process and return at once (a cluster node answers only once its peers are up)."""
        env = {**os.environ, **self.environment()}
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [self.binary, *self.arguments()], cwd=self.data_dir, env=env,
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (a graceful shutdown that flushes), SIGKILL after ``timeout``; the exit code."""
        proc, self.process = self.process, None
        if proc is None:
            return None
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)  # a frozen server cannot handle SIGTERM
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log:
            self._log.close()
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL: the server dies without flushing (what a crash or OOM does)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.stop()

    def restart(self, down_for: float = 0.0) -> None:
        """Stop, stay down ``down_for`` seconds, start again on the same ports with the same data."""
        self.stop()
        if down_for:
            time.sleep(down_for)  # the outage itself is what is being tested
        self.start()

    def freeze(self) -> None:
        """SIGSTOP: connections stay open and requests are accepted by the kernel, but nothing answers."""
        os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            import shutil

            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> IggyServerProcess:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()
