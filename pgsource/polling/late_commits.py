"""Rows that commit late, in polling: the horizon behind which nothing can still appear.

The read frontier of a poll advances freely, so delivery never waits. What may not
advance freely is the *committed* offset: a transaction still in progress may have taken
a tracking value below rows already read (a sequence id taken earlier, ``now()`` fixed at
its BEGIN) and commit after them. Two positions therefore exist per table:

- each batch read covers a range of the tracking column, ``(lo, hi]``, read with a
  snapshot; it is *sealed* once no row with a value up to ``hi`` can still commit;
- the committed offset only moves over sealed ranges (``pgsource/pipeline/progress.py`` holds it).

The horizon ``H`` is the lowest tracking value a row not yet visible can have, computed
from an observation of the transactions in progress (``pgsource/pg/horizon.py``), made
in its own statement *before* the data snapshot it is used for:

- time columns filled by ``now()``/``clock_timestamp()``: ``H`` = the oldest start of a
  transaction in progress, and at most the observation's own time minus ``START_MARGIN``
  (a session stamps ``now()`` a moment before it shows in ``pg_stat_activity``);
- sequence ids: a transaction first seen at observation *i* took its ids after the
  sequence value read at observation *i-1* (that value was read before the activity of
  *i-1*, where the transaction was absent), so ``H`` = that value + 1, and at most the
  value read at *i* + 1 for transactions not yet started;
- a prepared (2PC) transaction outlives its session: its bound is the one its session
  had while we saw it running (matched by xid), else the previous horizon; one that was
  already there at the first observation, or a session whose start we may not see,
  holds the horizon where it is (``-inf``) until it ends;
- a session with ``track_activities = off`` shows no transaction at all: it counts as a
  transaction begun at its ``backend_start`` (time columns) or first seen when it was first
  seen (sequences), for as long as the session exists.

A range read when ``hi < H`` already is sealed at once; otherwise it is re-read once the
horizon passes ``hi`` (through the tracking column's index), and the row versions that
its first read did not send are sent: the candidates are the rows whose ``xmin`` is not
older than that read's snapshot's xmin (all older ones were visible to it), minus the
message ids the read sent. ``pg_visible_in_snapshot`` would not do: a row written inside
a savepoint carries the subtransaction's xid, which a ``pg_snapshot`` never lists.
``lag`` seals a range only once that long has passed since it was read, for values no
horizon protects (set by the client, cached sequences, a hot standby).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from pgsource.pg.horizon import DATE_OID, TIMESTAMP_OID, TIMESTAMPTZ_OID, Activity, TrackingKind

START_MARGIN = 1.0  # seconds: statement_timestamp() is taken before a session shows in pg_stat_activity
NEG_INF = -math.inf
POS_INF = math.inf

_TIMESTAMP = re.compile(
    r"^(?P<year>\d{4,})-(?P<month>\d\d)-(?P<day>\d\d)"
    r"(?: (?P<hour>\d\d):(?P<minute>\d\d):(?P<second>\d\d)(?:\.(?P<fraction>\d{1,6}))?)?"
    r"(?:(?P<sign>[+-])(?P<oh>\d\d)(?::?(?P<om>\d\d))?(?::?(?P<os>\d\d))?)?"
    r"(?P<bc> BC)?$"
)


def tracking_key(text: str, type_oid: int) -> float | int:
    """A number ordered like PostgreSQL orders the tracking column's text (in pgsource's session).

    Integers as themselves; ``timestamptz`` as µs since 1970 UTC; ``timestamp`` and ``date`` as
    µs / days of their own (local) calendar; ``infinity`` as ±inf.
    """
    if type_oid not in (TIMESTAMPTZ_OID, TIMESTAMP_OID, DATE_OID):
        return int(text)
    if text == "infinity":
        return POS_INF
    if text == "-infinity":
        return NEG_INF
    match = _TIMESTAMP.match(text)
    if match is None:
        raise ValueError(f"cannot order tracking value {text!r}")
    year = int(match["year"])
    if match["bc"]:
        year = 1 - year
    days = _days_from_civil(year, int(match["month"]), int(match["day"]))
    if type_oid == DATE_OID:
        return days
    seconds = days * 86400 + int(match["hour"] or 0) * 3600 + int(match["minute"] or 0) * 60 + int(match["second"] or 0)
    if match["sign"]:
        offset = int(match["oh"]) * 3600 + int(match["om"] or 0) * 60 + int(match["os"] or 0)
        seconds -= offset if match["sign"] == "+" else -offset
    return seconds * 1_000_000 + int((match["fraction"] or "0").ljust(6, "0"))


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm)."""
    year -= month <= 2
    era = (year if year >= 0 else year - 399) // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


