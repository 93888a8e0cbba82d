"""Alembic migrations of Flask-Resilience's tables (shipped as flask_resilience.migrations),
and the filters an application's own migrations use to leave them alone."""

from .include import include_name, include_object

__all__ = ["include_name", "include_object"]
