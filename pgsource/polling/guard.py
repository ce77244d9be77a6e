"""What no late-commit horizon can protect, refused at start (``pgsource check`` and ``run``).

The horizon (``late_commits.py``) bounds rows filled by a clock or a sequence of the writing
transaction; what it cannot bound — values the client sets, a hot standby, a role blind to other
sessions, local times whose clock runs back — is refused unless ``lag`` covers it.
"""

from __future__ import annotations

from pgsource.config.model import Config
from pgsource.errors import PrerequisiteError
from pgsource.pg import horizon as hz
from pgsource.pg.horizon import TrackingInfo, TrackingKind


def check_late_commit_guard(conn, config: Config, table_name: str, tracking: TrackingInfo, lag: float) -> str | None:
    """Refuse a table whose late commits no horizon can protect, unless ``lag`` covers them.

    Returns the zone a timestamp/date column's values are local times of (its default's zone,
    else the TimeZone writers' sessions get); None when the horizon cannot be converted into
    it (a zone unknown here: then ``lag`` alone seals ranges).
    """
    fix = "set source.lag (the longest a writing transaction stays open, e.g. 10s), or late_commits: off"
    zone = "UTC"
    if tracking.type_oid in (hz.TIMESTAMP_OID, hz.DATE_OID):  # local times, whoever writes them
        zone = _local_time_zone(config, table_name, tracking, lag, fix)
    if lag > 0:
        return zone
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
    return zone


def _local_time_zone(config: Config, table_name: str, tracking: TrackingInfo, lag: float, fix: str) -> str | None:
    """The zone of a timestamp/date column's local times; refused when its clock runs back (a DST
    fall-back) by more than ``lag`` covers: rows written in the repeated hour sort below rows read."""
    from datetime import timedelta

    from pgsource.polling.late_commits import DST_MARGIN, backward_shift

    zone = tracking.zone or hz.database_time_zone(config.source.connection_string)
    whose = f"the zone of its default {zone!r}" if tracking.zone else f"the database's TimeZone {zone!r}"
    kind = "date" if tracking.type_oid == hz.DATE_OID else "timestamp without time zone"
    try:
        shift = backward_shift(zone, dates=tracking.type_oid == hz.DATE_OID)
    except Exception:  # noqa: BLE001 - an offset string or a zone Python's tz database lacks
        if lag > 0:
            return None
        raise PrerequisiteError(
            f"table {table_name}: tracking_column {tracking.column!r} is a {kind}, and {whose} is unknown here:"
            f" use timestamptz, or {fix}"
        ) from None
    if shift and lag < shift + DST_MARGIN:
        need = timedelta(seconds=shift + DST_MARGIN)
        raise PrerequisiteError(
            f"table {table_name}: tracking_column {tracking.column!r} is a {kind}, and {whose} runs back by up to"
            f" {timedelta(seconds=shift)} (daylight saving time): rows written in the repeated time sort below rows"
            f" already read, and would be lost. Use timestamptz, or a source.lag of at least {need} (the shift"
            " and a minute: ranges are read again once it passed)"
        )
    return zone
