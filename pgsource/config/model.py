"""The configuration as frozen, validated records.

``source:`` keeps the seed connector's keys with their names, defaults and meaning;
``iggy:``, ``state:``, ``workers:`` and ``metrics:`` are the service's own sections.
Validation is pydantic's; ``load.py`` turns its errors into messages that name the key.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pgsource.config.duration import parse_duration

_FROZEN = ConfigDict(extra="forbid", frozen=True)


class Mode(str, Enum):
    POLLING = "polling"
    CDC = "cdc"


class Operation(str, Enum):
    INSERT = "INSERT"
    UPDATE = "UPDATE"
    DELETE = "DELETE"
    TRUNCATE = "TRUNCATE"


class TableConfig(BaseModel):
    """One table as written in ``tables:``; a plain string there is ``{name: ...}``."""

    model_config = _FROZEN

    name: str
    schema_: str = Field("public", alias="schema")
    tracking_column: str | None = None
    chunks: int = Field(1, ge=1, le=1024)
    lag: float | None = None  # overrides source.lag for this table

    @field_validator("lag", mode="before")
    @classmethod
    def _lag(cls, value):
        return None if value is None else parse_duration(value)

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value):
        if isinstance(value, str):
            schema, dot, name = value.partition(".")
            return {"schema": schema, "name": name} if dot else {"name": value}
        return value

    @property
    def qualified(self) -> str:
        """The table as it appears in messages: bare in ``public``, ``schema.name`` elsewhere."""
        return self.name if self.schema_ == "public" else f"{self.schema_}.{self.name}"


class SourceConfig(BaseModel):
    """The seed connector's keys, plus pgsource's optional ones (documented in the README)."""

    model_config = _FROZEN

    connection_string: str
    mode: Mode
    tables: list[TableConfig] = Field(default_factory=list)
    poll_interval: float = 1.0
    batch_size: int = Field(1000, ge=1, le=1_000_000)
    tracking_column: str = "id"
    initial_offset: str | int | float | None = None
    max_connections: int = Field(10, ge=1)
    enable_wal_cdc: bool = False
    custom_query: str | None = None
    snake_case_columns: bool = False
    include_metadata: bool = True
    publication_name: str = "iggy_publication"
    replication_slot: str = "iggy_slot"
    capture_operations: list[Operation] = Field(
        default_factory=lambda: [Operation.INSERT, Operation.UPDATE, Operation.DELETE]
    )
    cdc_backend: Literal["builtin", "pg_replicate"] = "builtin"
    # pgsource's own additions
    delete_after_read: bool = False
    processed_column: str | None = None
    allow_non_unique_tracking: bool = False
    cdc_transport: Literal["sql", "replication"] = "replication"
    snapshot: Literal["initial", "never"] = "never"
    max_in_flight_batches: int = Field(8, ge=1, le=1024)
    # Polling: hold the committed offset behind transactions still in progress and re-read
    # what they commit late (README "Rows that commit late"); "off" accepts missing them.
    late_commits: Literal["auto", "off"] = "auto"
    lag: float = 0.0  # seal a read range only this long after it was read (values no horizon protects)
    # A statement failing for a reason that may pass (deadlock, lock timeout, cancel) is retried
    # this often, after retry_delay, then twice that...; a worker dying in the same statement
    # more often than this in a row stops the service (exit 8). Connection outages retry forever.
    max_retries: int = Field(3, ge=0, le=100)
    retry_delay: float = 1.0

    @field_validator("poll_interval", "lag", "retry_delay", mode="before")
    @classmethod
    def _duration(cls, value):
        return parse_duration(value)

    @field_validator("capture_operations", mode="before")
    @classmethod
    def _upper(cls, value):
        if isinstance(value, list):
            return [item.upper() if isinstance(item, str) else item for item in value]
        return value

    @field_validator("custom_query")
    @classmethod
    def _placeholders(cls, value):
        if value is None:
            return value
        missing = [p for p in ("$1", "$2") if not re.search(re.escape(p) + r"(?!\d)", value)]
        if missing:
            raise ValueError(
                f"custom_query must use $1 (the last offset) and $2 (the batch size) as bound parameters; "
                f"missing {', '.join(missing)}: e.g. SELECT * FROM t WHERE id > $1 ORDER BY id LIMIT $2"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self):
        if self.enable_wal_cdc and self.mode is Mode.POLLING:
            raise ValueError("enable_wal_cdc: true contradicts mode: polling; write mode: cdc (which implies it)")
        if self.mode is Mode.POLLING and not self.tables and not self.custom_query:
            raise ValueError("tables: list at least one table (or give custom_query)")
        if self.mode is Mode.CDC and not self.tables:
            raise ValueError("tables: cdc mode needs the tables of the publication")
        if self.custom_query and self.initial_offset is None:
            raise ValueError("initial_offset: custom_query needs it, as the value of $1 before the first row")
        if self.delete_after_read and self.processed_column:
            raise ValueError("delete_after_read and processed_column exclude each other: choose one")
        if self.custom_query and (self.delete_after_read or self.processed_column):
            raise ValueError("delete_after_read/processed_column need tables, not custom_query")
        names = [table.qualified for table in self.tables]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"tables: listed more than once: {', '.join(duplicates)}")
        return self

    @property
    def cdc(self) -> bool:
        return self.mode is Mode.CDC


class Partitioning(str, Enum):
    PRIMARY_KEY = "primary_key"
    BALANCED = "balanced"
    TABLE = "table"


class IggyConfig(BaseModel):
    model_config = _FROZEN

    address: str = "127.0.0.1:8090"
    username: str = "iggy"
    password: str = "iggy"
    stream: str = "pgsource"
    topic: str = "{table}"
    partitions: int = Field(1, ge=1, le=1000)
    create_missing: bool = True
    partitioning: Partitioning = Partitioning.PRIMARY_KEY
    send_timeout: float = 30.0

    @field_validator("address")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{value!r} is not host:port")
        return value

    @field_validator("send_timeout", mode="before")
    @classmethod
    def _duration(cls, value):
        return parse_duration(value)

    @field_validator("topic")
    @classmethod
    def _template(cls, value: str) -> str:
        unknown = set(re.findall(r"\{([^}]*)\}", value)) - {"table", "schema"}
        if unknown:
            raise ValueError(f"topic template knows {{table}} and {{schema}}, not {', '.join(sorted(unknown))}")
        return value

    def topic_for(self, table: TableConfig) -> str:
        return self.topic.format(table=table.name, schema=table.schema_)


class StateConfig(BaseModel):
    model_config = _FROZEN

    dir: str = "./pgsource-state"
    # Polling offsets are written (fsync'd) at most this often; always after Iggy's ack, and
    # always on a graceful stop. A crash re-sends at most what was acked in one interval
    # (same ids). 0 = after every acknowledged batch. (Kafka Connect and Debezium: 60 s.)
    commit_interval: float = Field(0.1, ge=0)

    @field_validator("commit_interval", mode="before")
    @classmethod
    def _duration(cls, value):
        return parse_duration(value)


class MetricsConfig(BaseModel):
    model_config = _FROZEN

    port: int | None = Field(None, ge=0, le=65535)
    host: str = "0.0.0.0"


class ReadinessConfig(BaseModel):
    """When ``/readyz`` says "stuck": work waits and nothing moved for ``stall_after``."""

    model_config = _FROZEN

    stall_after: float = Field(60.0, gt=0)

    @field_validator("stall_after", mode="before")
    @classmethod
    def _duration(cls, value):
        return parse_duration(value)


class SupervisorConfig(BaseModel):
    """How hard the supervisor tries before it gives up on a worker."""

    model_config = _FROZEN

    restart_backoff: float = 1.0
    max_restarts: int = Field(5, ge=0)
    restart_window: float = 60.0
    stop_timeout: float = 15.0
    heartbeat_timeout: float = 120.0  # a worker silent this long is killed and restarted

    @field_validator("restart_backoff", "restart_window", "stop_timeout", "heartbeat_timeout", mode="before")
    @classmethod
    def _duration(cls, value):
        return parse_duration(value)


class Config(BaseModel):
    """The whole file."""

    model_config = _FROZEN

    source: SourceConfig
    iggy: IggyConfig = IggyConfig()
    state: StateConfig = StateConfig()
    workers: int | dict[str, list[str]] = 1
    metrics: MetricsConfig = MetricsConfig()
    supervisor: SupervisorConfig = SupervisorConfig()
    readiness: ReadinessConfig = ReadinessConfig()

    @field_validator("workers")
    @classmethod
    def _workers(cls, value):
        if isinstance(value, int) and not 1 <= value <= 256:
            raise ValueError("workers: a number from 1 to 256, or a mapping of worker name to tables")
        if isinstance(value, dict) and not value:
            raise ValueError("workers: the mapping is empty")
        return value

    @model_validator(mode="after")
    def _mapping_covers_tables(self):
        if isinstance(self.workers, dict):
            known = {table.qualified for table in self.source.tables}
            seen: list[str] = []
            for worker, tables in self.workers.items():
                for name in tables:
                    if name not in known:
                        raise ValueError(f"workers.{worker}: table {name!r} is not in source.tables")
                    seen.append(name)
            twice = sorted({name for name in seen if seen.count(name) > 1})
            if twice:
                raise ValueError(f"workers: table(s) assigned to more than one worker: {', '.join(twice)}")
            missing = sorted(known - set(seen))
            if missing:
                raise ValueError(f"workers: table(s) assigned to no worker: {', '.join(missing)}")
        return self
