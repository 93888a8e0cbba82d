"""The SQL engine the extension uses (the audit table, the health check).

Found lazily, inside an app context, because Flask-SQLAlchemy may be
registered after this extension: ``RESILIENCE_AUDIT_DATABASE_URI`` when set,
else the app's Flask-SQLAlchemy engine, else an engine of our own for
``SQLALCHEMY_DATABASE_URI`` (an app that configures it without
Flask-SQLAlchemy), else none.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from flask import current_app
from sqlalchemy import Engine, create_engine, text

from ..lifecycle import on_fork

# Every engine this process handed out, its own or the app's Flask-SQLAlchemy
# one: a forked child (a gunicorn --preload worker) drops their pooled
# connections, which are the parent's sockets, before anything can use them.
_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


def _forget_parent_connections() -> None:
    for engine in list(_engines):
        engine.dispose(close=False)  # close=False: the parent's sockets stay the parent's


on_fork(_forget_parent_connections)


def process_safe_engine(url: str, **options: Any) -> Engine:
    """``create_engine(url, **options)``, its pool dropped in a forked child."""
    engine = create_engine(url, **options)
    _engines.add(engine)
    return engine


class Database:
    def __init__(self, uri: str | None) -> None:
        self.uri = uri
        self._engine: Engine | None = None
        self._lock = threading.Lock()

    def engine(self) -> Engine | None:
        """The engine to use, or None when the app configured no database."""
        uri = self.uri
        if uri is None:
            sqlalchemy_ext = current_app.extensions.get("sqlalchemy")
            if sqlalchemy_ext is not None:
                engine: Engine = sqlalchemy_ext.engine
                _engines.add(engine)
                return engine
            uri = current_app.config.get("SQLALCHEMY_DATABASE_URI") or None
            if uri is None:
                return None
        with self._lock:
            if self._engine is None:
                self._engine = process_safe_engine(uri, pool_pre_ping=True, hide_parameters=True)
            return self._engine

    def ping(self) -> bool:
        """True when ``SELECT 1`` succeeds, False when no database is configured."""
        engine = self.engine()
        if engine is None:
            return False
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return True

    def dispose(self) -> None:
        """Close pooled connections. The engine stays: one used after a
        shutdown (a late audit entry) is disposed again by the next."""
        with self._lock:
            if self._engine is not None:
                self._engine.dispose()
