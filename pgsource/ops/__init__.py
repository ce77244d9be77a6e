"""Operations: prerequisite checks, admin commands, readiness, the bulk-load display."""
