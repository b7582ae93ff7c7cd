"""The trainer's run store: runs and their stages, in SQLite or PostgreSQL."""
