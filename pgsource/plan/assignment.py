"""Which worker process reads which tables.

Polling: a number of workers (balanced by size) or a mapping. Units are stored per table
(and chunk), so a table may move to another worker between starts without harm.

CDC: a worker is one *channel*, a (publication, slot) pair, and a table's channel must
never move, or its changes are skipped (a new slot starts at the current LSN) or sent
twice (a table in two publications). So CDC ownership comes from the configuration and the
database, never from sizes (``plan_cdc``):

- the publications are the durable map: a configured table already held by one of
  pgsource's publications (``publication_name`` or ``publication_name_<tag>``) stays with
  that publication's slot, whatever ``workers`` says now (a channel the configuration no
  longer names keeps running under the name of its slot);
- a table no publication holds yet goes to its worker in a ``workers`` mapping, or else to
  the configured channel with the fewest tables (ties: the first), in configuration order;
- ``workers: 1`` (and a one-worker mapping) is the channel of ``replication_slot`` and
  ``publication_name`` themselves; more workers get ``<name>_worker_<i>`` (or
  ``<name>_<worker>``);
- a table in two of pgsource's publications, or held by another worker's publication than
  the mapping says, is refused: either way its changes would be sent twice or skipped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pgsource.config.model import Config, TableConfig
from pgsource.errors import PrerequisiteError


@dataclass(frozen=True)
class WorkUnit:
    """One table, or one chunk of a table, read by one worker; ``key`` names its stored offset.

    In CDC, ``slot`` and ``publication`` name the channel that captures the table.
    """

    table: TableConfig
    chunk: int = 0
    chunks: int = 1
    slot: str = ""
    publication: str = ""

    @property
    def key(self) -> str:
        """The polling offset's state key (CDC keeps one record per slot: ``cdc/<slot>``)."""
        base = f"polling/{self.table.qualified}"
        return base if self.chunks == 1 else f"{base}#{self.chunk}of{self.chunks}"

    def describe(self) -> str:
        """How logs name the unit: its offset's key in polling, the table and its slot in CDC."""
        return f"{self.table.qualified} (slot {self.slot})" if self.slot else self.key


