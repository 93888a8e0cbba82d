"""Alembic migrations of Flask-Resilience's tables (shipped as flask_resilience.migrations)."""
