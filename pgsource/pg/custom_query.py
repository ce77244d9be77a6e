"""``build_custom_*``: a user's ``custom_query``, with its placeholders bound, never spliced."""

from __future__ import annotations

import re

from psycopg2 import sql

from pgsource.errors import ConfigError

_PLACEHOLDER = re.compile(r"'\$(offset|now_unix|now)'|\$(table|offset|limit|now_unix|now)\b|\$([12])(?!\d)")
_BOUND = {"1": "offset", "2": "limit", "offset": "offset", "limit": "limit", "now": "now", "now_unix": "now_unix"}


def build_custom_query(query: str, table: tuple[str, str] | None = None, conn=None) -> str:
    """The user's query as a psycopg2 query with named bound parameters.

    ``$1``/``$offset`` (also quoted, ``'$offset'``, as the Rust connector's queries write it),
    ``$2``/``$limit``, ``$now`` (the read's time, UTC) and ``$now_unix`` become bound
    parameters — never spliced text; ``$table`` becomes the table's quoted identifier.
    """
    escaped = query.replace("%", "%%")

    def placeholder(match: re.Match) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        if name == "table":
            if table is None:
                raise ConfigError("source.custom_query: $table needs the table it runs for (list it in tables)")
            return sql.Identifier(*table).as_string(conn).replace("%", "%%")  # the query is run with bound values
        return f"%({_BOUND[name]})s"

    converted = _PLACEHOLDER.sub(placeholder, escaped)
    if re.search(r"\$\d", converted):
        raise ConfigError("source.custom_query: only $1 (last offset) and $2 (batch size) are bound")
    return converted


def build_custom_select(query: str, tracking_column: str) -> sql.Composed:
    """The user's (converted) query wrapped: the tracking value as text, the row's JSON, in tracking order.

    Ordered again outside, since a subquery's ORDER BY is not promised to survive the
    wrapping, and the last row's value becomes the next offset. The user's text is SQL by
    definition (never ``.format``-ed: its braces stay braces); the column is an identifier.
    """
    tracking = sql.Identifier(tracking_column)
    return (sql.SQL("SELECT q.{}::text, row_to_json(q)::text FROM (").format(tracking) + sql.SQL(query)
            + sql.SQL(") AS q ORDER BY q.{}").format(tracking))


def build_custom_probe(query: str) -> sql.Composed:
    """The user's (converted) query, no rows: what ``check`` runs to learn its columns."""
    return sql.SQL("SELECT * FROM (") + sql.SQL(query) + sql.SQL(") AS q LIMIT 0")
