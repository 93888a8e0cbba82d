"""The example app the README tells newcomers to run."""

from __future__ import annotations

from pathlib import Path

from example_app import create_app, resilience
from flask_resilience import get_audit_stats


def test_example_app_serves_health_and_flights(tmp_path: Path) -> None:
    app = create_app({"TESTING": True}, instance_path=str(tmp_path))
    try:
        client = app.test_client()
        health = client.get("/api/health")
        assert health.status_code == 200
        flights = client.get("/api/flights", headers={"X-Request-ID": "demo-1"})
        assert flights.status_code == 200
        assert flights.headers["X-Request-ID"] == "demo-1"
        assert flights.json is not None
        assert len(flights.json["flights"]) == 3
        assert client.get("/api/flights").headers["X-Cache"] == "HIT"
        assert client.post("/api/flights/refresh").status_code == 200
        assert client.get("/api/flights").headers["X-Cache"] == "MISS"
        order = {"flight": "LH401", "card_number": "4111111111111111"}
        booking = client.post("/api/bookings", json=order, headers={"Idempotency-Key": "book-1"})
        assert booking.status_code == 201
        retry = client.post("/api/bookings", json=order, headers={"Idempotency-Key": "book-1"})
        assert (retry.status_code, retry.headers["X-Idempotency-Replayed"]) == (201, "true")
        with app.app_context():
            stats = get_audit_stats()
        assert stats["by_event_type"] == {"CREATE": 1}
    finally:
        resilience.shutdown()
