"""``pgsource tail``: the messages of the configuration's topics on screen, as ``kcat -C`` shows a topic.

One message a line: id, partition, offset, then the payload as JSON (a payload that is not
JSON, e.g. ``payload_column`` bytes, is shown escaped and marked ``[not JSON]``); with
several topics the line starts with the topic. By default the last N messages (10) of each
partition, then it exits; ``--from-start`` starts at offset 0; ``--follow`` waits for new
messages until Ctrl-C. It reads through the SDK and leaves no trace on the server (no
consumer offset stored, no consumer group joined: ``pgsource/sink/reader.py``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass

from pgsource.config.model import Config
from pgsource.ops.admin.common import find_table

LAST = 10  # messages per partition by default
PAGE = 1000  # messages per poll
FOLLOW_PAUSE = 0.5  # seconds between polls once caught up (--follow)


@dataclass
class TailPlan:
    topics: list[str]  # in the order of source.tables, each once
    last: int | None  # the last N of each partition (None: from offset 0)
    limit: int | None  # at most this many per partition from offset 0 (None: all)
    follow: bool


def plan_tail(config: Config, table_name: str | None, count: int | None, from_start: bool, follow: bool) -> TailPlan:
    """The topics to read: every table's (custom_query's), or the one of ``--table``."""
    if table_name is not None:
        tables = [find_table(config, table_name)]
    else:
        tables = list(config.source.tables)
    topics = [config.iggy.topic_for(table) for table in tables]
    if not tables and config.source.custom_query:
        topics = [config.iggy.topic.format(table="custom_query", schema="public")]
    topics = list(dict.fromkeys(topics))
    if from_start:
        return TailPlan(topics, None, count, follow)
    return TailPlan(topics, LAST if count is None else count, None, follow)


def format_message(message, topic: str | None = None) -> str:
    """``[topic ]id 0x… partition P offset O <payload>``: JSON as sent (one line), anything else escaped."""
    payload = message.payload
    try:
        text = payload.decode("utf-8")
        json.loads(text)
        shown = text.replace("\r", " ").replace("\n", " ")  # JSON allows these only between tokens
    except (UnicodeDecodeError, ValueError):
        shown = "[not JSON] " + repr(payload)
    where = f"topic {topic} " if topic else ""
    return f"{where}id 0x{message.id:032x} partition {message.partition} offset {message.offset} {shown}"


async def run_tail(config: Config, plan: TailPlan, emit: Callable[[str], None], note: Callable[[str], None]) -> int:
    """Print what the plan asks; returns the messages printed. ``--follow`` returns only when cancelled."""
    from pgsource.sink.reader import TopicReader

    reader = await TopicReader(config.iggy).connect()
    stream = config.iggy.stream
    named = len(plan.topics) > 1
    next_offset: dict[tuple[str, int], int] = {}  # (topic, partition) -> the next offset to read
    printed = 0
    missing_told: set[str] = set()
    while True:
        for topic in plan.topics:
            partitions = await reader.partitions(stream, topic)
            if partitions is None:
                if topic not in missing_told:
                    note(f"Iggy topic {stream}/{topic} does not exist (yet)" + ("; waiting for it" if plan.follow else ""))
                    missing_told.add(topic)
                continue
            for partition in partitions:
                key = (topic, partition.id)
                limit = None  # once a partition was read: everything after it (--follow)
                if key not in next_offset:
                    next_offset[key] = _first_offset(plan, partition)
                    limit = plan.last if plan.last is not None else plan.limit
                while True:
                    want = PAGE if limit is None else min(PAGE, limit)
                    if want <= 0:
                        break
                    messages = await reader.read(stream, topic, partition.id, next_offset[key], want)
                    for message in messages:
                        emit(format_message(message, topic if named else None))
                    printed += len(messages)
                    if not messages:
                        break
                    next_offset[key] = messages[-1].offset + 1
                    limit = None if limit is None else limit - len(messages)
        if not plan.follow:
            return printed
        await asyncio.sleep(FOLLOW_PAUSE)


def _first_offset(plan: TailPlan, partition) -> int:
    if plan.last is None or partition.messages == 0:
        return 0
    return max(0, partition.current_offset + 1 - plan.last)
