"""Durations as users write them: ``"500ms"``, ``"30s"``, ``"5m"``, ``"1h"`` or plain seconds.

Days (``"7d"``) only where retention is meant (``days=True``: ``iggy.topic_settings.message_expiry``);
a poll interval or a timeout in days is more likely a typo than a wish.
"""

from __future__ import annotations

import math
import re
from typing import Annotated

from pydantic import BeforeValidator

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")


def parse_duration(value: str | int | float, days: bool = False) -> float:
    """Seconds as a float; raises ValueError with the accepted forms on anything else."""
    forms = "'500ms', '30s', '5m', '1h'" + (", '7d'" if days else "")
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} is not a duration: use e.g. {forms}")
        if value < 0:
            raise ValueError(f"{value!r} is negative")
        return float(value)
    match = _PATTERN.match(str(value))
    if not match or match.group(2) == "d" and not days:
        raise ValueError(f"{value!r} is not a duration: use e.g. {forms}")
    number, unit = match.groups()
    return float(number) * _UNITS[unit or "s"]


def format_duration(seconds: float) -> str:
    """The way a user would write it back (``7d``, ``12h``, ``90s``, ``0.5s``): for logs and errors."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


# The one duration type of the configuration: a field annotated so takes any of the forms above
# and holds seconds (``poll_interval: Duration = 1.0``).
Duration = Annotated[float, BeforeValidator(parse_duration)]
OptionalDuration = Annotated[float | None, BeforeValidator(lambda value: None if value is None else parse_duration(value))]
