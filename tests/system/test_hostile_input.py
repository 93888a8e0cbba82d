"""Scenario 7: hostile requests against the running app, over raw sockets so
that nothing on the client side cleans them up first.

Each user plants a unique marker (a booking's passenger, a payment amount);
every response is searched for the other user's markers. Planted passwords,
tokens and a card number must appear in no audit row, no response may be a
5xx, and the audit log keeps storing: its CREATE rows equal the bookings
answered 201.
"""

from __future__ import annotations

import json
import re
import socket
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.system.harness import ADMIN_TOKEN, OwnPostgres, Stack, app_stack, report, rows

pytestmark = pytest.mark.system

EXAMPLES = 250
CARD = "4111111111111111"  # passes the Luhn check, as a real number would
AMOUNTS = {"alice": 1111, "bob": 2222}
ROUTES = [
    (b"GET", "/api/flights"),
    (b"GET", "/api/bookings"),
    (b"POST", "/api/bookings"),
    (b"GET", "/api/bookings/{booking}"),
    (b"PATCH", "/api/bookings/{booking}"),
    (b"POST", "/api/payments"),
    (b"POST", "/api/refunds"),
    (b"POST", "/api/auth/login"),
    (b"POST", "/api/auth/logout"),
    (b"GET", "/api/admin/charges"),
    (b"POST", "/api/admin/provider"),
    (b"GET", "/api/admin/audit/verify"),
    (b"GET", "/api/health"),
    (b"GET", "/api/health/audit/entries"),
    (b"GET", "/api/health/circuit-breakers"),
    (b"GET", "/api/health/cache"),
    (b"GET", "/api/health/metrics"),
]
NASTY = ["%23", "%3F", "%00", "%0d%0a", "%2e%2e%2f", "%ff", "%c0%af", "/", "//", "%25", ";x=1", "\u00e9"]


@dataclass
class Planted:
    tokens: dict[str, str]  # alice, bob, admin (login tokens)
    markers: dict[str, str]  # alice, bob: the passenger names of their bookings
    bookings: dict[str, int]
    secrets: list[str]  # must never reach the audit log


def raw_request(port: int, head: bytes, body: bytes) -> tuple[int, bytes]:
    """Send ``head`` + ``body`` as they are; the status (0 if the server hung up) and the response."""
    received = b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(head + body)
            for _ in range(2_000):  # at most ~130 MB: far more than any answer here
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
    except (ConnectionResetError, BrokenPipeError):
        pass  # the server refused to read the whole request
    match = re.match(rb"HTTP/1\.[01] (\d{3})", received)
    return (int(match.group(1)) if match else 0), received


def header_values() -> st.SearchStrategy[bytes]:
    text = st.text(max_size=40).map(lambda value: value.encode("utf-8", "surrogatepass"))
    return st.one_of(
        text,
        st.binary(max_size=40).filter(lambda value: b"\n" not in value and b"\r" not in value),
        st.sampled_from([b"x\r\nX-Injected: 1", b"a\rb", b"%0d%0aSet-Cookie: x=1", b"A" * 10_000]),
    )


def documents(planted: Planted, user: str) -> dict[str, dict[str, object]]:
    """A sane JSON body for each route that reads one, planting the user's markers and the secrets."""
    return {
        "/api/bookings": {"flight": "LH401", "passenger": planted.markers.get(user, "anonymous")},
        "/api/bookings/{booking}": {"seats": 2},
        "/api/payments": {
            "booking_id": planted.bookings.get(user, 1),
            "amount_cents": AMOUNTS.get(user, 5),
            "card_number": CARD,
        },
        "/api/refunds": {"payment_id": 1},
        "/api/auth/login": {"username": user, "password": planted.secrets[0]},
        "/api/admin/provider": {
            "mode": "ok",
            "password": planted.secrets[0],
            "token": planted.secrets[1],
            "note": f"card {CARD}",
        },
    }


def hostile_bodies() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=200),
        st.just(b"[" * 100_000),
        st.just(b"x" * 300_000),
        st.just(b"\xff\xfe{}"),
        st.just(b'{"passenger": "\\ud800", "flight": "LH401"}'),
        st.just(b'{"booking_id": 1e999, "amount_cents": true, "card_number": ["x"]}'),
    )


