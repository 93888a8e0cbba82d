"""Fixtures for the whole-stack scenarios: one throwaway PostgreSQL cluster per
run (each scenario gets its own database in it), and the counts summary."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system.harness import COUNTS, OwnPostgres


@pytest.fixture(scope="session")
def own_postgres() -> Iterator[OwnPostgres]:
    folder = Path(tempfile.mkdtemp(prefix="resilience-system-pg-"))
    cluster = OwnPostgres(folder)
    yield cluster
    try:
        cluster.stop("immediate")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not COUNTS:
        return
    terminalreporter.section("system scenarios: counts")
    for scenario, counts in COUNTS:
        figures = ", ".join(f"{name}={value}" for name, value in counts.items())
        terminalreporter.write_line(f"{scenario}: {figures}")
