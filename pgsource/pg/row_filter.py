"""The user's row predicate (``tables[].row_filter``/``where``, ``pgsource snapshot --where``) in SQL.

The house rule builds no SQL from strings; a user's predicate is the rule's one kind of
exception, like ``custom_query``: it is SQL the configuration (or the operator) wrote, so it
goes into the statement as SQL, inside parentheses, and PostgreSQL parses and validates it.
No value is ever put into it by pgsource: it comes whole from the user. This module is the
one place that does it, so that the exception is easy to audit.
"""

from __future__ import annotations

from psycopg2 import sql


def predicate_sql(predicate: str) -> sql.Composable:
    """``(predicate)`` for a statement executed with bound parameters (``%`` doubled for psycopg2)."""
    return sql.SQL("({})").format(sql.SQL(predicate.replace("%", "%%")))


def build_filter_probe(schema: str, table: str, predicate: str) -> sql.Composable:
    """No row, but the predicate parsed and checked against the table (``check``)."""
    return sql.SQL("SELECT 1 FROM {} AS t WHERE {} LIMIT 0").format(sql.Identifier(schema, table), predicate_sql(predicate))