PARTS = ("none", "method", "path", "query", "host", "key", "request-id", "content-type", "body")


@st.composite
def hostile_requests(draw: st.DrawFn, planted: Planted) -> tuple[str, bytes, bytes]:
    """A request to a real route by one of the users, with (at most) one part made hostile."""
    part = draw(st.sampled_from(PARTS))

    def pick(name: str, sane: bytes, hostile: st.SearchStrategy[bytes]) -> bytes:
        return draw(hostile) if part == name else sane

    user = draw(st.sampled_from(["alice", "bob", "anonymous", "forged", "admin", "admin-token"]))
    method, route = draw(st.sampled_from(ROUTES))
    method = pick(
        "method", method, st.sampled_from([b"GET", b"POST", b"DELETE", b"PUT", b"G\x00T", b"X" * 300])
    )
    path = route.format(booking=planted.bookings[draw(st.sampled_from(["alice", "bob"]))]).encode()
    path += pick("path", b"", st.sampled_from([suffix.encode() for suffix in NASTY]))
    secrets = [(b"token", planted.secrets[1].encode()), (b"password", planted.secrets[1].encode())]
    plain = [(b"from", b"FRA"), (b"date", b"2030-01-01"), (b"limit", b"5")]
    names = st.sampled_from([b"from", b"to", b"date", b"user_id", b"limit", b"since", b"x"])
    values = st.one_of(
        st.sampled_from([b"%00", b"%23", b"%3F", b"%0d%0a", b"-1", b"9" * 40]),
        st.text().map(lambda value: quote(value.encode("utf-8", "surrogatepass")).encode()),
    )
    hostile_params = st.lists(st.tuples(names, values), min_size=1, max_size=8).map(
        lambda extra: plain + extra
    )
    params = draw(st.just(plain) if part != "query" else hostile_params) + secrets
    target = path + b"?" + b"&".join(name + b"=" + value for name, value in params)
    headers = [(b"Host", pick("host", b"127.0.0.1", header_values()))]
    token = {"anonymous": "", "forged": "eyJzdWIiOiJib2IifQ.forged", "admin-token": ADMIN_TOKEN}.get(
        user, planted.tokens.get(user, "")
    )
    if token:
        headers.append((b"Authorization", b"Bearer " + token.encode()))
    key = draw(st.sampled_from([b"shared-1", b"shared-2", uuid.uuid4().hex.encode()]))
    headers.append((b"Idempotency-Key", pick("key", key, header_values())))
    headers.append((b"X-Request-ID", pick("request-id", uuid.uuid4().hex.encode(), header_values())))
    content_type = st.sampled_from([b"text/plain", b"x/\xff", b"application/json; charset=latin-1"])
    headers.append((b"Content-Type", pick("content-type", b"application/json", content_type)))
    sane_body = documents(planted, user).get(route)
    body = pick("body", json.dumps(sane_body).encode() if sane_body else b"", hostile_bodies())
    head = method + b" " + target + b" HTTP/1.1\r\n"
    head += b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    head += b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
    return user, head, body


def plant(stack: Stack) -> Planted:
    run = uuid.uuid4().hex[:10]
    tokens = {name: stack.login(name) for name in ("alice", "bob", "admin")}
    markers = {"alice": f"MARK-A-{run}", "bob": f"MARK-B-{run}"}
    bookings = {}
    for user in ("alice", "bob"):
        answer = requests.post(
            f"{stack.url}/api/bookings",
            json={"flight": "LH401", "passenger": markers[user]},
            headers={"Authorization": f"Bearer {tokens[user]}"},
            timeout=10,
        )
        bookings[user] = answer.json()["id"]
    secrets = [f"PW-{run}", f"TK-{run}", *tokens.values(), ADMIN_TOKEN]
    return Planted(tokens, markers, bookings, secrets)


