"""``${VAR}`` and ``${VAR:-default}`` in configuration values, so secrets stay out of files."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from pgsource.errors import ConfigError

_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value: Any, environ: Mapping[str, str] | None = None, path: str = "") -> Any:
    """Replace references in every string of a parsed YAML tree; a missing variable names its key."""
    env = os.environ if environ is None else environ
    if isinstance(value, str):

        def substitute(match: re.Match) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ConfigError(f"{path or 'config'}: environment variable {name} is not set (write ${{{name}:-default}} for a default)")

        return _REFERENCE.sub(substitute, value)
    if isinstance(value, dict):
        return {key: expand_env(item, env, f"{path}.{key}" if path else str(key)) for key, item in value.items()}
    if isinstance(value, list):
        return [expand_env(item, env, f"{path}[{index}]") for index, item in enumerate(value)]
    return value
