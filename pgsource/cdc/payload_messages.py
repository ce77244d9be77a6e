"""``PayloadMessages``: ``payload_column`` in CDC, the new row's value as the whole message (mixed into ``ChangeEncoder``)."""

from __future__ import annotations

from pgsource.cdc.change_batch import ChangeBatch
from pgsource.decode import pgoutput as po
from pgsource.encode.envelope import compact_json
from pgsource.errors import SourceError


class PayloadMessages:
    """Needs the encoder's ``_id_base``, ``_lsn_text``, ``payload_column``, ``payload_format``,
    ``_envelope``, ``_partition`` and ``_add``."""

    def _payload_change(self, state, oid: int, operation: str, new, old, position: int,
                        out: ChangeBatch) -> None:
        """payload_column: the new row's value is the message. A DELETE or TRUNCATE has no new
        value and sends nothing (an outbox row removed is not a message to repeat)."""
        if new is None:
            return
        value = new[state.payload_position]
        message_id = self._id_base | (position & 0xFFFF_FFFF_FFFF)
        if value is None or value is po.UNCHANGED or value in ("", "\\x"):
            what = {None: "a NULL", po.UNCHANGED: "an unchanged TOASTed (set REPLICA IDENTITY FULL)"}.get(value, "an empty")
            key = ", ".join(str(new[i]) for i in state.partition_positions) or "?"
            raise SourceError(
                f"table {state.table_name}: {operation} of row {key} (message id {message_id:#x}, lsn {self._lsn_text})"
                f" has {what} payload_column {self.payload_column!r}; Iggy takes no empty message"
            )
        if self.payload_format == "bytea":
            payload = bytes.fromhex(value[2:]) if value.startswith("\\x") else value.encode()
        elif self.payload_format == "json_direct":
            payload = compact_json(value).encode()
        else:
            payload = value.encode()
        _, _, headers = self._envelope(oid, state, operation)
        partition = state.partition
        if partition is None:
            partition = self._partition(state, new, None)
        self._add(state, out, message_id, partition, payload, headers)
