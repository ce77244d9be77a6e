"""``check_late_commit_guard``: a table whose late commits pgsource cannot see coming is refused.

The late-commit guard (``pgsource/polling/late_commits.py``) holds a table's committed
offset behind the transactions still in progress, which it reads from
``pg_stat_activity``. Where that horizon cannot be read, or says nothing of the tracking
column, the table is refused at start unless ``lag`` covers the late commits instead.
"""

from __future__ import annotations

from pgsource.config.model import Config
from pgsource.errors import PrerequisiteError
from pgsource.pg import horizon as hz
from pgsource.pg.horizon import TrackingInfo, TrackingKind


def check_late_commit_guard(conn, config: Config, table_name: str, tracking: TrackingInfo, lag: float) -> str:
    """Refuse a table whose late commits no horizon can protect, unless ``lag`` covers them.

    Returns the TimeZone writers' sessions get (timestamp/date columns are compared in it).
    """
    fix = "set source.lag (the longest a writing transaction stays open, e.g. 10s), or late_commits: off"
    if lag > 0:
        return "UTC"
    if tracking.kind is TrackingKind.OTHER:
        raise PrerequisiteError(
            f"table {table_name}: tracking_column {tracking.column!r}: {tracking.why}; pgsource cannot tell when rows"
            f" with lower values may still commit: {fix}"
        )
    if hz.in_recovery(conn):
        raise PrerequisiteError(f"table {table_name}: reading from a hot standby, whose sessions show no horizon: {fix}")
    if not hz.can_see_all_sessions(conn):
        raise PrerequisiteError(
            f"table {table_name}: this role cannot see other sessions' transactions (pg_stat_activity.xact_start):"
            f" GRANT pg_read_all_stats TO it, or {fix}"
        )
    if tracking.kind is TrackingKind.TIME and tracking.type_oid != hz.TIMESTAMPTZ_OID:
        zone = hz.database_time_zone(config.source.connection_string)
        try:
            from zoneinfo import ZoneInfo

            ZoneInfo(zone)
        except Exception:  # noqa: BLE001 - an offset string or a zone Python's tz database lacks
            raise PrerequisiteError(
                f"table {table_name}: tracking_column {tracking.column!r} has no time zone and the database's"
                f" TimeZone {zone!r} is unknown here: use timestamptz, or {fix}"
            ) from None
        return zone
    return "UTC"
