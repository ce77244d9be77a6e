"""Which column defaults read the writing transaction's clock (``pg_get_expr``'s spelling).

A time tracking column is guarded by the late-commit horizon only when its value is the
writing transaction's clock: ``now()``, ``CURRENT_TIMESTAMP``, ``transaction_timestamp()``,
``statement_timestamp()``, ``clock_timestamp()``, and ``LOCALTIMESTAMP``/``CURRENT_DATE``
where the column's type makes them the same thing, casts to the column's type allowed;
``timezone('X', now())`` into a ``timestamp`` column is that clock in zone X. Anything else
(no default, ``now() + interval ...``, a literal) is a value the horizon cannot bound.
"""

from __future__ import annotations

import re

TIMESTAMPTZ_OID, TIMESTAMP_OID, DATE_OID = 1184, 1114, 1082  # as pgsource/pg/horizon.py names them

_CLOCK = re.compile(
    r"^(?:(?P<call>now|clock_timestamp|statement_timestamp|transaction_timestamp)\(\)"
    r"|(?P<sql>CURRENT_TIMESTAMP|LOCALTIMESTAMP)(?:\((?P<precision>\d)\))?|(?P<date>CURRENT_DATE))$"
)
_ZONED = re.compile(r"^timezone\('(?P<zone>[^']+)'::text, (?P<clock>.+)\)$|^(?P<clock2>.+) AT TIME ZONE '(?P<zone2>[^']+)'::text$")
_CAST = re.compile(r"^(?P<inner>.+)::(?P<type>timestamp|date)(?:\((?P<precision>\d)\))?(?P<tz> with(?:out)? time zone)?$")


def clock_default(expression: str, type_oid: int) -> tuple[str | None, int | None] | None:
    """(zone, precision) of a default that reads the writing transaction's clock, as this column
    stores it; None for anything else. ``zone``: the one ``timezone('X', now())`` fixes (a
    ``timestamp`` column), else None (the writer's TimeZone). Casts to the column's type are allowed."""
    text = _strip(expression)
    precisions: list[int] = []
    while (cast := _CAST.match(text)) is not None:
        target = DATE_OID if cast["type"] == "date" else (TIMESTAMPTZ_OID if cast["tz"] == " with time zone" else TIMESTAMP_OID)
        if target == DATE_OID and type_oid != DATE_OID or target == TIMESTAMP_OID and type_oid == TIMESTAMPTZ_OID:
            return None  # midnight of today in a timestamp column, or local time read back in the writer's zone
        if cast["precision"]:
            precisions.append(int(cast["precision"]))
        text = _strip(cast["inner"])
    zone = None
    zoned = _ZONED.match(text)
    if zoned is not None:
        if type_oid == TIMESTAMPTZ_OID:
            return None  # a local time of zone X read back in the writer's zone: another instant
        zone = zoned["zone"] or zoned["zone2"]
        text = _strip(zoned["clock"] or zoned["clock2"])
    clock = _CLOCK.match(text)
    if clock is None:
        return None
    local = clock["sql"] == "LOCALTIMESTAMP" or clock["date"] is not None
    if local and (zone is not None or type_oid == TIMESTAMPTZ_OID):
        return None  # LOCALTIMESTAMP/CURRENT_DATE into timestamptz: ambiguous in a DST fall-back hour
    if clock["date"] is not None and type_oid != DATE_OID:
        return None
    if clock["precision"]:
        precisions.append(int(clock["precision"]))
    return zone, (min(precisions) if precisions else None)


def _strip(text: str) -> str:
    """``text`` without the parentheses that enclose all of it."""
    text = text.strip()
    while text.startswith("(") and text.endswith(")"):
        depth = 0
        for index, char in enumerate(text):
            depth += char == "("
            depth -= char == ")"
            if depth == 0 and index < len(text) - 1:
                return text  # "(a) + (b)": the first parenthesis closes before the end
        text = text[1:-1].strip()
    return text


def type_precision(type_sql: str) -> int | None:
    match = re.search(r"\((\d)\)", type_sql)
    return int(match.group(1)) if match else None
