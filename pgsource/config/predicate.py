"""A user's row predicate (``row_filter``/``where``, ``pgsource snapshot --where``) checked as text.

PostgreSQL parses and validates the predicate (``pgsource/pg/row_filter.py``); what it cannot
see is a predicate that closes the parentheses pgsource puts it in (``a) OR (b``): that would
still parse, and change the meaning of the statement around it (a keyset read's bounds).
"""

from __future__ import annotations


def predicate_problem(predicate: str) -> str | None:
    """A predicate that would close the parentheses it is put in (``a) OR (b``) and so change the
    meaning of the statement around it; quoted strings and names are skipped, comments refused."""
    depth = 0
    i, n = 0, len(predicate)
    while i < n:
        ch = predicate[i]
        if ch in "'\"":
            end = predicate.find(ch, i + 1)
            while end != -1 and end + 1 < n and predicate[end + 1] == ch:  # '' or "" inside
                end = predicate.find(ch, end + 2)
            if end == -1:
                return "a quote is not closed"
            i = end + 1
            continue
        if predicate.startswith("--", i) or predicate.startswith("/*", i):
            return "comments are not allowed in a predicate"
        if ch == ";":
            return "';' ends a statement: a predicate is one SQL expression"
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth < 0:
            return "a ')' closes a parenthesis the predicate did not open"
        i += 1
    return "a '(' is not closed" if depth else None


def conjunction(first: str | None, second: str | None) -> str | None:
    """Both predicates (the table's row filter and a backfill's ``--where``): each was checked to be
    one expression that keeps to its parentheses, so ``(first) AND (second)`` is exactly both."""
    if first is None or second is None:
        return first if second is None else second
    return "(" + first + ") AND (" + second + ")"
