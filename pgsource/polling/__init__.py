"""Polling: reading tables in keyset batches, and holding offsets behind rows that commit late."""
