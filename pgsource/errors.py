"""One small tree of errors for the whole service.

Every error is picklable (it crosses process boundaries on multiprocessing queues),
so each keeps its constructor arguments in ``args`` and nothing else.
"""

from __future__ import annotations


class PgSourceError(Exception):
    """Base of every error pgsource raises on purpose."""

    exit_code = 1

    def __reduce__(self):  # keep pickling exact for subclasses with custom __init__
        return (self.__class__, self.args)


class ConfigError(PgSourceError):
    """The configuration is invalid; the message names the key."""

    exit_code = 2


class PrerequisiteError(PgSourceError):
    """PostgreSQL or Iggy lacks something the configuration needs (table, column, slot, wal_level)."""

    exit_code = 3


class SourceUnavailable(PgSourceError):
    """PostgreSQL cannot be reached right now; a worker exits with 75 (EX_TEMPFAIL) and is restarted
    with back-off for as long as the outage lasts, never counted as a crash loop."""

    exit_code = 75


class SourceLoginRefused(SourceUnavailable):
    """PostgreSQL answered and refused the connection (a wrong password, no pg_hba.conf entry, a
    missing role or database, TLS): a command gives up with 3, not 75, since waiting does not fix
    it; a running worker is still restarted with back-off, as in an outage (it may be fixed meanwhile)."""

    exit_code = 3


class TableChanged(SourceUnavailable):
    """A table's columns changed (ALTER TABLE) under a read that names them one by one; the read is
    dropped unsent and the worker restarts, planning the table again from its committed offset."""


class SourceError(PgSourceError):
    """Reading from PostgreSQL failed in a way retrying will not fix (bad row, bad query)."""

    exit_code = 4


class SinkError(PgSourceError):
    """Writing to Iggy failed."""

    exit_code = 5


class SinkUnavailable(SinkError):
    """Iggy cannot be reached: a command that needs it (``verify``, ``tail``) gives up with 75 (EX_TEMPFAIL);
    ``run`` waits for it instead."""

    exit_code = 75


class SinkRefused(SinkError):
    """Iggy refuses what the configuration asks in a way no retry can fix (wrong password, a
    missing stream or topic pgsource may not create, too few partitions, a create option the
    server does not accept): the service stops with exit code 5 instead of retrying for ever."""


class StateError(PgSourceError):
    """``state.dir`` cannot be read or written (corrupt file, disk full, read-only), or a commit
    would move progress backward; the service stops and keeps the position it had."""

    exit_code = 7


class StateLockedError(StateError):
    """``state.dir`` is locked by a running pgsource (``reset`` refuses; a second ``run`` refuses)."""

    exit_code = 9


class ProbeError(PgSourceError):
    """PostgreSQL could not be asked for readiness or a scrape (refused, timed out); the service runs on."""


class VerificationError(PgSourceError):
    """``pgsource verify`` found messages missing from Iggy (or a slot ahead of what Iggy acknowledged)."""

    exit_code = 10


class CrashLoopError(PgSourceError):
    """A worker kept dying right after start; the supervisor gave up instead of looping."""

    exit_code = 6


class StatementLoopError(PgSourceError):
    """A worker died in the same statement again and again with no progress; it would loop forever."""

    exit_code = 8
