"""Creating a topic on a server that refuses the create-topic options apache-iggy 0.9.0 sends.

The wheel always sends ``durability`` and ``consumer_offset_durability`` with CreateTopic; a
server older than the wheel (the 2026-08-21 source snapshot, 0.9.0-edge.5) refuses them with
UnsupportedOptionKey. Such a topic is created again without any option: the server's own
defaults for everything, ``iggy.topic_settings`` included, which the warning names.
"""

from __future__ import annotations

import struct

from pgsource.config.duration import format_duration
from pgsource.config.model import TopicSettingsConfig
from pgsource.errors import SinkRefused

CREATE_TOPIC_CODE = 302  # the command code ``send_binary_request`` maps to the CreateTopic operation
WHEEL_OPTIONS = ("durability", "consumer_offset_durability")


def refuses_options(exc: SinkRefused) -> bool:
    return "unsupported option key" in str(exc).lower()


def encode_create_topic_request(stream: str, topic: str, partitions: int) -> bytes:
    """``[stream id][partitions u32][name]`` and no options (names are never numeric: see iggy_name_problem)."""
    stream_bytes, topic_bytes = stream.encode(), topic.encode()
    return (bytes((2, len(stream_bytes))) + stream_bytes + struct.pack("<I", partitions)
            + bytes((len(topic_bytes),)) + topic_bytes)


def describe_fallback(address: str, where: str, partitions: int, settings: TopicSettingsConfig) -> str:
    """The one WARNING: what the server refused, what was done instead, what was not applied."""
    expiry = settings.message_expiry
    lost = [] if expiry == "server_default" else [
        f"message_expiry {expiry if isinstance(expiry, str) else format_duration(expiry)}"]
    if settings.max_size != "server_default":
        lost.append(f"max_size {settings.max_size}")
    if settings.compression != "none":
        lost.append(f"compression {settings.compression}")
    applied = ("iggy.topic_settings NOT applied: " + ", ".join(lost) + " (set them with Iggy's own tools)") if lost \
        else "iggy.topic_settings asks for nothing else"
    return (f"Iggy at {address} refused the create-topic options apache-iggy 0.9.0 sends ({', '.join(WHEEL_OPTIONS)}:"
            f" Unsupported option key), as a server older than the SDK does; created {where} without options:"
            f" {partitions} partition(s), everything else the server's defaults; {applied}")
