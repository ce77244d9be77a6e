"""The committers: what Iggy acknowledged becomes durable progress, and nothing else does.

Polling: a unit's offset moves only over work that is done (every batch of it acknowledged, a
held range closed), in order, and reaches state.dir. CDC: the slot is confirmed only up to the
end of a transaction whose every batch was acknowledged, and its record remembers it. No
PostgreSQL: the stores are real, the confirmer records what it was asked.
"""

from __future__ import annotations

from dataclasses import dataclass

from pgsource.cdc.committer import SlotCommitter
from pgsource.cdc.slot_record import SlotRecords
from pgsource.pipeline.block import BlockHead
from pgsource.pipeline.progress import ProgressTracker
from pgsource.polling.committer import OffsetCommitter
from pgsource.polling.unit import PollUnit
from pgsource.state import FileStateStore, PollingOffset, SlotProgress
from pgsource.state.writer import OffsetWriter


@dataclass
class _Reader:
    """What the committer reads of a unit's reader when no delete/mark acts on rows."""

    table_name: str = "public.t"
    tracking: object = None


class _Count:
    def __init__(self) -> None:
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        self.value += amount

    def set(self, value) -> None:
        self.value = value


def _offset(n: int) -> PollingOffset:
    return PollingOffset((str(n),), rows=n)


def _polling(tmp_path):
    unit = PollUnit("polling/public.t", _Reader(), None, ProgressTracker(None), BlockHead("w", "pg", "t", "public.t"))
    commits, progressed = _Count(), []
    committer = OffsetCommitter([unit], OffsetWriter(FileStateStore(str(tmp_path))), resend=lambda *a: None,
                                statement=None, counter=commits, progressed=lambda: progressed.append(1))
    return unit, committer, commits, progressed


def _stored(tmp_path) -> PollingOffset | None:
    return FileStateStore(str(tmp_path)).load("polling/public.t", PollingOffset)


def test_an_offset_is_committed_only_once_every_batch_before_it_was_acknowledged(tmp_path):
    unit, committer, commits, progressed = _polling(tmp_path)
    for seq, n in ((1, 100), (2, 200)):
        committer.sent(seq, committer.open_work(unit, _offset(n)), None, (str(n),))
    committer.acked(2)
    assert unit.committed is None and commits.value == 0
    committer.acked(1)
    committer.acked(1)  # twice, or of an earlier generation: nothing more
    committer.close()
    assert unit.committed == _offset(200) and _stored(tmp_path) == _offset(200)
    assert commits.value == 1 and progressed == [1]


def test_a_held_range_keeps_the_offset_until_it_is_read_again_and_its_late_rows_acknowledged(tmp_path):
    unit, committer, commits, _ = _polling(tmp_path)
    hold = committer.open_work(unit, open=True)  # the range may still get late commits
    committer.sent(1, committer.open_work(unit, _offset(100)), None, ("100",))
    committer.acked(1)
    assert unit.committed is None  # the batch is in Iggy, its range is not sealed yet
    committer.sent(2, hold, None, ("100",))  # the re-read found a row that committed late
    committer.close_work(hold)
    assert unit.committed is None
    committer.acked(2)
    committer.close()
    assert _stored(tmp_path) == _offset(100) and commits.value == 1


def test_a_range_read_again_with_nothing_late_releases_the_offset_at_once(tmp_path):
    unit, committer, _, _ = _polling(tmp_path)
    hold = committer.open_work(unit, open=True)
    committer.sent(1, committer.open_work(unit, _offset(100)), None, ("100",))
    committer.sent(2, committer.open_work(unit, _offset(200)), None, ("200",))
    committer.acked(2)
    committer.acked(1)
    assert unit.committed is None
    committer.close_work(hold)
    assert unit.committed == _offset(200)
    committer.close()


class _Confirmer:
    def __init__(self) -> None:
        self.asked: list[tuple[int, bool, bool]] = []

    def confirm(self, lsn: int, moved: bool, force: bool) -> bool:
        self.asked.append((lsn, moved, force))
        return True


def test_the_slot_is_confirmed_only_to_the_end_of_a_transaction_every_batch_of_which_was_acknowledged():
    commits, gauge = _Count(), _Count()
    committer = SlotCommitter(None, counter=commits, confirmed_gauge=gauge)
    committer.start(100)
    committer.confirmer = confirmer = _Confirmer()
    committer.sent(1)  # a transaction's first half
    committer.sent(2)  # ... its second half
    committer.mark(150)  # it ended at 150
    committer.sent(3)
    committer.mark(200)
    committer.mark(180)  # behind what was recorded: ignored
    committer.acked(2)
    committer.acked(3)
    committer.commit_acknowledged()
    assert confirmer.asked[-1] == (100, False, False) and committer.confirmed_lsn == 100
    committer.acked(1)
    committer.commit_acknowledged()
    assert confirmer.asked[-1] == (200, True, False)
    assert committer.confirmed_lsn == 200 and gauge.value == 200 and commits.value == 1


def test_the_confirmed_lsn_is_remembered_in_the_slots_record(tmp_path):
    store = FileStateStore(str(tmp_path))
    records = SlotRecords(store, "s")
    committer = SlotCommitter(records)
    committer.start(100)
    committer.confirmer = _Confirmer()
    records.save(SlotProgress("s", lsn=100, tables=("public.t",)))
    committer.sent(1)
    committer.mark(300)
    committer.acked(1)
    committer.commit_acknowledged(force=True)
    assert store.load("cdc/s", SlotProgress) == SlotProgress("s", lsn=300, tables=("public.t",))


def test_nothing_is_confirmed_before_the_slot_streams():
    committer = SlotCommitter(None)
    committer.start(100)
    committer.sent(1)
    committer.mark(200)
    committer.acked(1)
    committer.commit_acknowledged(force=True)  # a snapshot: no confirmer yet
    assert committer.confirmed_lsn == 100 and committer.progress.committable() == 200