def after_the_attack(stack: Stack, planted: Planted, failures: list[str]) -> int:
    """Sane requests after the hostile ones: bookings are still stored and audited, and the
    same Idempotency-Key used by both users gives each their own payment. Returns bookings made."""
    key = f"same-key-{uuid.uuid4().hex}"
    planted.tokens = {name: stack.login(name) for name in ("alice", "bob")}  # the attack may have logged out
    planted.secrets += planted.tokens.values()
    with requests.Session() as session:
        for user in ("alice", "bob", "alice", "bob"):
            auth = {"Authorization": f"Bearer {planted.tokens[user]}"}
            order = {"booking_id": planted.bookings[user], "amount_cents": AMOUNTS[user], "card_number": CARD}
            paid = session.post(
                f"{stack.url}/api/payments", json=order, headers={**auth, "Idempotency-Key": key}, timeout=10
            )
            if paid.status_code != 201 or leaked(user, paid.content, planted):
                failures.append(
                    f"{user} paying with a key the other user used: {paid.status_code} {paid.text}"
                )
        # Entries PostgreSQL cannot store as they are (a JSON Infinity, NUL in text) once
        # held back every entry batched with them: the bookings after them must be stored.
        for body in (b'{"mode": "ok", "booking_id": 1e999}', b'{"mode": "ok", "note": "a\\u0000b"}'):
            session.post(
                f"{stack.url}/api/admin/provider?x=%00",
                data=body,
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
                timeout=10,
            )
        for number in range(10):
            user = ("alice", "bob")[number % 2]
            booked = session.post(
                f"{stack.url}/api/bookings",
                json={"flight": "LH401", "passenger": planted.markers[user]},
                headers={"Authorization": f"Bearer {planted.tokens[user]}"},
                timeout=10,
            )
            if booked.status_code != 201:
                failures.append(f"booking after the attack: {booked.status_code} {booked.text}")
    return 10


def leaked(user: str, response: bytes, planted: Planted) -> bool:
    """Whether ``user`` (or an anonymous client) got something only the other user may see."""
    others = [name for name in ("alice", "bob") if name != user]
    if user.startswith("admin"):
        return False  # admins read every audit entry by design
    for other in others:
        if planted.markers[other].encode() in response:
            return True
        if re.search(rb'"amount_cents":\s*%d\b' % AMOUNTS[other], response):
            return True
    return False


def test_hostile_requests_get_no_5xx_and_leak_nothing(own_postgres: OwnPostgres, tmp_path: Path) -> None:
    with app_stack(own_postgres, tmp_path) as stack:
        planted = plant(stack)
        port = int(stack.url.rsplit(":", 1)[1])
        seen: Counter[int] = Counter()
        failures: list[str] = []
        created = 2  # the planted bookings

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(request=hostile_requests(planted))
        def attack(request: tuple[str, bytes, bytes]) -> None:
            nonlocal created
            user, head, body = request
            status, response = raw_request(port, head, body)
            seen[status] += 1
            created += status == 201 and re.match(rb"POST /api/bookings[? ]", head) is not None
            if status >= 500:
                failures.append(f"{status} for {head[:300]!r}: {response[:300]!r}")
            if leaked(user, response, planted):
                failures.append(f"leak to {user}: {head[:300]!r}: {response[:300]!r}")
            assert status < 500 and not leaked(user, response, planted), failures[-1]

        attack()
        created += after_the_attack(stack, planted, failures)
        stack.server.stop()  # flushes every worker's audit buffer
        audit_rows = rows(stack.database_url, "SELECT * FROM resilience_audit_log")
        creates = rows(
            stack.database_url, "SELECT count(*) FROM resilience_audit_log WHERE event_type = 'CREATE'"
        )

    text = "\n".join(str(tuple(row)) for row in audit_rows)
    found = [secret for secret in [*planted.secrets, CARD] if secret in text]
    report(
        "7 hostile input",
        requests=sum(seen.values()),
        statuses=dict(sorted(seen.items())),
        failures=len(failures),
        audit_rows=len(audit_rows),
        secrets_in_audit=len(found),
        bookings_created=created,
        audited_creates=creates[0][0],
    )
    assert not failures, failures[:5]
    assert not found
    assert creates[0][0] == created
