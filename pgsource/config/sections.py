"""The service's own sections of the configuration: ``iggy:`` (with ``tls:`` and ``topic_settings:``),
``state:``, ``metrics:``, ``log:``, ``readiness:``, ``supervisor:`` and ``shard:``.

``pgsource/config/model.py`` holds ``source:`` (the seed connector's keys) and ``Config``, which
puts these together; every record here is frozen and refuses unknown keys, as there.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pgsource.config.address import Address, parse_address
from pgsource.config.duration import Duration, format_duration, parse_duration
from pgsource.config.secrets import resolve_iggy_files
from pgsource.config.size import parse_size


class NamedTable(Protocol):
    """What naming a topic needs of a table (``TableConfig`` has it; typed here so that this module
    needs nothing of ``model.py``, which builds on it)."""

    name: str
    schema_: str

_FROZEN = ConfigDict(extra="forbid", frozen=True)
_NUMERIC_NAME = re.compile(r"\+?[0-9]+")


class Partitioning(str, Enum):
    PRIMARY_KEY = "primary_key"
    BALANCED = "balanced"
    TABLE = "table"


class IggyTlsConfig(BaseModel):
    """``iggy.tls:``: TLS to Iggy's TCP transport, as the SDK's ``TcpConfig`` offers it."""

    model_config = _FROZEN

    enabled: bool = False
    ca_file: str | None = None  # PEM of the CA that signed the server's certificate (default: the system's roots)
    domain: str | None = None  # the name the certificate must carry (default: the host of iggy.address)
    validate_certificate: bool = True  # false accepts any certificate: encryption without authentication

    @model_validator(mode="after")
    def _ca_readable(self):
        if self.enabled and self.ca_file is not None:
            try:
                with open(self.ca_file, "rb"):
                    pass
            except OSError as exc:
                raise ValueError(f"ca_file: cannot read {self.ca_file}: {exc.strerror or exc}") from None
        return self


_U64_MAX = 2**64 - 1  # with 0, reserved on the wire (server default, never/unlimited)


class TopicSettingsConfig(BaseModel):
    """``iggy.topic_settings:``: what a topic pgsource creates is given (an existing topic is never altered).

    ``server_default`` sends nothing, so the server's own configuration decides.
    """

    model_config = _FROZEN

    message_expiry: float | Literal["never", "server_default"] = "server_default"  # seconds, or a word
    max_size: int | Literal["unlimited", "server_default"] = "server_default"  # bytes, or a word
    compression: Literal["none", "gzip"] = "none"

    @field_validator("message_expiry", mode="before")
    @classmethod
    def _expiry(cls, value):
        if isinstance(value, bool):  # worded as the boolean check in load.py says it: one line, not two
            raise ValueError(f"{str(value).lower()} is a boolean, not a number")
        if value in ("never", "server_default"):
            return value
        seconds = parse_duration(value, days=True)
        if not 0 < round(seconds * 1_000_000) < _U64_MAX:
            raise ValueError(f"{value!r}: give at least 1 microsecond and less than 2^64-1 of them"
                             f" (or never / server_default)")
        return seconds

    @field_validator("max_size", mode="before")
    @classmethod
    def _size(cls, value):
        if isinstance(value, bool):
            raise ValueError(f"{str(value).lower()} is a boolean, not a number")
        if value in ("unlimited", "server_default"):
            return value
        size = parse_size(value)
        if not 0 < size < _U64_MAX:
            raise ValueError(f"{value!r}: give more than 0 and less than 2^64-1 bytes (or unlimited / server_default)")
        return size

    def describe(self) -> str:
        """The settings as one would write them, for the create log line and errors."""
        expiry = self.message_expiry if isinstance(self.message_expiry, str) else format_duration(self.message_expiry)
        size = self.max_size if isinstance(self.max_size, str) else f"{self.max_size} bytes"
        return f"message_expiry {expiry}, max_size {size}, compression {self.compression}"


class IggyConfig(BaseModel):
    model_config = _FROZEN

    address: str = "127.0.0.1:8090"
    username: str = "iggy"
    password: str = "iggy"
    password_file: str | None = None  # the password from a file (a Kubernetes secret), read at start
    stream: str = "pgsource"
    topic: str = "{table}"
    partitions: int = Field(1, ge=1, le=1000)
    create_missing: bool = True
    partitioning: Partitioning = Partitioning.PRIMARY_KEY
    send_timeout: Duration = 30.0
    tls: IggyTlsConfig = IggyTlsConfig()
    topic_settings: TopicSettingsConfig = TopicSettingsConfig()  # for the topics create_missing creates
    # CDC, source.transaction_markers: messages: the topic of the BEGIN and COMMIT messages
    transaction_topic: str = "transactions"

    @model_validator(mode="before")
    @classmethod
    def _secret_files(cls, value):
        return resolve_iggy_files(value)

    @field_validator("address", mode="before")
    @classmethod
    def _seed_list(cls, value):
        """A list of seed nodes (a cluster) is kept as ``host:port,host:port`` (see ``seeds``)."""
        if isinstance(value, list):
            if not value or not all(isinstance(seed, str) for seed in value):
                raise ValueError("a list of seed nodes needs at least one, each a host:port string")
            return ",".join(seed.strip() for seed in value)
        return value

    @field_validator("address")
    @classmethod
    def _host_port(cls, value: str) -> str:
        seeds = [seed.strip() for seed in value.split(",")]
        for seed in seeds:
            parse_address(seed)  # one grammar (pgsource/config/address.py); the error says the expected form
        return ",".join(seeds)

    @property
    def seeds(self) -> list[str]:
        """The nodes pgsource may connect through, in order: one, or a cluster's (``address: [a:8090, b:8090]``)."""
        return self.address.split(",")

    @property
    def server(self) -> Address:
        """The first seed of ``address`` parsed: host (without brackets) and port."""
        return parse_address(self.seeds[0])

    @property
    def tls_domain(self) -> str:
        """The name Iggy's certificate must carry: ``tls.domain``, else the host of ``address`` (its first seed)."""
        return self.tls.domain or self.server.host


    @field_validator("topic")
    @classmethod
    def _template(cls, value: str) -> str:
        unknown = set(re.findall(r"\{([^}]*)\}", value)) - {"table", "schema"}
        if unknown:
            raise ValueError(f"topic template knows {{table}} and {{schema}}, not {', '.join(sorted(unknown))}")
        if "{" not in value:
            iggy_name_problem("topic", value, raise_it=True)
        return value

    @field_validator("transaction_topic")
    @classmethod
    def _transaction_topic(cls, value: str) -> str:
        iggy_name_problem("transaction_topic", value, raise_it=True)
        return value

    @field_validator("stream")
    @classmethod
    def _stream_name(cls, value: str) -> str:
        iggy_name_problem("stream", value, raise_it=True)
        return value

    def topic_for(self, table: NamedTable) -> str:
        return self.topic.format(table=table.name, schema=table.schema_)


