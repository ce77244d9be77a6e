"""A table's rows as SELECT reads them, encoded as messages (polling and CDC snapshots)."""
