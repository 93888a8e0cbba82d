"""Spill files: where audit entries wait while the database cannot take them.

Each writer process appends to a file of its own next to the configured
path (``<stem>.<pid>.<random><suffix>``), fsynced, and holds an exclusive
``flock`` on it for as long as it lives. Several gunicorn workers therefore
never write into, replay or delete each other's files; and when a process
dies, its lock goes with it, so the next writer to flush adopts the file and
replays it. Rows are inserted with their unique ids, duplicates skipped, so
a replay interrupted by a crash can simply run again.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from ..lifecycle import fork_generation

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: one process, no locking needed
    fcntl = None  # type: ignore[assignment]


def to_line(row: dict[str, Any]) -> str:
    return (
        json.dumps(
            {key: value.isoformat() if isinstance(value, datetime) else value for key, value in row.items()},
            separators=(",", ":"),
        )
        + "\n"
    )


def from_line(line: str) -> dict[str, Any]:
    row: dict[str, Any] = json.loads(line)
    for key in ("occurred_at", "logged_at"):
        if row.get(key):
            row[key] = datetime.fromisoformat(row[key])
    return row


def _lock(fd: int, *, wait: bool) -> bool:
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class SpillFiles:
    def __init__(self, base: Path) -> None:
        self.base = base
        self._generation = fork_generation()
        self._path: Path | None = None
        self._fd: int | None = None

    def _own(self) -> tuple[Path, int]:
        if self._generation != fork_generation():
            # A forked child shares the parent's locked file description:
            # drop its copy (the parent keeps the lock) and start a file of its own.
            if self._fd is not None:
                os.close(self._fd)
            self._path, self._fd = None, None
            self._generation = fork_generation()
        if self._path is None or self._fd is None:
            self.base.parent.mkdir(parents=True, exist_ok=True)
            path = self.base.with_name(
                f"{self.base.stem}.{os.getpid()}.{random.getrandbits(32):08x}{self.base.suffix}"
            )
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            _lock(fd, wait=True)
            self._path, self._fd = path, fd
        return self._path, self._fd

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Append rows durably (fsync) to this process's file."""
        _path, fd = self._own()
        os.write(fd, "".join(to_line(row) for row in rows).encode())
        os.fsync(fd)

    def pending(self) -> bool:
        """Whether this process's file, or a dead process's, holds rows."""
        own = self._path
        if own is not None and own.exists() and own.stat().st_size > 0:
            return True
        return any(path != own and path.stat().st_size > 0 for path in self._siblings())

    def _siblings(self) -> list[Path]:
        if not self.base.parent.exists():
            return []
        found = sorted(self.base.parent.glob(f"{self.base.stem}.*{self.base.suffix}"))
        if self.base.exists():
            found.insert(0, self.base)  # a file written by an older version, unlocked
        return found

    def replay(self, store: Callable[[list[dict[str, Any]]], None]) -> int:
        """Hand every spilled row to ``store`` (which raises if it cannot keep
        them), this process's file first, then files of dead processes; each
        file is emptied or removed only after ``store`` returned. Returns rows replayed."""
        replayed = 0
        own = self._path
        if own is not None and self._fd is not None and own.exists() and own.stat().st_size > 0:
            rows = _read(own)
            store(rows)
            os.ftruncate(self._fd, 0)
            replayed += len(rows)
        for path in self._siblings():
            if path == own:
                continue
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                continue
            try:
                if not _lock(fd, wait=False):  # its writer is alive: its rows are its own
                    continue
                rows = _read(path)
                store(rows)
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                replayed += len(rows)
            finally:
                os.close(fd)
        return replayed

    def close(self) -> None:
        if self._fd is not None and self._generation == fork_generation():
            with contextlib.suppress(OSError):
                if self._path is not None and self._path.stat().st_size == 0:
                    self._path.unlink()
            os.close(self._fd)
        self._path, self._fd = None, None


def _read(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as spill:
        return [from_line(line) for line in spill if line.strip()]
