"""Keep Flask-Resilience's tables out of the application's own autogenerate.

Pass the filter to Flask-Migrate (or to ``context.configure`` in the app's ``env.py``)::

    from flask_resilience.migrations import include_name
    Migrate(app, db, include_name=include_name)

so ``flask db migrate`` neither drops nor alters our tables: their schema is
managed by ``flask resilience db upgrade``, with its own version table.
"""

from __future__ import annotations

from collections.abc import Mapping

# Our tables, their PostgreSQL partitions (``resilience_audit_log_p2026_11``)
# and our Alembic version table.
OWN_PREFIXES = ("resilience_audit_log", "resilience_audit_checkpoint")
VERSION_TABLE = "resilience_alembic_version"


def is_own_table(name: str | None) -> bool:
    return name is not None and (name == VERSION_TABLE or name.startswith(OWN_PREFIXES))


def include_name(name: str | None, type_: str, parent_names: Mapping[str, str | None]) -> bool:
    """Alembic's ``include_name`` hook: False for our tables and everything on them."""
    if type_ == "table":
        return not is_own_table(name)
    return not is_own_table(parent_names.get("table_name"))


def include_object(
    obj: object, name: str | None, type_: str, reflected: bool, compare_to: object | None
) -> bool:
    """Alembic's ``include_object`` hook (for apps that already use that one)."""
    if type_ == "table":
        return not is_own_table(name)
    table = getattr(obj, "table", None)
    return not is_own_table(getattr(table, "name", None))
