"""BEGIN and COMMIT messages around each transaction's messages (``transaction_markers: messages``).

The BEGIN goes out just before the transaction's first message (a transaction none of whose
changes is sent — other tables, operations not captured — gets no markers); the COMMIT
after its last, with the number of messages sent per table: counted as they are made, one
counter per table, so no transaction is ever held in memory to count it. Both go to
``iggy.transaction_topic``, all to one partition (0), so that the markers of all transactions
are in commit order there. Why a topic of their own, and what order a consumer can rely on
across topics and partitions: docs/cdc.md, "Transaction boundaries".
"""

from __future__ import annotations

from collections.abc import Callable

from pgsource.encode.markers import encode_transaction_marker, transaction_marker_id

MARKER_PARTITION = 0
Add = Callable[[str, int, int, bytes, dict], None]  # ChangeBatch.add: topic, id, partition, payload, headers


class TransactionMarkers:
    """One per ``ChangeEncoder`` (per slot); told of every Begin and Commit, in order."""

    def __init__(self, slot: str, topic: str) -> None:
        self.slot = slot
        self.topic = topic
        self.tallies: dict[str, list[int]] = {}  # table_name -> [messages sent], this transaction
        self._begun = False
        self._xid = 0
        self._commit_lsn = 0
        self._lsn_text = ""
        self._time = ""

    def start(self, xid: int, commit_lsn: int, lsn_text: str, commit_time: str) -> None:
        """A Begin: nothing is sent yet (the transaction may have no message of ours)."""
        self.tallies = {}
        self._begun = False
        self._xid, self._commit_lsn, self._lsn_text, self._time = xid, commit_lsn, lsn_text, commit_time

    def tally(self, table_name: str, add: Add) -> list[int]:
        """The counter of ``table_name``'s messages in this transaction (the caller adds 1 per
        message); the first call of a transaction sends its BEGIN first."""
        if not self._begun:
            self._begun = True
            self._send("BEGIN", None, add)
        counter = self.tallies.get(table_name)
        if counter is None:
            counter = self.tallies[table_name] = [0]
        return counter

    def finish(self, add: Add) -> None:
        """The Commit: the COMMIT message with the counts, if a BEGIN went out."""
        if self._begun:
            self._send("COMMIT", {name: counter[0] for name, counter in self.tallies.items() if counter[0]}, add)
        self._begun = False
        self.tallies = {}

    def _send(self, kind: str, tables: dict[str, int] | None, add: Add) -> None:
        payload = encode_transaction_marker(kind, self._xid, self._lsn_text, self._time, tables)
        headers = {"operation": kind, "xid": str(self._xid), "lsn": self._lsn_text}
        add(self.topic, transaction_marker_id(self._commit_lsn, self.slot, kind), MARKER_PARTITION, payload, headers)
