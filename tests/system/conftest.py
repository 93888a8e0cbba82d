"""Fixtures for the whole-stack scenarios: one throwaway PostgreSQL cluster per
run (each scenario gets its own database in it), and the counts summary."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.system.harness import COUNTS, OwnPostgres


@pytest.fixture(scope="session")
def own_postgres() -> Iterator[OwnPostgres]:
    cluster = OwnPostgres()
    yield cluster
    cluster.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not COUNTS:
        return
    terminalreporter.section("system scenarios: counts")
    for scenario, counts in COUNTS:
        figures = ", ".join(f"{name}={value}" for name, value in counts.items())
        terminalreporter.write_line(f"{scenario}: {figures}")
