"""CDC: pgoutput changes into messages, slots prepared, snapshots of captured tables."""
