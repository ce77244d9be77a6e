"""pgsource: stream PostgreSQL rows (polling) and changes (logical replication) into Apache Iggy.

The library half of the service: configuration, SQL, decoding of what PostgreSQL
sends, encoding of what Iggy receives, durable state, the Iggy sink and metrics.
The processes that use it live in the top-level ``workers`` package.
"""

__version__ = "0.1.0"
