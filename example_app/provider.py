"""The flights provider: a small HTTP service the app starts in-process.

It stands in for a partner API. Its mode decides how it answers: ``ok``
(flights as JSON), ``slow`` (answers after the client has given up) or
``fail`` (503). ``POST /mode {"mode": ...}`` switches it; the app's admin
endpoint forwards to it, so every gunicorn worker of a ``--preload``
master talks to the one provider whose mode was switched.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

logger = logging.getLogger("example_app.provider")

MODES = ("ok", "slow", "fail")
SLOW_SECONDS = 3.0  # longer than the app's client timeout, so a slow answer is a timeout
RECENT_CALLS = 1000  # call times kept, so that a test can count calls per breaker timeout

FLIGHTS = [
    {"id": "LH401", "from": "FRA", "to": "JFK", "departs": "10:15", "price_eur": 412},
    {"id": "LH403", "from": "FRA", "to": "JFK", "departs": "13:05", "price_eur": 389},
    {"id": "AF1234", "from": "CDG", "to": "LIS", "departs": "07:40", "price_eur": 96},
    {"id": "KL1001", "from": "AMS", "to": "LHR", "departs": "06:55", "price_eur": 88},
]


def search(origin: str | None, destination: str | None, date: str | None) -> list[dict[str, Any]]:
    return [
        {**flight, "date": date}
        for flight in FLIGHTS
        if (not origin or flight["from"] == origin) and (not destination or flight["to"] == destination)
    ]


class FlightsProvider:
    """The service and its thread; ``url`` once started."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.calls = 0
        self.recent_calls: deque[float] = deque(maxlen=RECENT_CALLS)  # time.monotonic() of each call
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the provider is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self, host: str = "127.0.0.1", port: int = 0) -> FlightsProvider:
        """Listen on ``host:port`` (a free port by default) in a daemon thread."""
        provider = self

        class Handler(_Handler):
            owner = provider

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="flights-provider", daemon=True
        )
        self._thread.start()
        logger.info("flights provider listening on %s", self.url)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        with self._lock:
            self.mode = mode

    def count_call(self) -> str:
        with self._lock:
            self.calls += 1
            self.recent_calls.append(time.monotonic())
            return self.mode


class _Handler(BaseHTTPRequestHandler):
    owner: FlightsProvider
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug(format, *args)

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path == "/mode":
            with self.owner._lock:
                recent = list(self.owner.recent_calls)
            self._send(200, {"mode": self.owner.mode, "calls": self.owner.calls, "recent_calls": recent})
            return
        if parts.path != "/flights":
            self._send(404, {"error": "not found"})
            return
        mode = self.owner.count_call()
        if mode == "fail":
            self._send(503, {"error": "provider failing (mode=fail)"})
            return
        if mode == "slow":
            time.sleep(SLOW_SECONDS)  # the point of this mode: the caller times out
        query = {name: values[0] for name, values in parse_qs(parts.query).items()}
        self._send(200, {"flights": search(query.get("from"), query.get("to"), query.get("date"))})

    def do_POST(self) -> None:
        if urlsplit(self.path).path != "/mode":
            self._send(404, {"error": "not found"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
            self.owner.set_mode(str(body.get("mode")))
        except (ValueError, AttributeError) as exc:
            self._send(400, {"error": str(exc)})
            return
        self._send(200, {"mode": self.owner.mode})
