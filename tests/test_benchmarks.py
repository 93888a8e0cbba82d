"""``benchmarks/run_all.py`` keeps working: one table whatever the modules do.

No timing is asserted here (benchmarks never run in tests): only that the
script runs, reads every module's ``figures()``, and turns a module without
them, or one that raises, into a failed row instead of crashing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

RUN_ALL = Path(__file__).resolve().parent.parent / "benchmarks" / "run_all.py"

_OK = """
from harness import Figure

def figures(quick: bool = False) -> list[Figure]:
    print("chatter a benchmark may print")
    return [Figure("fake figure", 2.0, 4.0, 0.5, "<= 1.0", True, note="quick" if quick else "full")]
"""
_RAISES = """
def figures(quick: bool = False):
    raise RuntimeError("no database here")
"""
_MISSING = """
def main() -> None:
    print("no figures in this one")
"""


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(RUN_ALL), *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_every_module_gets_a_row_and_failures_do_not_stop_the_table(tmp_path: Path) -> None:
    (tmp_path / "bench_ok.py").write_text(_OK)
    (tmp_path / "bench_raises.py").write_text(_RAISES)
    (tmp_path / "bench_missing.py").write_text(_MISSING)
    (tmp_path / "stack.py").write_text(_RAISES)
    (tmp_path / "helper.py").write_text(_RAISES)  # not a benchmark: never run
    results = tmp_path / "RESULTS.md"

    done = run("--quick", "--dir", str(tmp_path), "--write", str(results))

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    header = next(index for index, line in enumerate(lines) if line.startswith("figure"))
    assert [cell.strip() for cell in lines[header].split("|")] == [
        "figure",
        "ours",
        "peer",
        "ratio",
        "target",
        "met",
    ]
    rows = lines[header + 1 : header + 5]
    assert rows[0].startswith("bench_missing: FAILED (the module has no figures())")
    assert [cell.strip() for cell in rows[1].split("|")] == [
        "fake figure",
        "2.0 us",
        "4.0 us",
        "0.50",
        "<= 1.0",
        "yes",
    ]
    assert rows[2].startswith("bench_raises: FAILED (RuntimeError: no database here)")
    assert rows[3].startswith("stack: FAILED (RuntimeError: no database here)")
    assert "helper" not in done.stdout
    assert "- fake figure: quick" in done.stdout  # figures(quick=True) was asked for

    written = results.read_text()
    assert "| fake figure | 2.0 us | 4.0 us | 0.50 | <= 1.0 | yes |" in written
    for fact in ("python benchmarks/run_all.py --quick", "- machine: ", "- Python: ", "- Redis server: "):
        assert fact in written
    assert "- PostgreSQL server: " in written and "load average" in written


def test_only_selects_modules_by_name(tmp_path: Path) -> None:
    (tmp_path / "bench_ok.py").write_text(_OK)
    (tmp_path / "bench_raises.py").write_text(_RAISES)
    done = run("--quick", "--dir", str(tmp_path), "--only", "ok")
    assert done.returncode == 0, done.stderr
    assert "fake figure" in done.stdout and "bench_raises" not in done.stdout


def test_a_real_benchmark_gives_its_rows_in_a_quick_run() -> None:
    """One of the shipped modules end to end (the histograms benchmark: its
    peer, prometheus_client, is a test dependency; the breaker's peers are
    in benchmarks/requirements.txt only)."""
    done = run("--quick", "--only", "histograms")
    assert done.returncode == 0, done.stderr
    assert "FAILED" not in done.stdout, done.stdout
    assert "duration observation" in done.stdout
    assert "size observation" in done.stdout
