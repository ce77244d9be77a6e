"""One logging set-up for every process: time, process (worker) name, level, message; no secrets.

``log.format: json`` writes one JSON object per line (``time``, ``level``, ``worker``,
``logger``, ``message``, ``exception``); ``text`` (the default) the classic line. The
``worker`` is the process's name: ``supervisor``, ``publisher``, ``worker-0``...

Whatever a process writes to stderr or stdout (log records, tracebacks, the CLI's own
lines) goes through ``redact``: passwords in connection strings and the configured
secrets (PostgreSQL and Iggy passwords, from the file or a ``*_file``) become ``***``.
The level: ``--log-level``, else ``PGSOURCE_LOG_LEVEL``, else ``log.level``, else INFO.
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
from datetime import datetime, timezone

from pgsource.config.secrets import dsn_passwords, redact, secret_forms

TEXT_FORMAT = "%(asctime)s %(worker)s %(levelname)s %(name)s: %(message)s"
_forms: list[str] = []  # the secrets of this process's configuration, as they may appear in text


def setup_logging(level: str | None = None, config=None) -> None:
    """Configure the root logger of this process (again, once the configuration is known)."""
    if config is not None:
        _forms[:] = secret_forms(config_secrets(config))
    _guard_streams()
    fmt = config.log.format if config is not None else os.environ.get("PGSOURCE_LOG_FORMAT", "text")
    chosen = level or os.environ.get("PGSOURCE_LOG_LEVEL") or (config.log.level if config is not None else None)
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_name_the_worker)
    handler.setFormatter(JsonFormatter() if fmt == "json" else RedactingFormatter(TEXT_FORMAT))
    logging.basicConfig(level=(chosen or "INFO").upper(), handlers=[handler], force=True)
    if config is not None:  # children are spawned with this environment: same format there
        os.environ["PGSOURCE_LOG_FORMAT"] = fmt


def config_secrets(config) -> list[str]:
    """Every secret a configuration holds: DSN passwords and the Iggy password."""
    return [*dsn_passwords(config.source.connection_string), config.iggy.password]


def redact_text(text: str) -> str:
    """``text`` as this process may print it."""
    return redact(text, _forms)


def _name_the_worker(record: logging.LogRecord) -> bool:
    """The process's name as the supervisor gave it (``multiprocess`` names children; logging's
    ``processName`` asks the standard library's ``multiprocessing``, which says MainProcess)."""
    processes = sys.modules.get("multiprocess")
    name = processes.current_process().name if processes is not None else record.processName
    record.worker = "supervisor" if name == "MainProcess" else name
    return True


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per record; every string redacted before it is escaped."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "worker": getattr(record, "worker", record.processName),
            "logger": record.name,
            "message": redact_text(record.getMessage()),
        }
        if record.exc_info:
            entry["exception"] = redact_text(self.formatException(record.exc_info))
        if record.stack_info:
            entry["stack"] = redact_text(self.formatStack(record.stack_info))
        return json.dumps(entry, ensure_ascii=False)


class RedactingStream(io.TextIOBase):
    """A text stream that redacts what is written through it (tracebacks, click's lines)."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact_text(text))
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def fileno(self) -> int:
        return self._stream.fileno()

    def isatty(self) -> bool:
        return self._stream.isatty()

    @property
    def encoding(self):
        return self._stream.encoding

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _guard_streams() -> None:
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, RedactingStream):
            setattr(sys, name, RedactingStream(stream))
