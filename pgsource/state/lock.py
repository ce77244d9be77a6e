"""``StateLock``: one pgsource at a time on a ``state.dir``.

``pgsource run`` holds an exclusive ``flock`` on ``state.dir/.pgsource.lock`` for as long
as it runs (the kernel releases it when the process dies, even by SIGKILL, so a crash
leaves no stale lock). ``pgsource reset`` takes the same lock before it moves an offset:
it refuses while the service runs, and the service cannot start in the middle of a
reset. The file holds the holder's pid, for the error message only.
"""

from __future__ import annotations

import fcntl
import os

from pgsource.errors import StateError, StateLockedError

LOCK_NAME = ".pgsource.lock"


class StateLock:
    def __init__(self, directory: str, purpose: str = "run") -> None:
        self.directory = directory
        self.path = os.path.join(directory, LOCK_NAME)
        self.purpose = purpose
        self._fd: int | None = None

    def acquire(self) -> StateLock:
        """Take the lock now or raise StateLockedError naming the holder's pid."""
        try:
            os.makedirs(self.directory, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StateError(f"cannot open the lock {self.path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise StateLockedError(
                f"state.dir {self.directory} is in use by a running pgsource{f' ({holder})' if holder else ''}:"
                " stop it first"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} ({self.purpose})\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock; the file stays (removing it would race a new holder)
            self._fd = None

    def __enter__(self) -> StateLock:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()


def holder(directory: str) -> str | None:
    """Who holds the lock of ``directory`` now ("pid 123 (run)"), or None when nobody does."""
    path = os.path.join(directory, LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read(fd) or "another process"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read(fd: int) -> str:
    try:
        return os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        return ""
