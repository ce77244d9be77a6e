"""``ChangeBatch``: the messages encoded from one slice of the change stream, per topic; ``tables_of``: per table."""

from __future__ import annotations

from dataclasses import dataclass, field

from pgsource.encode.batch import MessageBatch, new_message_batch


@dataclass
class ChangeBatch:
    """Messages encoded from one slice of the change stream."""

    topic_messages: dict[str, MessageBatch] = field(default_factory=dict)  # payloads are bytes here
    count: int = 0
    last_commit_end: int | None = None  # end LSN of the last transaction fully contained
    commit_time: float = 0.0

    def add(self, topic: str, message_id: int, partition: int, payload: bytes, headers: dict) -> None:
        ids, parts, payloads, header_list = self.topic_messages.get(topic) or self.topic_messages.setdefault(
            topic, new_message_batch())
        ids.append(message_id)
        parts.append(partition)
        payloads.append(payload)
        header_list.append(headers)
        self.count += 1


def tables_of(payloads: list[bytes], headers: list[dict], ids: list[int] | None = None) -> dict[str, tuple[int, int]]:
    """Per table (the messages' ``table`` header, as ``table_name`` names it) of one topic's
    messages: (messages, frame bytes). Header dicts are shared per transaction, table and
    operation, so the common case (one table) costs one pass at C speed; several tables in
    one topic are counted message by message (``ids``: for the size of each ``txn_index``)."""
    shared = dict(zip(map(id, headers), headers))
    names = {header.get("table", "") for header in shared.values()}  # "": transaction markers
    if len(names) == 1:
        return {names.pop(): (len(payloads), 0)}  # bytes: the caller has the frames
    from pgsource.encode.frames import FRAME_HEADER_SIZE, POSITION_MASK, TXN_INDEX, encode_user_headers

    encoded = {key: encode_user_headers(header) for key, header in shared.items()}
    out: dict[str, list[int]] = {name: [0, 0] for name in names}
    for index, (payload, header) in enumerate(zip(payloads, headers)):
        entry = out[header.get("table", "")]
        entry[0] += 1
        size = encoded[id(header)]
        if isinstance(size, tuple):  # before and after the message's own txn_index entry
            digits = len(str(ids[index] & POSITION_MASK)) if ids is not None else 1
            size = len(size[0]) + len(size[1]) + 10 + len(TXN_INDEX) + digits
        else:
            size = len(size)
        entry[1] += FRAME_HEADER_SIZE + size + len(payload)
    return {name: (count, size) for name, (count, size) in out.items()}
