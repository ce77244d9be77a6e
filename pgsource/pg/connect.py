"""Opening connections with the session settings every value encoding relies on.

The JSON of a row depends on session GUCs (time zone, date and interval style, float
digits); polling and CDC must see the same ones, so both connect through here.
"""

from __future__ import annotations

import psycopg2
import psycopg2.extras

from pgsource.errors import ConfigError, SourceLoginRefused, SourceUnavailable

# libpq's message for a string it cannot parse quotes a piece of it, which may be the password.
INVALID_DSN = (
    "source.connection_string: not a connection string libpq can parse (a URI postgresql://user@host:5432/db"
    " or key=value pairs); libpq's own message is not shown, as it quotes part of the string"
)

SESSION_OPTIONS = "-c TimeZone=UTC -c DateStyle=ISO -c IntervalStyle=postgres -c extra_float_digits=1"
# A dead server or network is noticed within ~60 s instead of the kernel's two hours, so a
# worker blocked in a read fails over to its restart instead of hanging (TCP keepalives).
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}
# A backend whose client died stops its statement within this (PostgreSQL 14+): a killed
# worker leaves no orphan running a long query.
CLIENT_CHECK = "SET client_connection_check_interval = '10s'"


def connect(dsn: str, *, application_name: str = "pgsource", autocommit: bool = True, **libpq):
    """A regular connection with pgsource's session settings; errors name the server.

    ``libpq``: further connection parameters (e.g. ``connect_timeout``), over the DSN's.
    """
    try:
        connection = psycopg2.connect(dsn, options=SESSION_OPTIONS, application_name=application_name,
                                      **{**KEEPALIVES, **libpq})
    except psycopg2.OperationalError as exc:
        raise connect_error("cannot connect to PostgreSQL", exc) from None
    except psycopg2.ProgrammingError:
        raise ConfigError(INVALID_DSN) from None
    connection.autocommit = True
    try:
        with connection.cursor() as cur:
            cur.execute(CLIENT_CHECK)
    except psycopg2.ProgrammingError:  # before PostgreSQL 14 (or not supported on this platform)
        pass
    except psycopg2.DatabaseError:
        connection.rollback()
    connection.autocommit = autocommit
    return connection


def connect_replication(dsn: str, *, application_name: str = "pgsource"):
    """A logical replication connection (walsender) with the same session settings."""
    try:
        connection = psycopg2.connect(
            dsn,
            options=SESSION_OPTIONS,
            application_name=application_name,
            connection_factory=psycopg2.extras.LogicalReplicationConnection,
            **KEEPALIVES,
        )
    except psycopg2.OperationalError as exc:
        raise connect_error("cannot open a replication connection", exc) from None
    except psycopg2.ProgrammingError:
        raise ConfigError(INVALID_DSN) from None
    return connection


# libpq's texts for a server (or TLS) that answered and refused: waiting does not fix these.
_REFUSALS = ("password authentication failed", "no pg_hba.conf entry", "pg_hba.conf rejects", "does not exist",
             "is not permitted to log in", "permission denied for database", "no password supplied",
             "authentication failed", "certificate", "does not match host name", "server does not support ssl")


def connect_error(what: str, exc: psycopg2.OperationalError) -> SourceUnavailable:
    """A failed connect as one line: SourceLoginRefused (3) when the server refused the login,
    else SourceUnavailable (75: unreachable, starting up, too many clients...)."""
    reason = "; ".join(line.strip() for line in str(exc).strip().splitlines() if line.strip())
    refused = any(text in reason.lower() for text in _REFUSALS)
    return (SourceLoginRefused if refused else SourceUnavailable)(f"{what}: {reason}")


OperationalError = psycopg2.OperationalError
InterfaceError = psycopg2.InterfaceError
DatabaseError = psycopg2.DatabaseError
Error = psycopg2.Error
