"""The example app the README tells newcomers to run."""

from __future__ import annotations

from example_app import create_app, resilience


def test_example_app_serves_health_and_flights() -> None:
    app = create_app({"TESTING": True})
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
    finally:
        resilience.shutdown()
