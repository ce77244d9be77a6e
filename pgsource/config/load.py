"""Reading a configuration file: YAML (JSON is YAML), ``${VAR}`` expansion, validation.

Every problem becomes one line that names the key (``source.batch_size: ...``) and, for
an unknown key, the nearest valid one; all lines are raised together as one ConfigError.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from pgsource.config.env import expand_env
from pgsource.config.model import Config
from pgsource.errors import ConfigError


def load_config(path: str, environ: Mapping[str, str] | None = None) -> Config:
    """Read, expand and validate the file at ``path``."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    return parse_config(text, environ, origin=path)


def parse_config(text: str, environ: Mapping[str, str] | None = None, origin: str = "<config>") -> Config:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{origin}: not valid YAML/JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: expected a mapping with a 'source:' section")
    return build_config(expand_env(raw, environ))


def build_config(raw: dict[str, Any]) -> Config:
    """Validate, then narrow to this replica's shard of the tables (``pgsource/sharding.py``)."""
    from pgsource.sharding import apply_shard

    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError("\n".join(describe_errors(exc))) from None
    return apply_shard(config)


def describe_errors(exc: ValidationError) -> list[str]:
    lines = []
    for error in exc.errors():
        loc = [part for part in error["loc"] if not _is_union_tag(part)]
        key = _dotted(loc) or "config"
        if error["type"] == "extra_forbidden":
            hint = _suggest(loc)
            lines.append(f"{key}: unknown key" + (f"; did you mean '{hint}'?" if hint else ""))
        elif error["type"] == "missing":
            lines.append(f"{key}: required")
        else:
            message = error["msg"].removeprefix("Value error, ")
            lines.append(f"{key}: {message}")
    return list(dict.fromkeys(lines))


def _is_union_tag(part: Any) -> bool:
    return isinstance(part, str) and (part in ("int", "str", "float", "none") or part.startswith("dict["))


def _dotted(loc: list) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _suggest(loc: list) -> str | None:
    model: type[BaseModel] | None = Config
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part) or next(
            (f for f in model.model_fields.values() if f.alias == part), None
        )
        model = _model_of(field.annotation) if field else None
    if model is None:
        return None
    names = [field.alias or name for name, field in model.model_fields.items()]
    close = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.5)
    return close[0] if close else None


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_of(arg)
        if found:
            return found
    return None
