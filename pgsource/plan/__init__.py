"""Which replica and which worker read which tables."""
