"""Idempotency keys: exactly-once effects for retried POST/PUT/PATCH/DELETE."""
