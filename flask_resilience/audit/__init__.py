"""Audit log: buffered, redacted, hash-chained entries persisted through SQLAlchemy."""
