"""Entries that follow the app's Flask-SQLAlchemy transaction (``on_commit=True``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Flask, jsonify
from sqlalchemy import text
from werkzeug.test import Client

from flask_resilience import AuditEventType, AuditStatus, Resilience, audited, log_data_change
from flask_resilience.audit.service import AppAudit
from tests.audit_support import database, stored
from tests.conftest import MakeApp

__all__ = ["database"]  # the fixture, for pytest


def test_on_commit_entries_follow_the_session(make_app: MakeApp, database: str, tmp_path: Path) -> None:
    from flask_sqlalchemy import SQLAlchemy

    app = Flask("on_commit", instance_path=str(tmp_path / "instance"))
    app.config.update(SQLALCHEMY_DATABASE_URI=database)
    db = SQLAlchemy(app)
    make_app_config: dict[str, Any] = {"RESILIENCE_AUDIT_DATABASE_URI": database}
    app.config.update(make_app_config)
    extension = Resilience(app)

    @app.post("/fares/<int:fare>")
    @audited(AuditEventType.UPDATE, resource="fare", resource_id_from="fare", on_commit=True)
    def update(fare: int) -> Any:
        db.session.execute(text("SELECT 1"))
        if fare == 2:
            db.session.rollback()
        else:
            db.session.commit()
        return jsonify(fare=fare)

    client = Client(app.wsgi_app)
    try:
        with app.app_context():
            log_data_change(AuditEventType.UPDATE, "seat", 1, {"row": 1}, on_commit=True)
            db.session.commit()
            log_data_change(AuditEventType.UPDATE, "seat", 2, {"row": 2}, on_commit=True)
            db.session.rollback()
            log_data_change(AuditEventType.UPDATE, "seat", 3, {"row": 3}, on_commit=True)
            db.session.remove()  # the request ended without a commit
            log_data_change(AuditEventType.UPDATE, "seat", 4, {"row": 4})  # default: recorded at once
            db.session.rollback()
        assert client.post("/fares/1").status_code == 200
        assert client.post("/fares/2").status_code == 200
        with app.app_context():
            AppAudit.of(app).writer.flush()
    finally:
        extension.shutdown()
        with app.app_context():
            db.engine.dispose()
    outcome = {(row["resource"], row["resource_id"]): row["status"] for row in stored(database)}
    assert outcome == {
        ("seat", "1"): AuditStatus.SUCCESS,
        ("seat", "2"): AuditStatus.ROLLED_BACK,
        ("seat", "3"): AuditStatus.ROLLED_BACK,
        ("seat", "4"): AuditStatus.SUCCESS,
        ("fare", "1"): AuditStatus.SUCCESS,
        ("fare", "2"): AuditStatus.ROLLED_BACK,
    }