@dataclass(frozen=True)
class Horizon:
    """The lowest tracking key a row not yet visible may have, and what holds it there."""

    key: float | int
    holder: str = ""  # "pid 123 (app) since 2024-...": for the log line and the metric
    held_since: str = ""  # the holder's start (time columns) or when it was first seen


@dataclass
class HorizonTracker:
    """Successive observations of the transactions in progress → the horizon of one column.

    Stateful (first sightings, sequence values by observation) and pure: the worker
    feeds it what ``pgsource/pg/horizon.py`` observed.
    """

    kind: TrackingKind
    type_oid: int
    time_zone: str = "UTC"
    rounding: int = 0  # µs a stored value may lie below the clock it was taken from (a column's precision)
    _observations: int = 0
    _last_sequence: int | None = None  # the sequence value read at the previous observation
    _bounds: dict[tuple, float | int] = field(default_factory=dict)  # (pid, start) -> bound, set at first sight
    _xid_bound: dict[str, float | int] = field(default_factory=dict)  # xid -> bound, for prepared transactions
    _previous: float | int = NEG_INF  # the previous horizon, in the space bounds are kept in

    @property
    def last_sequence(self) -> int | None:
        """The sequence value read at the latest observation (sequence columns)."""
        return self._last_sequence

    @property
    def observations(self) -> int:
        """How many observations were made: a later one saw the database after an earlier read."""
        return self._observations

    def observe(self, activity: Activity, sequence_value: int | None = None) -> Horizon:
        first = self._observations == 0
        self._observations += 1
        if self.kind is TrackingKind.SEQUENCE:
            horizon = self._sequence_horizon(activity, int(sequence_value or 0), first)
            self._last_sequence = int(sequence_value or 0)
            self._previous = horizon.key
            return horizon
        horizon = self._time_horizon(activity, first)
        self._previous = horizon.key
        return Horizon(self._to_column(horizon.key), horizon.holder, horizon.held_since)

    # -- time columns ------------------------------------------------------------------------

    def _time_horizon(self, activity: Activity, first: bool) -> Horizon:
        """In µs UTC (converted to the column's type by ``observe``)."""
        observed = tracking_key(activity.observed_at, TIMESTAMPTZ_OID)
        best = Horizon(observed - int(START_MARGIN * 1_000_000) - self.rounding, "", "")
        running_xids: dict[str, float] = {}
        for tx in activity.transactions:
            if tx.prepared:
                continue
            if tx.started is None:  # another role's session we may not see: its start is unknown
                return Horizon(NEG_INF, f"pid {tx.pid} (start not visible to this role)", "")
            start = tracking_key(tx.started, TIMESTAMPTZ_OID) - self.rounding
            if tx.xid:
                running_xids[tx.xid] = start
            if start < best.key:
                best = Horizon(start, _describe(tx), tx.started)
        return self._prepared(activity, first, best, running_xids)

    def _to_column(self, utc_micros: float | int) -> float | int:
        """A timestamptz key (µs UTC) as a key of the tracking column's own type."""
        if self.type_oid == TIMESTAMPTZ_OID or utc_micros in (NEG_INF, POS_INF):
            return utc_micros
        import datetime as dt
        from zoneinfo import ZoneInfo

        moment = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=utc_micros)
        local = moment.astimezone(ZoneInfo(self.time_zone)).replace(tzinfo=None)
        micros = (local - dt.datetime(1970, 1, 1)) // dt.timedelta(microseconds=1)
        return micros if self.type_oid == TIMESTAMP_OID else micros // 86_400_000_000

    # -- sequences ---------------------------------------------------------------------------

    def _sequence_horizon(self, activity: Activity, sequence: int, first: bool) -> Horizon:
        best = Horizon(sequence + 1, "", "")
        seen_now: set[tuple] = set()
        running_xids: dict[str, float | int] = {}
        for tx in activity.transactions:
            if tx.prepared:
                continue
            if tx.started is None:
                return Horizon(NEG_INF, f"pid {tx.pid} (start not visible to this role)", "")
            identity = (tx.pid, tx.started)
            seen_now.add(identity)
            if identity not in self._bounds:  # absent from the previous observation: ids after its sequence value
                self._bounds[identity] = NEG_INF if first or self._last_sequence is None else self._last_sequence + 1
            bound = self._bounds[identity]
            if tx.xid:
                running_xids[tx.xid] = bound
            if bound < best.key:
                best = Horizon(bound, _describe(tx), tx.started)
        for identity in [i for i in self._bounds if i not in seen_now]:
            del self._bounds[identity]
        return self._prepared(activity, first, best, running_xids)

    # -- both ----------------------------------------------------------------------------------

    def _prepared(self, activity: Activity, first: bool, best: Horizon, running_xids: dict) -> Horizon:
        """Prepared transactions: the bound their session had, else the previous horizon (-inf at first)."""
        self._xid_bound.update(running_xids)
        prepared = {tx.xid for tx in activity.transactions if tx.prepared}
        for xid in prepared:
            if xid not in self._xid_bound:
                self._xid_bound[xid] = NEG_INF if first else self._previous
            bound = self._xid_bound[xid]
            if bound < best.key:
                best = Horizon(bound, f"prepared transaction xid {xid}", "")
        for xid in [x for x in self._xid_bound if x not in prepared and x not in running_xids]:
            del self._xid_bound[xid]
        return best


