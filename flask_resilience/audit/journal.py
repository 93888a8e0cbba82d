"""The write-ahead journal: every entry is on disk before ``record()`` returns.

Each writer process appends to a file of its own next to the configured path
(``<stem>.<pid>.<random><suffix>``) and holds an exclusive ``flock`` on it for
as long as it lives. One line per record, written with one ``write()``:

- an entry: ``<crc32> E <entry_hash> <prev_hash> <canonical JSON>``, the very
  bytes the hash chain hashed (see :func:`chain.canonical`), so an entry is
  encoded once, linked once, and replays carry their chain place with them;
- a keyed entry: ``<crc32> K <key_id> <entry_hash> <prev_hash> <canonical JSON>``
  (the key id is not hashed, so it travels beside the canonical bytes);
- a commit mark: ``<crc32> C <offset>``: every entry before ``offset`` is stored.

The flush thread stores entries and then commits their offset; when nothing
is left uncommitted the file is truncated, and a long uncommitted tail is
compacted into a fresh file, so appends never race a truncate. A torn last
line (a crash mid-write) fails its checksum and ends the read. When a process
dies (SIGKILL, OOM) its lock goes with it: the next writer to flush adopts the
file and stores what was not committed; rows carry their ids, so storing twice
is harmless. No fsync by default: the page cache outlives a killed process
(``fsync="interval"`` or ``"always"`` also survives a machine crash).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..lifecycle import fork_generation
from .chain import from_canonical

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: one process, no locking needed
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger("flask_resilience.audit")

FSYNC_MODES = ("never", "interval", "always")
COMPACT_AFTER = 1 << 20  # bytes of committed entries before the tail moves to a fresh file
# A dead process's journal (up to the spill bound, 256 MiB by default) is read
# and stored this much at a time: parsed whole it takes several times its size
# in memory, enough to get the adopting worker killed too after a long outage.
ADOPT_CHUNK_BYTES = 4 << 20
Stored = list[tuple[dict[str, Any], int]]  # rows, each with the offset just past its record


def entry_record(row: dict[str, Any], encoded: bytes) -> bytes:
    """The journal line of a linked row (``encoded``: its canonical bytes)."""
    body = b"E " + row["entry_hash"].encode() + b" " + row["prev_hash"].encode() + b" " + encoded
    kid = row.get("key_id")
    if kid:
        body = b"K " + kid.encode() + b" " + body[2:]
    return b"%08x %s\n" % (zlib.crc32(body), body)


def _commit_record(offset: int) -> bytes:
    body = b"C %d" % offset
    return b"%08x %s\n" % (zlib.crc32(body), body)


def _records(data: bytes, base: int, report: bool = True) -> Iterator[tuple[bytes, bytes, int]]:
    """``(kind, payload, end offset)`` of each intact record. A damaged line
    is skipped (each record has its own checksum, so the ones after it can
    be trusted); a torn last line, with no newline yet, ends the read."""
    position = 0
    while True:
        end = data.find(b"\n", position)
        if end < 0:
            return
        line = data[position:end]
        body = line[9:]
        try:
            intact = len(line) > 11 and int(line[:8], 16) == zlib.crc32(body)
        except ValueError:
            intact = False
        if not intact:
            if report:
                logger.error("audit journal: a damaged record at byte %d skipped", base + position)
            position = end + 1
            continue
        position = end + 1
        yield body[:1], body[2:], base + position


def parse(data: bytes, base: int = 0) -> tuple[Stored, int]:
    """The entries in ``data`` (read from offset ``base``) and the highest commit mark."""
    rows: Stored = []
    committed = 0
    for kind, payload, end in _records(data, base):
        if kind in (b"E", b"K"):
            rows.append((_entry(kind, payload), end))
        elif kind == b"C":
            committed = max(committed, int(payload))
    return [(row, end) for row, end in rows if end > committed], committed


def _entry(kind: bytes, payload: bytes) -> dict[str, Any]:
    kid = None
    if kind == b"K":
        kid_bytes, _, payload = payload.partition(b" ")
        kid = kid_bytes.decode()
    row = from_canonical(payload[130:])
    row["entry_hash"], row["prev_hash"] = payload[:64].decode(), payload[65:129].decode()
    row["key_id"] = kid
    return row


def _chunks(fd: int, size: int, start: int = 0) -> Iterator[tuple[bytes, int]]:
    """``(data, offset)``: the file from ``start`` to ``size`` in pieces of about
    ADOPT_CHUNK_BYTES, each ending at the end of a record (a torn last line is
    left out)."""
    offset = start
    while offset < size:
        data = os.pread(fd, min(ADOPT_CHUNK_BYTES, size - offset), offset)
        cut = data.rfind(b"\n") + 1
        while not cut:  # a record longer than a chunk
            more = os.pread(fd, min(ADOPT_CHUNK_BYTES, size - offset - len(data)), offset + len(data))
            if not more:
                return
            data += more
            cut = data.rfind(b"\n") + 1
        yield data[:cut], offset
        offset += cut


def _adopt_file(fd: int, store: Callable[[list[dict[str, Any]]], None]) -> int:
    """Store the uncommitted entries of an adopted file, a chunk at a time."""
    size = os.fstat(fd).st_size
    committed = 0  # commit marks only grow within a file: the last one counts
    for data, base in _chunks(fd, size):
        for kind, payload, _ in _records(data, base, report=False):
            if kind == b"C":
                committed = max(committed, int(payload))
    stored = 0
    for data, base in _chunks(fd, size):
        rows, _ = parse(data, base)
        batch = [row for row, end in rows if end > committed]
        store(batch)
        stored += len(batch)
    return stored


def _lock(fd: int) -> bool:
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class Journal:
    """This process's journal file (callers serialise appends and commits)."""

    def __init__(self, base: Path, *, fsync: str = "never", max_bytes: int = 1 << 30) -> None:
        if fsync not in FSYNC_MODES:
            raise ValueError(f"fsync must be one of {', '.join(FSYNC_MODES)}, got {fsync!r}")
        self.base = base
        self.fsync = fsync
        self.max_bytes = max_bytes
        self.rejected_path = base.with_name(base.name + ".rejected.jsonl")
        self._generation = fork_generation()
        self._path: Path | None = None
        self._fd: int | None = None
        self.end = 0  # bytes in the file
        self.committed = 0  # entries before this offset are stored
        self._dirty = False

    def rebase(self, base: Path) -> None:
        """Name this journal after ``base`` instead; only before its file is
        opened (an open file keeps its name: its entries are already there)."""
        if self._fd is not None and self._generation == fork_generation():
            logger.warning("audit journal %s is open; it keeps its name", self._path)
            return
        self.base = base
        self.rejected_path = base.with_name(base.name + ".rejected.jsonl")

    # -- this process's file ---------------------------------------------------------

    def _open(self) -> int:
        if self._generation != fork_generation():
            self.forget()
        if self._fd is None:
            self.base.parent.mkdir(parents=True, exist_ok=True)
            name = f"{self.base.stem}.{os.getpid()}.{random.getrandbits(32):08x}{self.base.suffix}"
            hidden = self.base.with_name("." + name)  # not listed by adopters until locked
            fd = os.open(hidden, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
            _lock(fd)
            os.rename(hidden, self.base.with_name(name))
            self._path, self._fd, self.end, self.committed = self.base.with_name(name), fd, 0, 0
        return self._fd

    def forget(self) -> None:
        """After a fork: let go of the parent's file (the parent keeps its lock)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._path, self._fd, self.end, self.committed = None, None, 0, 0
        self._generation = fork_generation()

    def has_room(self, size: int) -> bool:
        return self.end + size <= self.max_bytes

    def append(self, record: bytes) -> None:
        """One ``write()``; raises OSError (the file is cut back to its last whole record)."""
        fd = self._open()
        self._write_whole(fd, record)
        if self.fsync == "always":
            os.fsync(fd)
        else:
            self._dirty = True

    def _write_whole(self, fd: int, record: bytes) -> None:
        """Append ``record`` whole or not at all: a piece left behind would
        glue itself to the next record and hide every record after it."""
        try:
            if os.write(fd, record) != len(record):
                raise OSError("short write to the audit journal (disk full?)")
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, self.end)
            raise
        # Where the file ends (O_APPEND): right even if an interrupt once
        # came between a write and this line.
        self.end = os.lseek(fd, 0, os.SEEK_CUR)

    def sync(self) -> None:
        """fsync if anything was written since the last one."""
        if self._dirty and self._fd is not None:
            self._dirty = False
            os.fsync(self._fd)

    def read(self, start: int, stop: int) -> Stored:
        """The entries between two offsets of this process's file."""
        if self._fd is None or stop <= start:
            return []
        rows, _ = parse(os.pread(self._fd, stop - start, start), start)
        return rows

    def read_chunks(self, start: int, stop: int) -> Iterator[Stored]:
        """The entries between two offsets of this process's file, a chunk of
        about ADOPT_CHUNK_BYTES at a time (a long outage's journal is never
        held in memory whole)."""
        if self._fd is None:
            return
        for data, base in _chunks(self._fd, stop, start):
            rows, _ = parse(data, base)
            yield rows

    def commit(self, offset: int, *, compact: bool = True) -> None:
        """Entries before ``offset`` are stored: truncate, mark or compact
        (not with ``compact=False``: offsets read before stay valid)."""
        if self._fd is None or offset <= self.committed:
            return
        if offset >= self.end:
            os.ftruncate(self._fd, 0)
            self.end = self.committed = 0
            return
        try:
            self._write_whole(self._fd, _commit_record(offset))
        except OSError as exc:  # the entries stay uncommitted: stored again later, harmlessly
            logger.warning("audit journal commit mark not written (%s)", exc)
            return
        self.committed = offset
        if compact and self.committed >= COMPACT_AFTER:
            self._compact()

    def _compact(self) -> None:
        """Move the uncommitted entries to a fresh file and drop the old one."""
        assert self._fd is not None and self._path is not None
        tail = os.pread(self._fd, self.end - self.committed, self.committed)
        kept = b"".join(
            record
            for record in tail.splitlines(keepends=True)
            if record[9:10] in (b"E", b"K")  # commit marks speak of the old file's offsets
        )
        old = self._path, self._fd, self.end, self.committed
        self._fd = None
        try:
            self.append(kept)
        except OSError as exc:  # no fd, inode or room for the new file: keep the old one
            logger.warning("audit journal not compacted (%s)", exc)
            if self._fd is not None and self._path is not None:
                with contextlib.suppress(OSError):
                    self._path.unlink()
                os.close(self._fd)
            self._path, self._fd, self.end, self.committed = old
            return
        os.unlink(old[0])  # only now: until here the old file still holds every entry
        os.close(old[1])

    def close(self) -> None:
        if self._fd is not None and self._generation == fork_generation():
            if self.end == 0 and self._path is not None:
                with contextlib.suppress(OSError):
                    self._path.unlink()
            self.sync()
            os.close(self._fd)
        self._path, self._fd, self.end, self.committed = None, None, 0, 0

    # -- dead processes' files -------------------------------------------------------------

    def _others(self) -> list[Path]:
        # Only names _open() gives: adoption deletes what it adopts, and a
        # looser pattern would take rotated logs or the quarantine file too.
        own = re.compile(rf"{re.escape(self.base.stem)}\.\d+\.[0-9a-f]{{8}}{re.escape(self.base.suffix)}")
        try:
            found = sorted(self.base.parent.glob(f"{self.base.stem}.*{self.base.suffix}"))
        except OSError:
            return []
        return [path for path in found if path != self._path and own.fullmatch(path.name)]

    def adopt(self, store: Callable[[list[dict[str, Any]]], None]) -> int:
        """Store the uncommitted entries of dead processes' journals and remove
        them; ``store`` raises when it cannot. Live writers' files are skipped
        (locked), and so are files that vanish meanwhile. Returns entries stored."""
        adopted = 0
        for path in self._others():
            try:
                fd = os.open(path, os.O_RDWR)
            except OSError:
                continue  # gone (or a dangling name) since it was listed
            try:
                if not _lock(fd):
                    continue  # its writer is alive: its entries are its own
                with contextlib.suppress(OSError):
                    if os.fstat(fd).st_ino != os.stat(path).st_ino:
                        continue  # replaced while we opened it
                    stored = _adopt_file(fd, store)
                    os.unlink(path)
                    adopted += stored
            finally:
                os.close(fd)
        return adopted

    def reject(self, row: dict[str, Any], reason: str) -> None:
        """Keep a row the database refused, with the reason, for a human to look at."""
        line = json.dumps({"reason": reason, "row": row}, default=str, separators=(",", ":")) + "\n"
        self.base.parent.mkdir(parents=True, exist_ok=True)
        with self.rejected_path.open("ab") as rejected:
            # The journal's bound holds here too: what a client can get
            # refused must not fill the disk (the AUDIT_GAP entry still tells).
            if os.fstat(rejected.fileno()).st_size + len(line) > self.max_bytes:
                raise OSError(f"the quarantine file is full ({self.max_bytes:,} bytes)")
            rejected.write(line.encode())
