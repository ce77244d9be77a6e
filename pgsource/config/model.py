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

from pgsource.config.duration import Duration, OptionalDuration, format_duration, parse_duration
from pgsource.config.names import message_name, parse_table_reference, table_reference
from pgsource.config.secrets import resolve_iggy_files, resolve_source_files
from pgsource.config.size import parse_size
from pgsource.events import PUBLISHER

_FROZEN = ConfigDict(extra="forbid", frozen=True)
_NUMERIC_NAME = re.compile(r"\+?[0-9]+")


class Mode(str, Enum):
    POLLING = "polling"
    CDC = "cdc"


class Operation(str, Enum):
    INSERT = "INSERT"
    UPDATE = "UPDATE"
    DELETE = "DELETE"
    TRUNCATE = "TRUNCATE"


class PayloadFormat(str, Enum):
    """How ``payload_column`` is read (the Rust connector's names; ``raw`` and ``jsonb`` are aliases)."""

    BYTEA = "bytea"
    TEXT = "text"
    JSON_DIRECT = "json_direct"


_PAYLOAD_ALIASES = {"raw": "bytea", "jsonb": "json_direct"}


class TableConfig(BaseModel):
    """One table as written in ``tables:``: ``{schema, name, ...}``, or a string ``table`` or
    ``schema.table`` (a dotted string is always schema.table: ``pgsource/config/names.py``)."""

    model_config = _FROZEN

    name: str
    schema_: str = Field("public", alias="schema")
    tracking_column: str | None = None
    chunks: int = Field(1, ge=1, le=1024)
    lag: OptionalDuration = None  # overrides source.lag for this table
    shard: int | None = Field(None, ge=0)  # pins the table to this shard (else a hash of its name picks one)
    columns: list[str] | None = None  # only these columns in `data` (and in a CDC publication's column list)
    exclude_columns: list[str] = Field(default_factory=list)  # every column but these
    row_filter: str | None = None  # an SQL predicate on the row: polling's WHERE, a CDC publication's WHERE

    @model_validator(mode="after")
    def _one_column_list(self):
        if self.columns is not None and self.exclude_columns:
            raise ValueError("columns and exclude_columns exclude each other: give one list")
        if self.columns is not None and not self.columns:
            raise ValueError("columns: list at least one column (or leave it out for all)")
        return self


    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value):
        if isinstance(value, str):
            schema, name = parse_table_reference(value)
            return {"schema": schema, "name": name}
        return value

    @field_validator("name", "schema_")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not value:
            raise ValueError("must not be empty")
        if "\x00" in value:
            raise ValueError("a PostgreSQL name cannot hold a NUL character")
        return value

    @property
    def qualified(self) -> str:
        """The table's unambiguous reference (state keys, ``workers`` mapping, logs): bare in
        ``public``, ``schema.name`` elsewhere, a part in double quotes only when it holds a dot or a quote."""
        return table_reference(self.schema_, self.name)

    @property
    def message_name(self) -> str:
        """``table_name`` in messages: PostgreSQL's names unquoted, ``schema.`` outside public."""
        return message_name(self.schema_, self.name)


# Keys only one mode reads; given explicitly in the other mode they are refused (not ignored).
CDC_ONLY_KEYS = ("publication_name", "replication_slot", "capture_operations", "cdc_backend", "cdc_transport",
                 "snapshot", "on_missing_slot")
POLLING_ONLY_KEYS = ("tracking_column", "initial_offset", "custom_query", "delete_after_read", "processed_column",
                     "allow_non_unique_tracking", "late_commits", "lag")
TABLE_POLLING_ONLY_KEYS = ("tracking_column", "lag")


