"""Projections: PostgreSQL read models built from the event stream, exactly once."""
