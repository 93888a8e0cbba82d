"""The HTML dashboard: served to browsers, JSON stays the default, and the
page, rendered by headless Chromium, shows what the JSON says."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest

from example_app import create_app
from tests.example_server import Running, serve

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


@pytest.fixture
def example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Running]:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    app = create_app({"EXAMPLE_BREAKER_OPEN_SECONDS": 60.0}, instance_path=str(tmp_path / "instance"))
    yield from serve(app)


class Elements(HTMLParser):
    """Every element's attributes and text, from a dumped DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str | None], list[str]]] = []
        self._open: list[list[str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        text: list[str] = []
        self.found.append((tag, dict(attrs), text))
        if tag not in ("input", "meta", "br", "img", "link"):
            self._open.append(text)

    def handle_endtag(self, tag: str) -> None:
        if self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for text in self._open:
            text.append(data)

    def where(self, **wanted: str) -> list[tuple[dict[str, str | None], str]]:
        return [
            (attrs, "".join(text).strip())
            for _, attrs, text in self.found
            if all(attrs.get(name.replace("_", "-")) == value for name, value in wanted.items())
        ]


def chromium(*arguments: str, profile: Path) -> str:
    """Run Debian's headless Chromium (``.ci/run`` installs it); returns stdout."""
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.fail("chromium is not installed: apt-get install chromium (.ci/run does)", pytrace=False)
    command = [
        executable,
        "--headless",
        "--no-sandbox",  # tests may run as root in a container
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=8000",  # lets the page's fetch finish before the DOM is dumped
        *arguments,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def drive_features(example: Running) -> str:
    """Open the provider's breaker, make cache hits; returns an admin token."""
    admin = example.login("admin")
    for _ in range(3):
        assert example.call("GET", "/api/flights?from=FRA&to=JFK&date=2030-01-01").ok
    assert example.call("POST", "/api/admin/provider", admin, json={"mode": "fail"}).ok
    statuses = [example.call("GET", f"/api/flights?date=x{number}").status_code for number in range(4)]
    assert statuses == [502, 502, 502, 503]
    return admin


def test_browsers_get_the_page_and_json_stays_the_default(example: Running) -> None:
    page = example.call("GET", "/api/health/dashboard", headers={"Accept": BROWSER_ACCEPT})
    assert (page.status_code, page.headers["Content-Type"]) == (200, "text/html; charset=utf-8")
    policy = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert (
        "http://" not in page.text.replace(example.url, "") and "https://" not in page.text
    )  # self-contained
    assert example.call("GET", "/api/health/dashboard.html").text == page.text
    # JSON is the default and keeps its admin protection.
    for accept in (None, "*/*", "application/json"):
        headers = {"Accept": accept} if accept else {}
        answer = example.call("GET", "/api/health/dashboard", headers=headers)
        assert (answer.status_code, answer.headers["Content-Type"]) == (403, "application/problem+json")
    admin = example.login("admin")
    assert example.call("GET", "/api/health/dashboard", admin).json()["features"]["cache"] is not None


def test_page_in_headless_chromium_shows_the_open_breaker_and_the_hit_rate(
    example: Running, tmp_path: Path
) -> None:
    admin = drive_features(example)
    url = f"{example.url}/api/health/dashboard.html#token={admin}"
    dom = Elements()
    dom.feed(chromium("--dump-dom", url, profile=tmp_path / "profile"))

    breakers = dom.where(data_breaker="flights-provider")
    assert [attrs["data-state"] for attrs, _ in breakers] == ["OPEN"]
    assert "OPEN" in breakers[0][1] and "next trial in" in breakers[0][1]
    ((_, hit_rate),) = dom.where(id="cache-hit-rate")
    assert hit_rate.endswith("hit rate")
    assert float(hit_rate.split("%")[0]) > 0, hit_rate
    assert dom.where(data_endpoint="flights.search_flights")
    ((login, _),) = dom.where(id="login")
    assert "hidden" in login  # the token was accepted

    screenshot = tmp_path / "dashboard.png"
    chromium(f"--screenshot={screenshot}", "--window-size=1400,1000", url, profile=tmp_path / "profile-2")
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_page_without_a_token_asks_for_one(example: Running, tmp_path: Path) -> None:
    dom = Elements()
    dom.feed(chromium("--dump-dom", f"{example.url}/api/health/dashboard.html", profile=tmp_path / "p"))
    ((login, _),) = dom.where(id="login")
    ((board, _),) = dom.where(id="board")
    assert "hidden" not in login
    assert "hidden" in board
    assert not dom.where(data_breaker="flights-provider")