class SourceConfig(BaseModel):
    """The seed connector's keys, plus pgsource's optional ones (documented in the README)."""

    model_config = _FROZEN

    connection_string: str
    # Kubernetes secrets: the whole connection string, or its password, from a file (read at start)
    connection_string_file: str | None = None
    password_file: str | None = None
    mode: Mode
    tables: list[TableConfig] = Field(default_factory=list)
    poll_interval: Duration = 1.0
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
    # CDC: a slot pgsource had streamed from is missing (dropped, or a failover to a server
    # without it): ``fail`` stops (exit 3); ``snapshot`` accepts the gap: a new slot and a
    # snapshot of every table (operation_type SELECT), then the stream.
    on_missing_slot: Literal["fail", "snapshot"] = "fail"
    max_in_flight_batches: int = Field(8, ge=1, le=1024)
    # Polling: hold the committed offset behind transactions still in progress and re-read
    # what they commit late (README "Rows that commit late"); "off" accepts missing them.
    late_commits: Literal["auto", "off"] = "auto"
    lag: Duration = 0.0  # seal a read range only this long after it was read (values no horizon protects)
    # A statement failing for a reason that may pass (deadlock, lock timeout, cancel) is retried
    # this often, after retry_delay, then twice that...; a worker dying in the same statement
    # more often than this in a row stops the service (exit 8). Connection outages retry forever.
    max_retries: int = Field(3, ge=0, le=100)
    retry_delay: Duration = 1.0
    # The Rust connector's remaining keys (README "Payload passthrough" and the key table)
    payload_column: str | None = None  # this column's value is the whole message (outbox), no envelope
    payload_format: PayloadFormat = PayloadFormat.BYTEA
    primary_key_column: str | None = None  # the key of delete/mark and partitions (default: the catalog's)
    verbose_logging: bool = False  # INFO lines for every batch

    @field_validator("payload_format", mode="before")
    @classmethod
    def _payload_alias(cls, value):
        return _PAYLOAD_ALIASES.get(value, value) if isinstance(value, str) else value

    @model_validator(mode="before")
    @classmethod
    def _secret_files(cls, value):
        return resolve_source_files(value)


    @field_validator("capture_operations", mode="before")
    @classmethod
    def _upper(cls, value):
        if isinstance(value, list):
            return [item.upper() if isinstance(item, str) else item for item in value]
        return value

    @field_validator("replication_slot")
    @classmethod
    def _slot_name(cls, value: str) -> str:
        """PostgreSQL's own rule for slot names, said now rather than by the first CREATE_REPLICATION_SLOT."""
        if not re.fullmatch(r"[a-z0-9_]{1,63}", value):
            raise ValueError(f"{value!r}: a replication slot name is 1 to 63 lower-case letters, digits and underscores")
        return value

    @field_validator("custom_query")
    @classmethod
    def _placeholders(cls, value):
        if value is None:
            return value
        has = {name for name in ("$1", "$2") if re.search(re.escape(name) + r"(?!\d)", value)}
        has |= {f"${name}" for name in re.findall(r"\$(offset|limit)\b", value)}
        missing = [name for name, alias in (("$1", "$offset"), ("$2", "$limit")) if name not in has and alias not in has]
        if missing:
            raise ValueError(
                f"custom_query must use $1 or $offset (the last offset) and $2 or $limit (the batch size), bound as"
                f" parameters; missing {', '.join(missing)}: e.g. SELECT * FROM t WHERE id > $1 ORDER BY id LIMIT $2"
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
        if self.custom_query and "$table" in self.custom_query and not self.tables:
            raise ValueError("custom_query uses $table: list the tables it runs for in tables")
        if self.custom_query and len(self.tables) > 1 and "$table" not in self.custom_query:
            raise ValueError("custom_query with several tables must name $table (it runs once per table)")
        if self.custom_query and self.payload_column:
            raise ValueError("payload_column reads a table's column; with custom_query, select the message itself")
        if self.mode is Mode.CDC:
            chunked = [table.qualified for table in self.tables if table.chunks > 1]
            if chunked:
                raise ValueError(
                    f"tables: chunks is a polling option; in cdc mode a table is read from one slot"
                    f" (chunks would give it two and send every change twice): remove chunks for {', '.join(chunked)}"
                )
        if self.custom_query and len(self.tables) > 1 and "$table" not in self.custom_query:
            raise ValueError("custom_query with several tables must name $table (it runs once per table)")
        self._keys_of_the_other_mode()
        names = [table.qualified for table in self.tables]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"tables: listed more than once: {', '.join(duplicates)}")
        return self

    def _keys_of_the_other_mode(self) -> None:
        """A key the chosen mode never reads, given explicitly, is a mistake worth saying (not a no-op)."""
        other, keys = (Mode.CDC, CDC_ONLY_KEYS) if self.mode is Mode.POLLING else (Mode.POLLING, POLLING_ONLY_KEYS)
        given = [key for key in keys if key in self.model_fields_set and getattr(self, key) is not None]
        given += [
            f"tables[{index}].{key}" for index, table in enumerate(self.tables) for key in TABLE_POLLING_ONLY_KEYS
            if self.mode is Mode.CDC and key in table.model_fields_set and getattr(table, key) is not None
        ]
        if given:
            raise ValueError(
                f"{', '.join(given)}: only read in mode: {other.value}, but mode is {self.mode.value}; remove"
                f" {'it' if len(given) == 1 else 'them'} (or change mode)"
            )

    @property
    def cdc(self) -> bool:
        return self.mode is Mode.CDC


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

    @model_validator(mode="before")
    @classmethod
    def _secret_files(cls, value):
        return resolve_iggy_files(value)

    @field_validator("address")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{value!r} is not host:port")
        return value


    @field_validator("topic")
    @classmethod
    def _template(cls, value: str) -> str:
        unknown = set(re.findall(r"\{([^}]*)\}", value)) - {"table", "schema"}
        if unknown:
            raise ValueError(f"topic template knows {{table}} and {{schema}}, not {', '.join(sorted(unknown))}")
        if "{" not in value:
            iggy_name_problem("topic", value, raise_it=True)
        return value

    @field_validator("stream")
    @classmethod
    def _stream_name(cls, value: str) -> str:
        iggy_name_problem("stream", value, raise_it=True)
        return value

    def topic_for(self, table: TableConfig) -> str:
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
    """``log:``: one line per record, text or JSON, in every process (README "Logs")."""

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