def assign_units(config: Config, sizes: dict[str, int] | None = None) -> dict[str, list[WorkUnit]]:
    """Worker name → its units. ``sizes`` (table → estimated bytes or rows) balances polling's load.

    For CDC use ``plan_cdc`` (it needs the database); here CDC ignores ``sizes``.
    """
    sizes = {} if config.source.cdc else (sizes or {})
    units = [
        WorkUnit(table, chunk, table.chunks)
        for table in config.source.tables
        for chunk in range(table.chunks)
    ]
    if isinstance(config.workers, dict):
        by_name = {unit.table.qualified: [] for unit in units}
        for unit in units:
            by_name[unit.table.qualified].append(unit)
        return {worker: [u for name in names for u in by_name[name]] for worker, names in config.workers.items()}
    count = config.workers
    if config.source.custom_query and not config.source.tables:
        return {"worker-0": []}
    names = [f"worker-{index}" for index in range(count)]
    load = dict.fromkeys(names, 0)
    out: dict[str, list[WorkUnit]] = {name: [] for name in names}

    def weight(unit: WorkUnit) -> int:
        return max(1, sizes.get(unit.table.qualified, 1) // unit.chunks)

    for unit in sorted(units, key=lambda u: (-weight(u), u.table.qualified, u.chunk)):
        target = min(names, key=lambda name: (load[name], names.index(name)))
        out[target].append(unit)
        load[target] += weight(unit)
    return {name: assigned for name, assigned in out.items() if assigned}


# -- CDC ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Channel:
    """A CDC worker's publication and slot; ``tag`` is the suffix of both ("" for the configured names)."""

    worker: str
    tag: str
    slot: str
    publication: str


@dataclass
class CdcPlan:
    assignment: dict[str, list[WorkUnit]]
    notes: list[str] = field(default_factory=list)  # worth a log line, not an error


def channel(config: Config, worker: str, tag: str) -> Channel:
    source = config.source
    suffix = f"_{tag}" if tag else ""
    return Channel(worker, tag, source.replication_slot + suffix, source.publication_name + suffix)


def configured_channels(config: Config) -> list[Channel]:
    """The channels ``workers`` names, in order."""
    workers = config.workers
    if isinstance(workers, dict):
        names = list(workers)
        if len(names) == 1:
            return [channel(config, names[0], "")]
        return [channel(config, name, _tag(name)) for name in names]
    if workers == 1:
        return [channel(config, "worker-0", "")]
    return [channel(config, f"worker-{index}", f"worker_{index}") for index in range(workers)]


def plan_cdc(config: Config, publications: Mapping[str, object], slots: set[str]) -> CdcPlan:
    """Worker → units (with their slot and publication), from the configuration and the database.

    ``publications``: pgsource's publications by name (``pgsource.pg.publications.load_publications``,
    anything with ``holds(table)``); ``slots``: the names of the replication slots that exist.
    """
    configured = configured_channels(config)
    existing = _existing_channels(config, configured, publications, slots)
    mapped: dict[str, Channel] = {}
    if isinstance(config.workers, dict):
        for worker, tables in config.workers.items():
            for table in tables:
                mapped[table] = next(ch for ch in configured if ch.worker == worker)
    owner = _captured_owners(config, existing, publications, mapped)
    _place_the_others(config, configured, mapped, owner)
    assignment: dict[str, list[WorkUnit]] = {}
    workers: dict[str, Channel] = {}
    for table in config.source.tables:
        ch = owner[table.qualified]
        if workers.setdefault(ch.worker, ch) != ch:
            raise PrerequisiteError(f"worker name {ch.worker} names two slots ({workers[ch.worker].slot}, {ch.slot})")
        assignment.setdefault(ch.worker, []).append(WorkUnit(table, slot=ch.slot, publication=ch.publication))
    notes = [
        f"publication {name} (slot {ch.slot}) holds none of the configured tables; drop it with its slot"
        " when it is no longer needed, or it keeps retaining WAL"
        for name, ch in existing.items()
        if ch.worker not in assignment and ch.slot in slots
    ]
    return CdcPlan(assignment, notes)


def _existing_channels(config: Config, configured: list[Channel], publications: Mapping[str, object],
                       slots: set[str]) -> dict[str, Channel]:
    """Publication name → its channel: a configured one, or one of an earlier configuration whose slot exists."""
    source = config.source
    by_tag = {ch.tag: ch for ch in configured}
    existing: dict[str, Channel] = {}
    for name in publications:
        tag = "" if name == source.publication_name else name[len(source.publication_name) + 1:]
        known = by_tag.get(tag)
        if known is not None:
            existing[name] = known
            continue
        earlier = channel(config, "", tag)
        if earlier.slot in slots:  # a channel of an earlier configuration: its worker is named by its slot
            existing[name] = channel(config, earlier.slot, tag)
    return existing


def _captured_owners(config: Config, existing: dict[str, Channel], publications: Mapping[str, object],
                     mapped: dict[str, Channel]) -> dict[str, Channel]:
    """Tables a publication already holds stay with its slot; a table in two, or mapped elsewhere, is refused."""
    owner: dict[str, Channel] = {}
    problems: list[str] = []
    for table in config.source.tables:
        holders = [name for name, ch in existing.items() if publications[name].holds(table)]
        if len(holders) > 1:
            problems.append(
                f"table {table.qualified} is in publications {' and '.join(holders)}: its changes would be"
                f" sent once per slot, with different ids. Keep it in one: ALTER PUBLICATION <other> DROP TABLE"
                f" {table.qualified}"
            )
            continue
        if holders:
            held = existing[holders[0]]
            wanted = mapped.get(table.qualified)
            if wanted is not None and wanted.slot != held.slot:
                problems.append(
                    f"workers.{wanted.worker}: table {table.qualified} is captured by slot {held.slot}"
                    f" (publication {held.publication}), not by {wanted.worker}'s slot {wanted.slot}; a table does"
                    " not move between slots by itself (that would skip or repeat changes): map it to the worker of"
                    f" {held.slot}, or see docs/cdc.md (moving a captured table)"
                )
                continue
            owner[table.qualified] = held
    if problems:
        raise PrerequisiteError("\n".join(problems))
    return owner


def _place_the_others(config: Config, configured: list[Channel], mapped: dict[str, Channel],
                      owner: dict[str, Channel]) -> None:
    """Tables no slot captures yet: where the mapping says, else to the configured channel with the fewest."""
    counts = {ch.slot: 0 for ch in configured}
    for ch in owner.values():
        if ch.slot in counts:
            counts[ch.slot] += 1
    for table in config.source.tables:
        if table.qualified in owner:
            continue
        target = mapped.get(table.qualified)
        if target is None:
            target = min(configured, key=lambda ch: (counts[ch.slot], configured.index(ch)))
        owner[table.qualified] = target
        counts[target.slot] += 1


def _tag(worker: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in worker.lower())
