"""Opening connections with the session settings every value encoding relies on.

The JSON of a row depends on session GUCs (time zone, date and interval style, float
digits); polling and CDC must see the same ones, so both connect through here.
"""

from __future__ import annotations

import psycopg2
import psycopg2.extras

from pgsource.errors import SourceUnavailable

SESSION_OPTIONS = "-c TimeZone=UTC -c DateStyle=ISO -c IntervalStyle=postgres -c extra_float_digits=1"

def connect(dsn: str, *, application_name: str = "pgsource", autocommit: bool = True):
    """A regular connection with pgsource's session settings; errors name the server."""
    try:
        connection = psycopg2.connect(dsn, options=SESSION_OPTIONS, application_name=application_name)
    except psycopg2.OperationalError as exc:
        raise SourceUnavailable(f"cannot connect to PostgreSQL: {str(exc).strip()}") from None
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
        )
    except psycopg2.OperationalError as exc:
        raise SourceUnavailable(f"cannot open a replication connection: {str(exc).strip()}") from None
    return connection


OperationalError = psycopg2.OperationalError
InterfaceError = psycopg2.InterfaceError
DatabaseError = psycopg2.DatabaseError
Error = psycopg2.Error
