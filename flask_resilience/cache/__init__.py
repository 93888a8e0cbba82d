"""Two-layer cache: in-process L1, Redis (or Flask-Caching) L2, HTTP response caching."""