def iggy_name_problem(what: str, name: str, raise_it: bool = False) -> str | None:
    """Why Iggy cannot take ``name`` as a stream or topic name, or None.

    The SDK turns a name that parses as a u32 (digits, optionally after ``+``: ``2024``,
    ``+5``) into a numeric identifier: a topic named ``2024`` would be looked up as the
    topic with id 2024, never found, and created again on every start (or another topic
    written to). Names made only of digits are refused whatever their size. Iggy names
    have 1 to 255 bytes.
    """
    problem = None
    if not 0 < len(name.encode()) <= 255:
        problem = f"{what} name {name!r} must have 1 to 255 bytes"
    elif _NUMERIC_NAME.fullmatch(name):
        problem = (f"{what} name {name!r} is a number, which the Iggy SDK sends as a numeric id, not as a name;"
                   f" choose a name with a letter in it")
    if problem and raise_it:
        raise ValueError(problem)
    return problem


class StateConfig(BaseModel):
    model_config = _FROZEN

    dir: str = "./pgsource-state"
    # Polling offsets are written (fsync'd) at most this often; always after Iggy's ack, and
    # always on a graceful stop. A crash re-sends at most what was acked in one interval
    # (same ids). 0 = after every acknowledged batch. (Kafka Connect and Debezium: 60 s.)
    commit_interval: Duration = Field(0.1, ge=0)



class MetricsConfig(BaseModel):
    model_config = _FROZEN

    port: int | None = Field(None, ge=0, le=65535)
    host: str = "0.0.0.0"


class LogConfig(BaseModel):
    """``log:``: one line per record, text or JSON, in every process (docs/operations.md "Logs")."""

    model_config = _FROZEN

    format: Literal["text", "json"] = "text"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value):
        return value.upper() if isinstance(value, str) else value
class ReadinessConfig(BaseModel):
    """When ``/readyz`` says "stuck": work waits and nothing moved for ``stall_after``."""

    model_config = _FROZEN

    stall_after: Duration = Field(60.0, gt=0)



class SupervisorConfig(BaseModel):
    """How hard the supervisor tries before it gives up on a worker."""

    model_config = _FROZEN

    restart_backoff: Duration = 1.0
    max_restarts: int = Field(5, ge=0)
    restart_window: Duration = 60.0
    stop_timeout: Duration = 15.0
    heartbeat_timeout: Duration = 120.0  # a worker silent this long is killed and restarted



class ShardConfig(BaseModel):
    """This replica's share of the tables when several replicas split them (a StatefulSet's pod ordinal)."""

    model_config = _FROZEN

    index: int = Field(ge=0)
    count: int = Field(ge=1, le=1024)

    @model_validator(mode="after")
    def _index_in_range(self):
        if self.index >= self.count:
            raise ValueError(f"shard.index {self.index} is not below shard.count {self.count} (indexes start at 0)")
        return self
