"""Pure decoders of what PostgreSQL sends in CDC mode: pgoutput messages and column text."""
