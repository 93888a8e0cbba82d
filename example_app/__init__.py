"""A small travel-booking API that uses every feature of Flask-Resilience.

Run it with ``flask --app example_app run`` (SQLite and in-process state, no
servers needed), or point it at real services::

    RESILIENCE_REDIS_URL=redis://127.0.0.1:6379/0 \\
    DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1/test \\
    gunicorn --preload -w 4 'example_app:create_app()'

and watch every feature at work with ``flask --app example_app demo``.
Any ``RESILIENCE_*`` variable in the environment configures the extension.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flask import Flask
from sqlalchemy import inspect

from flask_resilience import Resilience
from flask_resilience.audit.migrate import upgrade
from flask_resilience.audit.table import TABLE_NAME

from . import auth
from .admin import admin_blueprint
from .auth import auth_blueprint
from .bookings import bookings_blueprint
from .demo import demo_command
from .flights import ProviderClient, flights_blueprint
from .models import db
from .payments import payments_blueprint
from .provider import FlightsProvider
from .validation import BoundedJSONProvider

__all__ = ["create_app"]


def _database_url(instance_path: str) -> str:
    url = os.environ.get("DATABASE_URL")
    if not url:
        return f"sqlite:///{Path(instance_path) / 'example.db'}"
    # The scheme Heroku-style URLs use, mapped to the driver the extras install.
    for legacy in ("postgres://", "postgresql://"):
        if url.startswith(legacy):
            return "postgresql+psycopg://" + url.removeprefix(legacy)
    return url


def secret_key() -> str:
    """The app's SECRET_KEY (it also keys the audit log's hash chains)."""
    return os.environ.get("SECRET_KEY", "dev-only-secret-change-me")


def _settings(instance_path: str, overrides: dict[str, Any]) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "SECRET_KEY": secret_key(),
        "SQLALCHEMY_DATABASE_URI": _database_url(instance_path),
        # Seconds the provider's breaker stays open before a trial call.
        "EXAMPLE_BREAKER_OPEN_SECONDS": float(os.environ.get("EXAMPLE_BREAKER_OPEN_SECONDS", "10")),
        # An external provider instead of the in-process one.
        "EXAMPLE_PROVIDER_URL": os.environ.get("EXAMPLE_PROVIDER_URL"),
    }
    settings.update({key: value for key, value in os.environ.items() if key.startswith("RESILIENCE_")})
    if settings.get("RESILIENCE_REDIS_URL"):
        # Several workers: share breaker state too, so they open and close together.
        settings.setdefault("RESILIENCE_BREAKER_STORAGE", "redis")
    settings.update(overrides)
    return settings


def _prepare_database(app: Flask) -> None:
    """Create the example's tables and, if missing, the audit table."""
    with app.app_context():
        db.create_all()
        if not inspect(db.engine).has_table(TABLE_NAME):
            upgrade(db.engine)
        # gunicorn --preload forks after this: workers must not inherit (and
        # share) these pooled connections.
        db.engine.dispose()


def create_app(config: dict[str, Any] | None = None, instance_path: str | None = None) -> Flask:
    app = Flask(__name__, instance_path=instance_path)
    app.json = BoundedJSONProvider(app)
    Path(app.instance_path).mkdir(parents=True, exist_ok=True)
    app.config.update(_settings(app.instance_path, config or {}))

    db.init_app(app)
    resilience = Resilience(app)
    app.extensions["example_resilience"] = resilience
    auth.install(resilience)
    _prepare_database(app)

    provider_url = app.config["EXAMPLE_PROVIDER_URL"]
    if not provider_url:
        provider = FlightsProvider().start()
        app.extensions["example_provider"] = provider
        provider_url = provider.url
    app.extensions["example_provider_client"] = ProviderClient.create(
        resilience, provider_url, app.config["EXAMPLE_BREAKER_OPEN_SECONDS"]
    )

    for blueprint in (
        auth_blueprint,
        flights_blueprint,
        bookings_blueprint,
        payments_blueprint,
        admin_blueprint,
    ):
        app.register_blueprint(blueprint)
    app.cli.add_command(demo_command)
    return app


def shutdown(app: Flask) -> None:
    """Stop the app's background work and its in-process provider (tests, the demo)."""
    provider: FlightsProvider | None = app.extensions.get("example_provider")
    if provider is not None:
        provider.stop()
    app.extensions["example_resilience"].shutdown()
    with app.app_context():
        db.engine.dispose()
