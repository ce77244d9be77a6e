"""The configuration as frozen, validated records.

``source:`` keeps the seed connector's keys with their names, defaults and meaning; the
service's own sections (``iggy:``, ``state:``, ``metrics:``...) are in ``sections.py``.
``workers:`` and ``shard:`` place the work. Validation is pydantic's; ``load.py`` turns its
errors into messages that name the key.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from pgsource.config.duration import Duration, OptionalDuration
from pgsource.config.names import message_name, parse_table_reference, table_reference
from pgsource.config.predicate import predicate_problem
from pgsource.config.secrets import resolve_source_files
from pgsource.config.sections import (  # noqa: F401  (re-exported: the model's records, one import)
    _FROZEN,
    IggyConfig,
    IggyTlsConfig,
    LogConfig,
    MetricsConfig,
    Partitioning,
    ReadinessConfig,
    ShardConfig,
    StateConfig,
    SupervisorConfig,
    TopicSettingsConfig,
    iggy_name_problem,
)

PUBLISHER = "publisher"  # the publisher process's name: in statuses, liveness, metrics and logs


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
    tracking_filled_by: Literal["default", "trigger"] | None = None  # overrides source.tracking_filled_by for this table
    shard: int | None = Field(None, ge=0)  # pins the table to this shard (else a hash of its name picks one)
    columns: list[str] | None = None  # only these columns in `data` (and in a CDC publication's column list)
    exclude_columns: list[str] = Field(default_factory=list)  # every column but these
    row_filter: str | None = None  # an SQL predicate on the row: polling's WHERE, a CDC publication's WHERE
    where: str | None = None  # row_filter's other name (the issue's and `pgsource snapshot --where`'s word)

    @model_validator(mode="after")
    def _one_column_list(self):
        if self.columns is not None and self.exclude_columns:
            raise ValueError("columns and exclude_columns exclude each other: give one list")
        if self.columns is not None and not self.columns:
            raise ValueError("columns: list at least one column (or leave it out for all)")
        if self.row_filter is not None and self.where is not None:
            raise ValueError("where and row_filter are one key (where is row_filter's other name): give one")
        for key in ("row_filter", "where"):
            value = getattr(self, key)
            problem = "an empty predicate (leave it out for every row)" if value is not None and not value.strip() else (
                predicate_problem(value) if value is not None else None)
            if problem:
                raise ValueError(f"{key}: {problem}")
        return self

    @property
    def predicate(self) -> str | None:
        """The row filter, by either of its names (``row_filter`` or ``where``)."""
        return self.row_filter if self.row_filter is not None else self.where


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
                 "snapshot", "on_missing_slot", "backfill_chunk_size", "transaction_markers")
POLLING_ONLY_KEYS = ("tracking_column", "initial_offset", "custom_query", "delete_after_read", "processed_column",
                     "allow_non_unique_tracking", "late_commits", "lag", "tracking_filled_by")
TABLE_POLLING_ONLY_KEYS = ("tracking_column", "lag", "tracking_filled_by")


class SourceConfig(BaseModel):
    """The seed connector's keys, plus pgsource's optional ones (documented in docs/configuration.md)."""

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
    # CDC: rows per chunk of a backfill (`pgsource snapshot`), read between two watermarks; the
    # stream waits at most one chunk's SELECT, and one chunk is what a backfill holds in memory.
    backfill_chunk_size: int = Field(1000, ge=1, le=1_000_000)
    # CDC: where a consumer learns a change's transaction. headers: xid and txn_index (its
    # position in the transaction) in every change's headers; messages: those, and a BEGIN and a
    # COMMIT message (xid, commit LSN and time; COMMIT: the messages per table) in
    # iggy.transaction_topic; off: neither. docs/cdc.md, "Transaction boundaries".
    transaction_markers: Literal["headers", "messages", "off"] = "headers"
    # CDC and polling: a table's columns changed (added, dropped, renamed, retyped): one
    # SCHEMA_CHANGE message with the old and new columns before the first row of the new shape.
    schema_change_events: bool = True
    # Polling: hold the committed offset behind transactions still in progress and re-read
    # what they commit late (docs/delivery.md "Rows that commit late"); "off" accepts missing them.
    late_commits: Literal["auto", "off"] = "auto"
    lag: Duration = 0.0  # seal a read range only this long after it was read (values no horizon protects)
    # Where a time tracking column's values come from: "default" reads its default in the catalog
    # (only the transaction's clock is guarded); "trigger" declares that a BEFORE trigger sets it
    # from now()/clock_timestamp() (trigger bodies are not parsed: docs/delivery.md).
    tracking_filled_by: Literal["default", "trigger"] = "default"
    # A statement failing for a reason that may pass (deadlock, lock timeout, cancel) is retried
    # this often, after retry_delay, then twice that...; a worker dying in the same statement
    # more often than this in a row stops the service (exit 8). Connection outages retry forever.
    max_retries: int = Field(3, ge=0, le=100)
    retry_delay: Duration = 1.0
    # The Rust connector's remaining keys (docs/configuration.md)
    payload_column: str | None = None  # this column's value is the whole message (outbox), no envelope
    payload_format: PayloadFormat = PayloadFormat.BYTEA
    primary_key_column: str | None = None  # the key of delete/mark and partitions (default: the catalog's)
    verbose_logging: bool = False  # INFO lines for every batch

    @field_validator("late_commits", mode="before")
    @classmethod
    def _late_commits_words(cls, value):
        """YAML 1.1 reads an unquoted ``off`` (and ``no``, ``false``) as false, ``on``/``yes``/``true`` as
        true: the documented ``late_commits: off`` must not need quotes."""
        if isinstance(value, bool):
            return "auto" if value else "off"
        return value

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
            if self.source.cdc and self.source.transaction_markers == "messages" and topic == self.iggy.transaction_topic:
                raise ValueError(f"iggy.transaction_topic: {topic!r} is table {table}'s topic too; the BEGIN and COMMIT"
                                 " messages need a topic of their own: give iggy.transaction_topic another name")
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
