"""The requests adapter and httpx transports against a real local HTTP server."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import requests

from flask_resilience import CircuitOpenError, CircuitState
from flask_resilience.breaker.http import (
    AsyncBreakerTransport,
    BreakerAdapter,
    BreakerTransport,
    HTTPXCircuitOpenError,
    RequestsCircuitOpenError,
    parse_retry_after,
)
from flask_resilience.breaker.http_common import Breakers
from flask_resilience.breaker.registry import BreakerRegistry
from tests.clock import FakeClock

RELEASE_HANGS = threading.Event()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        routes = {
            "/ok": (200, {}),
            "/fail": (500, {}),
            "/missing": (404, {}),
            "/busy": (429, {"Retry-After": "120"}),
            "/unavailable": (503, {"Retry-After": "30"}),
            "/gateway": (502, {"Retry-After": "999"}),
            "/retry-now": (503, {"Retry-After": "0"}),
            # Latin-1 superscript two: str.isdigit() says yes, float() says no.
            "/odd-retry-after": (503, {"Retry-After": "\u00b2"}),
        }
        if self.path == "/hang":
            RELEASE_HANGS.wait(30)
        if self.path == "/truncated":  # headers, then the connection drops mid-body
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"only part of it")
            self.close_connection = True
            return
        status, headers = routes.get(self.path, (200, {}))
        body = self.path.encode()
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    RELEASE_HANGS.set()
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_700_000_000)


def _session(registry: BreakerRegistry, clock: FakeClock, **options: object) -> requests.Session:
    session = requests.Session()
    adapter = BreakerAdapter(registry, breaker_config={"clock": clock, "failure_threshold": 3}, **options)  # type: ignore[arg-type]
    session.mount("http://", adapter)
    return session


def test_requests_5xx_open_the_host_circuit_and_4xx_do_not(server: str, clock: FakeClock) -> None:
    registry = BreakerRegistry()
    with _session(registry, clock) as session:
        for _ in range(5):
            assert session.get(f"{server}/missing").status_code == 404
        port = server.rsplit(":", 1)[1]
        breaker = registry.get(f"http:127.0.0.1:{port}")
        assert breaker is not None and breaker.state is CircuitState.CLOSED
        for _ in range(3):
            assert session.get(f"{server}/fail").status_code == 500
        assert breaker.state is CircuitState.OPEN
        with pytest.raises(RequestsCircuitOpenError) as rejected:
            session.get(f"{server}/ok")
        assert isinstance(rejected.value, requests.ConnectionError)
        assert isinstance(rejected.value, CircuitOpenError)
        assert rejected.value.retry_after == pytest.approx(60)


def test_requests_429_retry_after_holds_the_circuit_open(server: str, clock: FakeClock) -> None:
    registry = BreakerRegistry()
    with _session(registry, clock, service="partner-api") as session:
        assert session.get(f"{server}/busy").status_code == 429
        breaker = registry.get("partner-api")
        assert breaker is not None and breaker.state is CircuitState.OPEN
        clock.advance(119)
        with pytest.raises(RequestsCircuitOpenError):
            session.get(f"{server}/ok")
        clock.advance(1)
        assert session.get(f"{server}/ok").status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/gateway",  # Retry-After only counts on 429 and 503
        # "Retry-After: 0" asks for no pause: it opened the circuit at once,
        # throttling every caller to one HALF_OPEN trial.
        "/retry-now",
    ],
)
def test_requests_a_retry_after_that_asks_no_pause_is_a_plain_failure(
    server: str, clock: FakeClock, path: str
) -> None:
    registry = BreakerRegistry()
    with _session(registry, clock, service="gw") as session:
        session.get(f"{server}{path}")
        breaker = registry.get("gw")
        assert breaker is not None and breaker.state is CircuitState.CLOSED
        assert breaker.stats()["failures"] == 1


def test_requests_unreadable_retry_after_is_a_plain_failure(server: str, clock: FakeClock) -> None:
    # A hostile or broken server's header must not turn the answer into a
    # ValueError for the caller, nor leave a HALF_OPEN trial held forever.
    registry = BreakerRegistry()
    with _session(registry, clock, service="odd") as session:
        assert session.get(f"{server}/odd-retry-after").status_code == 503
        breaker = registry.get("odd")
        assert breaker is not None and breaker.stats()["failures"] == 1
        for _ in range(2):
            session.get(f"{server}/fail")
        assert breaker.state is CircuitState.OPEN
        clock.advance(60)
        assert session.get(f"{server}/odd-retry-after").status_code == 503  # the trial
        assert breaker.stats()["trials_in_flight"] == 0
        assert breaker.state is CircuitState.OPEN


def test_requests_timeouts_cut_off_bodies_and_refused_connections_are_failures(
    server: str, clock: FakeClock
) -> None:
    registry = BreakerRegistry()
    with _session(registry, clock, service="slow") as session:
        with pytest.raises(requests.Timeout):
            session.get(f"{server}/hang", timeout=0.2)
        # requests reads the body after the adapter returned: a remote side
        # that sends its headers and then drops (or stalls) was never counted.
        with pytest.raises(requests.RequestException):
            session.get(f"{server}/truncated")
        with pytest.raises(requests.ConnectionError):
            session.get("http://127.0.0.1:1/ok")
        breaker = registry.get("slow")
        assert breaker is not None and breaker.state is CircuitState.OPEN


def test_httpx_transport(server: str, clock: FakeClock) -> None:
    registry = BreakerRegistry()
    transport = BreakerTransport(registry, breaker_config={"clock": clock, "failure_threshold": 3})
    with httpx.Client(transport=transport, timeout=0.2) as client:
        assert client.get(f"{server}/missing").status_code == 404
        assert client.get(f"{server}/fail").status_code == 500
        # The client reads the body after the transport returned: a body cut
        # off mid-way was never counted.
        with pytest.raises(httpx.RemoteProtocolError):
            client.get(f"{server}/truncated")
        with pytest.raises(httpx.ReadTimeout):
            client.get(f"{server}/hang")
        with pytest.raises(HTTPXCircuitOpenError) as rejected:
            client.get(f"{server}/ok")
        assert isinstance(rejected.value, httpx.TransportError)
        clock.advance(60)
        assert client.get(f"{server}/ok").status_code == 200


def test_httpx_async_transport_honours_retry_after(server: str, clock: FakeClock) -> None:
    registry = BreakerRegistry()

    async def scenario() -> None:
        transport = AsyncBreakerTransport(registry, service="async-api", breaker_config={"clock": clock})
        async with httpx.AsyncClient(transport=transport) as client:
            with pytest.raises(httpx.RemoteProtocolError):  # read after the transport returned
                await client.get(f"{server}/truncated")
            assert (await client.get(f"{server}/unavailable")).status_code == 503
            with pytest.raises(HTTPXCircuitOpenError):
                await client.get(f"{server}/ok")
            clock.advance(30)
            assert (await client.get(f"{server}/ok")).status_code == 200
            with pytest.raises(httpx.ConnectError):
                await client.get("http://127.0.0.1:1/")

    asyncio.run(scenario())
    breaker = registry.get("async-api")
    assert breaker is not None
    assert breaker.stats()["failures"] == 3


def test_a_long_valid_hostname_gets_a_breaker_of_its_own() -> None:
    # DNS names reach 253 characters; "http:<host>" over the 128-character
    # name limit raised ValueError instead of making the request.
    breakers = Breakers(BreakerRegistry(), None, None)
    first, second = (".".join([label * 60] * 4) for label in ("a", "b"))
    one, other = breakers.for_url(f"https://{first}/hook"), breakers.for_url(f"https://{second}:8443/")
    assert one.name.startswith("http:aaaa") and len(one.name) <= 128
    assert other.name != one.name
    assert breakers.for_url(f"https://{first}/other") is one
    assert breakers.for_url("http://api.example.com/x").name == "http:api.example.com"


def test_parse_retry_after() -> None:
    now = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=90), usegmt=True)
    assert parse_retry_after("120") == 120
    assert parse_retry_after(later, now=now.timestamp()) == pytest.approx(90)
    assert parse_retry_after("soon") is None
    assert parse_retry_after("\u00b2") is None  # isdigit() but not a number
    assert parse_retry_after("\u0663") is None  # only ASCII digits are delay-seconds
    assert parse_retry_after(None) is None
