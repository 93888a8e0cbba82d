"""Health, dashboard and admin endpoints."""
