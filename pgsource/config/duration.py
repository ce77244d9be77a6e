"""Durations as users write them: ``"500ms"``, ``"30s"``, ``"5m"``, ``"1h"`` or plain seconds."""

from __future__ import annotations

import math
import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")


def parse_duration(value: str | int | float) -> float:
    """Seconds as a float; raises ValueError with the accepted forms on anything else."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} is not a duration: use e.g. '500ms', '30s', '5m', '1h'")
        if value < 0:
            raise ValueError(f"{value!r} is negative")
        return float(value)
    match = _PATTERN.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a duration: use e.g. '500ms', '30s', '5m', '1h'")
    number, unit = match.groups()
    return float(number) * _UNITS[unit or "s"]
