"""Opening connections with the session settings every value encoding relies on.

The JSON of a row depends on session GUCs (time zone, date and interval style, float
digits); polling and CDC must see the same ones, so both connect through here.
"""

from __future__ import annotations

import psycopg2
import psycopg2.extensions
import psycopg2.extras

from pgsource.errors import PrerequisiteError

SESSION_OPTIONS = "-c TimeZone=UTC -c DateStyle=ISO -c IntervalStyle=postgres -c extra_float_digits=1"

# Ask psycopg2 for text: the service forwards PostgreSQL's own spelling, never a Python float/datetime.
_TEXT_TYPES = (
    psycopg2.extensions.DECIMAL,
    psycopg2.extensions.FLOAT,
    psycopg2.extensions.DATE,
    psycopg2.extensions.TIME,
    psycopg2.extensions.PYDATETIME,
    psycopg2.extensions.PYDATETIMETZ,
    psycopg2.extensions.PYINTERVAL,
    psycopg2.extensions.BOOLEAN,
)


def _as_text(connection) -> None:
    for pg_type in _TEXT_TYPES:
        text = psycopg2.extensions.new_type(pg_type.values, f"{pg_type.name}_TEXT", lambda value, cur: value)
        psycopg2.extensions.register_type(text, connection)
    psycopg2.extras.register_default_json(connection, loads=lambda value: value)
    psycopg2.extras.register_default_jsonb(connection, loads=lambda value: value)


def connect(dsn: str, *, application_name: str = "pgsource", autocommit: bool = True):
    """A regular connection with pgsource's session settings; errors name the server."""
    try:
        connection = psycopg2.connect(dsn, options=SESSION_OPTIONS, application_name=application_name)
    except psycopg2.OperationalError as exc:
        raise PrerequisiteError(f"cannot connect to PostgreSQL: {str(exc).strip()}") from None
    connection.autocommit = autocommit
    _as_text(connection)
    return connection


def connect_replication(dsn: str, *, application_name: str = "pgsource"):
    """A logical replication connection (walsender) with the same session settings."""
    try:
        connection = psycopg2.connect(
            dsn,
            options=SESSION_OPTIONS,
            application_name=application_name,
            connection_factory=psycopg2.extras.LogicalReplicationConnection,
        )
    except psycopg2.OperationalError as exc:
        raise PrerequisiteError(f"cannot open a replication connection: {str(exc).strip()}") from None
    return connection


OperationalError = psycopg2.OperationalError
InterfaceError = psycopg2.InterfaceError
DatabaseError = psycopg2.DatabaseError
Error = psycopg2.Error
