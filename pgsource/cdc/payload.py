"""``cdc_payload_problem``: what ``payload_column`` needs of a table whose changes CDC captures."""

from __future__ import annotations

from pgsource.errors import PrerequisiteError
from pgsource.pg.catalog import TableInfo
from pgsource.pg.plan import check_payload


def cdc_payload_problem(info: TableInfo, column: str, payload_format: str, captures_updates: bool) -> str | None:
    """CDC with payload_column: the column must be of its format's type, and an UPDATE must carry the
    value even when it is an unchanged TOASTed one, which only REPLICA IDENTITY FULL does."""
    try:
        check_payload(info, column, payload_format)
    except PrerequisiteError as exc:
        return str(exc)
    if captures_updates and info.replica_identity != "f":
        return (
            f"table {info.qualified}: payload_column {column!r} in cdc mode needs REPLICA IDENTITY FULL when UPDATE"
            " is captured (an UPDATE that leaves a large payload unchanged carries no value for it otherwise):"
            f" ALTER TABLE {info.qualified} REPLICA IDENTITY FULL, or capture_operations without UPDATE"
        )
    return None