def _describe(tx) -> str:
    who = f"pid {tx.pid}"
    if tx.hidden:
        return who + f" (role {tx.role}, track_activities off)"
    return who + (f" ({tx.application})" if tx.application else "")


DST_MARGIN = 60.0  # seconds a lag must exceed a zone's backward shift by (the horizon's margin, commit delays)


def backward_shift(zone: str, *, dates: bool = False, years: int = 10) -> float:
    """The largest step (seconds) by which the local time of ``zone`` runs back in the coming
    ``years`` (a daylight-saving fall-back); with ``dates``, only steps that take the local date
    back (a transition at midnight). 0.0 for a zone whose clock never runs back.

    Sampled every 12 hours (no zone changes its offset twice in 12 hours), each step found by
    bisection to the second; ``zoneinfo`` holds the rules (the system's tz database or tzdata)."""
    import datetime as dt
    from zoneinfo import ZoneInfo

    tz = ZoneInfo(zone)
    step = 12 * 3600
    start = int(dt.datetime.now(dt.timezone.utc).timestamp()) // step * step
    worst = 0.0
    previous = dt.datetime.fromtimestamp(start, tz).utcoffset()
    for moment in range(start + step, start + years * 366 * 86400, step):
        offset = dt.datetime.fromtimestamp(moment, tz).utcoffset()
        if offset < previous:
            low, high = moment - step, moment  # the offset changes in (low, high]
            while high - low > 1:
                middle = (low + high) // 2
                if dt.datetime.fromtimestamp(middle, tz).utcoffset() == offset:
                    high = middle
                else:
                    low = middle
            before, after = dt.datetime.fromtimestamp(low, tz), dt.datetime.fromtimestamp(high, tz)
            if not dates or after.date() < before.date():
                worst = max(worst, (previous - offset).total_seconds())
        previous = offset
    return worst


class SentIds:
    """The message ids of one read, kept compactly (16 bytes each, sorted) until its range is re-read."""

    __slots__ = ("_blob", "_count")

    def __init__(self, ids: list[int]) -> None:
        self._blob = b"".join(sorted(i.to_bytes(16, "big") for i in ids))
        self._count = len(ids)

    @classmethod
    def from_sorted(cls, blob: bytes) -> SentIds:
        """From 16-byte big-endian ids already sorted (the COPY read's, ``copyjson.sort_ids``)."""
        kept = cls([])
        kept._blob, kept._count = blob, len(blob) // 16
        return kept

    def __contains__(self, message_id: int) -> bool:
        key = message_id.to_bytes(16, "big")
        blob, low, high = self._blob, 0, self._count
        while low < high:
            middle = (low + high) // 2
            probe = blob[middle * 16 : middle * 16 + 16]
            if probe < key:
                low = middle + 1
            elif probe > key:
                high = middle
            else:
                return True
        return False

    def __len__(self) -> int:
        return self._count


@dataclass
class ReadRange:
    """One batch's share of the tracking column, as read: what a re-read needs once it is sealed."""

    hold: object  # the progress-tracker key that keeps the committed offset behind this range
    lo: tuple[str, ...] | None  # the position the batch was read after (exclusive); None = the start
    hi: tuple[str, ...]  # the position of its last row (inclusive)
    hi_key: float | int
    snapshot: str  # pg_current_snapshot() of the batch's read
    read_at: float  # monotonic seconds
    sent: SentIds  # what that read sent: a re-read sends only the other row versions
    horizon_key: float | int | None = None  # the horizon observed before that read (None: none)


def below_horizon(range_: ReadRange, keys: list[float | int]) -> int:
    """How many of the tracking keys a re-read of ``range_`` found lie below the horizon observed
    before its first read: impossible while the guard's premises hold (values from the writing
    transaction's clock or sequence), so their values were written by the client (or a trigger)."""
    if range_.horizon_key is None:
        return 0
    return sum(1 for key in keys if key < range_.horizon_key)


def sealed(range_: ReadRange, horizon: Horizon | None, lag: float, now: float) -> bool:
    """Whether no row with a value up to ``range_.hi`` can still commit (so it can be re-read once)."""
    if horizon is not None and not range_.hi_key < horizon.key:
        return False
    return lag <= 0 or now - range_.read_at >= lag
