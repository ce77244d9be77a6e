"""Configuration: the YAML file's sections as frozen records, and how to load them."""

from pgsource.config.load import load_config, parse_config
from pgsource.config.model import (
    Config,
    IggyConfig,
    Mode,
    Operation,
    Partitioning,
    SourceConfig,
    TableConfig,
)

__all__ = [
    "Config",
    "IggyConfig",
    "Mode",
    "Operation",
    "Partitioning",
    "SourceConfig",
    "TableConfig",
    "load_config",
    "parse_config",
]
