"""Serving the example app on a free loopback port for a test, over real HTTP."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import requests
from flask import Flask
from werkzeug.serving import make_server

from example_app import shutdown
from example_app.demo import QuietRequestHandler


@dataclass
class Running:
    app: Flask
    url: str
    http: requests.Session

    def call(self, method: str, path: str, token: str = "", **kwargs: Any) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}))
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return self.http.request(method, self.url + path, headers=headers, timeout=10, **kwargs)

    def login(self, user: str) -> str:
        answer = self.call("POST", "/api/auth/login", json={"username": user, "password": f"{user}-password"})
        assert answer.status_code == 200, answer.text
        token: str = answer.json()["token"]
        return token


def serve(app: Flask) -> Iterator[Running]:
    """Serve ``app`` in a thread until the generator is closed; then stop it and the app."""
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=QuietRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with requests.Session() as http:
            yield Running(app, f"http://127.0.0.1:{server.server_port}", http)
    finally:
        server.shutdown()
        shutdown(app)
