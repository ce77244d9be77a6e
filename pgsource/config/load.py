"""Reading a configuration file: YAML (JSON is YAML), ``${VAR}`` expansion, validation.

Every problem becomes one line that names the key (``source.batch_size: ...``) and, for
an unknown key, the nearest valid one; all lines are raised together as one ConfigError.
"""

from __future__ import annotations

import difflib
import re
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
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text file (not UTF-8 at byte {exc.start})") from None
    return parse_config(text, environ, origin=path)


def parse_config(text: str, environ: Mapping[str, str] | None = None, origin: str = "<config>") -> Config:
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as exc:
        raise ConfigError(f"{origin}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{origin}: not valid YAML/JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: expected a mapping with a 'source:' section")
    return build_config(expand_env(raw, environ))


class _DuplicateKey(ValueError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML keeps the last of two equal keys silently; a configuration must not (which one was meant?)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults` may be overridden by design
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                line = key_node.start_mark.line + 1
                raise _DuplicateKey(f"line {line}: key {key!r} is given twice in the same mapping")
            if isinstance(key, (str, int, float, bool)):
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def build_config(raw: dict[str, Any]) -> Config:
    """Validate, then narrow to this replica's shard of the tables (``pgsource/config/shard.py``)."""
    from pgsource.config.shard import apply_shard

    lines = _booleans_for_numbers(raw, Config, [])
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError("\n".join(dict.fromkeys(lines + describe_errors(exc)))) from None
    if lines:
        raise ConfigError("\n".join(lines))
    return apply_shard(config)


def _booleans_for_numbers(raw: Any, model: type[BaseModel], loc: list) -> list[str]:
    """``batch_size: true`` would pass as 1 (pydantic's lax int): a boolean is never a count."""
    if not isinstance(raw, dict):
        return []
    lines = []
    for name, field in model.model_fields.items():
        key = field.alias or name
        if key not in raw:
            continue
        value, where = raw[key], [*loc, key]
        args = getattr(field.annotation, "__args__", (field.annotation,))
        if isinstance(value, bool) and any(arg in (int, float) for arg in args) and bool not in args:
            lines.append(f"{_dotted(where)}: {str(value).lower()} is a boolean, not a number")
        inner = _model_of(field.annotation)
        if inner is not None:
            items = enumerate(value) if isinstance(value, list) else [(None, value)]
            for index, item in items:
                lines += _booleans_for_numbers(item, inner, where if index is None else [*where, index])
    return lines


def describe_errors(exc: ValidationError) -> list[str]:
    lines = []
    alternatives: dict[str, list[str]] = {}  # key -> what each member of a union wanted
    for error in exc.errors():
        loc = [part for part in error["loc"] if not _is_union_tag(part)]
        key = _dotted(loc) or "config"
        if error["type"] == "extra_forbidden":
            hint = _suggest(loc)
            lines.append(f"{key}: unknown key" + (f"; did you mean '{hint}'?" if hint else ""))
        elif error["type"] == "missing":
            lines.append(f"{key}: required")
        elif len(loc) < len(error["loc"]) and error["msg"].startswith("Input should be "):
            if key not in alternatives:
                alternatives[key] = []
                lines.append(key)  # filled below: one line per key, not one per union member
            alternatives[key].append(error["msg"].removeprefix("Input should be ").split(", ")[0])
        else:
            message = error["msg"].removeprefix("Value error, ")
            lines.append(_name_the_key(loc, key, message))
    lines = [f"{line}: Input should be {' or '.join(dict.fromkeys(alternatives[line]))}" if line in alternatives
             else line for line in lines]
    return list(dict.fromkeys(lines))


_LEADING_KEYS = re.compile(r"^([A-Za-z_]\w*(?:\[\d+\])?(?:\.\w+)?(?:, [A-Za-z_]\w*(?:\[\d+\])?(?:\.\w+)?)*): ")


def _name_the_key(loc: list, key: str, message: str) -> str:
    """``source: snapshot: ...`` (a check across keys of a section) as ``source.snapshot: ...``."""
    match = _LEADING_KEYS.match(message)
    model = _model_at(loc)
    if match is None or model is None or key == "config" and model is not Config:
        return f"{key}: {message}"
    names = match.group(1).split(", ")
    fields = {field.alias or name for name, field in model.model_fields.items()}
    if not all(re.match(r"\w+", name).group() in fields for name in names):
        return f"{key}: {message}"
    prefix = "" if key == "config" else key + "."
    return ", ".join(prefix + name for name in names) + ": " + message[match.end():]


def _model_at(loc: list) -> type[BaseModel] | None:
    model: type[BaseModel] | None = Config
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part) or next((f for f in model.model_fields.values() if f.alias == part), None)
        model = _model_of(field.annotation) if field else None
    return model


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
