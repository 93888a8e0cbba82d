"""Every benchmark in one table: figure | ours | peer | ratio | target | met.

Run: ``python benchmarks/run_all.py [--quick] [--only NAME ...] [--write benchmarks/RESULTS.md]``

Each ``benchmarks/bench_*.py`` module (and ``stack.py``) is imported in a
process of its own and asked for ``figures(quick)`` (see ``harness.Figure``):
one module's environment (``bench_metrics`` sets prometheus_client's
multiprocess directory at import), threads or crash cannot touch another's
figures. A module without ``figures``, one that raises, times out or dies,
gets a failed row saying why; the table is always printed.

``--quick`` is a smoke run (small counts, well under a minute for the cheap
modules): its figures are not for comparison. ``--write`` also writes the
table, with the date, machine, Python, Redis and PostgreSQL versions and the
command, to a Markdown file. Figures measured on a loaded machine say little:
the load average is printed (and written) beside them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import Figure  # noqa: E402

MARK = "@@figures@@ "  # the child's one line of results, among whatever the benchmark prints
HEADER = ("figure", "ours", "peer", "ratio", "target", "met")


@dataclass(frozen=True)
class Failed:
    """A module that gave no figures, and why."""

    module: str
    reason: str


Row = Figure | Failed


def modules(directory: Path, only: list[str]) -> list[str]:
    """Benchmark modules in ``directory``: ``bench_*.py`` then ``stack.py``,
    those whose name contains one of ``only`` (all when empty)."""
    names = sorted(path.stem for path in directory.glob("bench_*.py"))
    if (directory / "stack.py").exists():
        names.append("stack")
    return [name for name in names if not only or any(word in name for word in only)]


def child(directory: Path, module: str, quick: bool) -> None:
    """In the child process: import ``module``, print its figures on one marked line."""
    sys.path.insert(0, str(directory))
    imported = __import__(module)
    figures = getattr(imported, "figures", None)
    if figures is None:
        print(MARK + json.dumps({"error": "the module has no figures()"}), flush=True)
        return
    rows = figures(quick=quick)
    print(MARK + json.dumps({"figures": [dataclasses.asdict(row) for row in rows]}), flush=True)


def run_module(directory: Path, module: str, quick: bool, timeout: float) -> list[Row]:
    """``module``'s rows, measured in a process of its own; a Failed row on any failure."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", module, "--dir", str(directory)]
    if quick:
        command.append("--quick")
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return [Failed(module, f"timed out after {timeout:.0f} s")]
    for line in done.stdout.splitlines():
        if line.startswith(MARK):
            answer: dict[str, Any] = json.loads(line[len(MARK) :])
            if "error" in answer:
                return [Failed(module, str(answer["error"]))]
            return [Figure(**fields) for fields in answer["figures"]] or [Failed(module, "no figures")]
    last = [line for line in done.stderr.strip().splitlines() if line.strip()]
    return [Failed(module, last[-1].strip()[:160] if last else f"exit status {done.returncode}")]


def cells(row: Row) -> tuple[str, ...]:
    if isinstance(row, Failed):
        return (f"{row.module}: FAILED ({row.reason})", "-", "-", "-", "-", "FAILED")
    peer = "-" if row.peer is None else f"{_number(row.peer)} {row.unit}"
    ratio = "-" if row.ratio is None else f"{row.ratio:.2f}"
    met = "-" if row.met is None else ("yes" if row.met else "NO")
    return (row.figure, f"{_number(row.ours)} {row.unit}", peer, ratio, row.target, met)


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.1f}"


def table(rows: list[Row]) -> list[str]:
    """The rows as aligned text lines under one header."""
    lines = [HEADER, *(cells(row) for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    return [
        " | ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    ]


def markdown(rows: list[Row]) -> list[str]:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in cells(row)) + " |" for row in rows]
    return lines


def notes(rows: list[Row]) -> list[str]:
    return [f"- {row.figure}: {row.note}" for row in rows if isinstance(row, Figure) and row.note]


# -- the machine --------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def redis_version(url: str) -> str:
    try:
        import redis  # noqa: PLC0415 (only for --write)

        client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        try:
            return str(client.info("server")["redis_version"])
        finally:
            client.close()
    except Exception as exc:
        return f"unknown ({type(exc).__name__})"


def postgres_version(url: str) -> str:
    try:
        import psycopg  # noqa: PLC0415 (only for --write)

        with psycopg.connect(url, connect_timeout=2) as connection:
            row = connection.execute("SHOW server_version").fetchone()
            return str(row[0]) if row else "unknown"
    except Exception as exc:
        return f"unknown ({type(exc).__name__})"


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def busy(load: str) -> bool:
    """Whether the 1-minute load average says other work shared the cores."""
    try:
        return float(load.split(maxsplit=1)[0]) > 0.5 * (os.cpu_count() or 1)
    except (ValueError, IndexError):
        return False


BUSY = "WARNING: the machine was busy (load average over half the cores): these figures are not comparable"


def machine(redis_url: str, postgres_dsn: str) -> list[str]:
    return [
        f"- machine: {platform.machine()}, {cpu_model()}, {os.cpu_count()} cores",
        f"- Python: {platform.python_version()} ({platform.python_implementation()})",
        f"- Redis server: {redis_version(redis_url)}",
        f"- PostgreSQL server: {postgres_version(postgres_dsn)}",
    ]


def write(path: Path, rows: list[Row], command: str, loads: tuple[str, str], about: list[str]) -> None:
    text = [
        "# Benchmark results",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC with `{command}`.",
        "",
        *about,
        f"- load average (1, 5, 15 min): {loads[0]} before, {loads[1]} after (the run's own load included:"
        " stack.py keeps both cores busy with gunicorn and wrk)",
        "",
        *([BUSY, ""] if busy(loads[0]) else []),
        *markdown(rows),
    ]
    extra = notes(rows)
    if extra:
        text += ["", "Notes:", "", *extra]
    path.write_text("\n".join(text) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke run (figures not for comparison)")
    parser.add_argument(
        "--only", action="append", default=[], metavar="NAME", help="modules whose name contains NAME"
    )
    parser.add_argument("--write", type=Path, metavar="PATH", help="also write the table to PATH (Markdown)")
    parser.add_argument("--timeout", type=float, help="seconds per module (default 120 quick, 1800 full)")
    parser.add_argument(
        "--redis-url", default="redis://127.0.0.1:6379/0", help="whose version --write records"
    )
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test", help="likewise")
    parser.add_argument("--dir", type=Path, default=HERE, help=argparse.SUPPRESS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.dir, args.child, args.quick)
        return
    timeout = args.timeout or (120.0 if args.quick else 1800.0)
    command = " ".join(["python", os.path.relpath(__file__), *sys.argv[1:]])
    before = loadavg()
    print(f"load average before: {before} ({os.cpu_count()} cores)", flush=True)
    rows: list[Row] = []
    for module in modules(args.dir, args.only):
        started = time.monotonic()
        found = run_module(args.dir, module, args.quick, timeout)
        print(f"  {module}: {len(found)} row(s) in {time.monotonic() - started:.0f} s", flush=True)
        rows += found
    after = loadavg()
    print()
    print("\n".join(table(rows)))
    extra = notes(rows)
    if extra:
        print("\nnotes:\n" + "\n".join(extra))
    print(f"\nload average after: {after}")
    if busy(before):  # "after" counts this run's own load (gunicorn and wrk in stack.py)
        print(BUSY)
    if args.write is not None:
        write(args.write, rows, command, (before, after), machine(args.redis_url, args.postgres))
        print(f"written to {args.write}")


if __name__ == "__main__":
    main()
