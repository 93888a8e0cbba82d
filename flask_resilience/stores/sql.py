"""The SQL engine the extension uses (the audit table, the health check).

Found lazily, inside an app context, because Flask-SQLAlchemy may be
registered after this extension: ``RESILIENCE_AUDIT_DATABASE_URI`` when set,
else the app's Flask-SQLAlchemy engine, else an engine of our own for
``SQLALCHEMY_DATABASE_URI`` (an app that configures it without
Flask-SQLAlchemy), else none.
"""

from __future__ import annotations

import threading

from flask import current_app
from sqlalchemy import Engine, create_engine, text

from ..lifecycle import fork_generation


class Database:
    def __init__(self, uri: str | None) -> None:
        self.uri = uri
        self._engine: Engine | None = None
        self._generation = fork_generation()
        self._lock = threading.Lock()

    def engine(self) -> Engine | None:
        """The engine to use, or None when the app configured no database."""
        uri = self.uri
        if uri is None:
            sqlalchemy_ext = current_app.extensions.get("sqlalchemy")
            if sqlalchemy_ext is not None:
                engine: Engine = sqlalchemy_ext.engine
                return engine
            uri = current_app.config.get("SQLALCHEMY_DATABASE_URI") or None
            if uri is None:
                return None
        with self._lock:
            if self._engine is None:
                self._engine = create_engine(uri, pool_pre_ping=True, hide_parameters=True)
            elif self._generation != fork_generation():
                # A forked worker must not share the parent's sockets.
                self._engine.dispose(close=False)
            self._generation = fork_generation()
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