class Config(BaseModel):
    """The whole file."""

    model_config = _FROZEN

    source: SourceConfig
    iggy: IggyConfig = IggyConfig()
    state: StateConfig = StateConfig()
    workers: int | dict[str, list[str]] = 1
    metrics: MetricsConfig = MetricsConfig()
    supervisor: SupervisorConfig = SupervisorConfig()
    shard: ShardConfig | None = None
    log: LogConfig = LogConfig()

    @field_validator("workers", mode="before")
    @classmethod
    def _canonical_names(cls, value):
        """Mapping entries by the ``tables`` rule (``public.users`` is ``users``; ``{schema, name}``
        allowed), as their unambiguous references, which is what units are matched by."""
        if not isinstance(value, dict):
            return value
        out = {}
        for worker, tables in value.items():
            if not isinstance(tables, list):
                out[worker] = tables  # the type check names it
                continue
            out[worker] = [TableConfig.model_validate(entry).qualified if isinstance(entry, (str, dict)) else entry
                           for entry in tables]
        return out
    readiness: ReadinessConfig = ReadinessConfig()

    @field_validator("workers")
    @classmethod
    def _workers(cls, value):
        if isinstance(value, int) and not 1 <= value <= 256:
            raise ValueError("workers: a number from 1 to 256, or a mapping of worker name to tables")
        if isinstance(value, dict) and not value:
            raise ValueError("workers: the mapping is empty")
        if isinstance(value, dict) and PUBLISHER in value:
            raise ValueError(f"workers: {PUBLISHER!r} is the publisher process's name (in metrics, logs and"
                             " statuses); give this worker another name")
        return value

    @model_validator(mode="after")
    def _topic_names(self):
        """Every topic the template gives a table (or custom_query) is a name Iggy can take."""
        names = [(t.qualified, self.iggy.topic_for(t)) for t in self.source.tables]
        if self.source.custom_query:
            names.append(("custom_query", self.iggy.topic.format(table="custom_query", schema="public")))
        for table, topic in names:
            problem = iggy_name_problem("topic", topic)
            if problem:
                raise ValueError(f"iggy.topic: for table {table}, {problem}")
        return self

    @model_validator(mode="after")
    def _messages_tell_tables_apart(self):
        """Two tables whose messages land in one topic under one ``table_name`` (``a.b`` and
        ``public."a.b"``) could not be told apart by consumers: refused, naming both."""
        seen: dict[tuple[str, str], str] = {}
        for table in self.source.tables:
            where = (self.iggy.topic_for(table), table.message_name)
            if where in seen:
                raise ValueError(
                    f"source.tables: {seen[where]} and {table.qualified} would both be sent to topic {where[0]!r}"
                    f" as table_name {where[1]!r}: give them different topics (iggy.topic: \"{{schema}}_{{table}}\")"
                )
            seen[where] = table.qualified
        return self

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
