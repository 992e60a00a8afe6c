"""A local disk spool for raw messages while the database is unreachable.

Append-only segment files in one directory, one record per message, fsync'd before
the caller acknowledges the messages to the broker. A background task replays the
oldest segment into the database and deletes it once committed; a crash between
commit and delete replays that segment again, which the writer's dedup makes
harmless. The spool is capped in bytes: when full, `append` waits for room, so the
intake stops acknowledging and the broker keeps the messages (never dropped).

Record layout (big-endian): u32 body length, u32 CRC-32 of the body, then the body:
u8 flags, i64 received_at (µs since the epoch, UTC), u16 topic length, topic
(UTF-8), payload. A torn record at the end of a segment (a crash mid-write, before
the fsync, so never acknowledged) ends that segment's replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

logger = logging.getLogger(__name__)

_HEAD = struct.Struct(">II")
_META = struct.Struct(">BqH")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SUFFIX = ".seg"
FLAG_RATE_LIMITED = 1  # the intake had already rejected it as rate limited
FLAG_DUP = 2  # the broker marked it as a redelivery (MQTT DUP)


class SpoolError(RuntimeError):
    """The spool directory cannot be used (locked by another process, unwritable)."""


@dataclass(frozen=True, slots=True)
class SpooledMessage:
    """One raw message as spooled: enough to parse it again at replay."""

    topic: str
    payload: bytes
    received_at: datetime
    flags: int = 0


@dataclass(frozen=True, slots=True)
class Segment:
    """A closed segment handed to the replayer; `release` it once committed."""

    path: Path
    messages: list[SpooledMessage]
    size_bytes: int


def encode(msg: SpooledMessage) -> bytes:
    topic = msg.topic.encode("utf-8", "surrogatepass")[:65535]
    micros = (msg.received_at - _EPOCH) // timedelta(microseconds=1)
    body = _META.pack(msg.flags, micros, len(topic)) + topic + msg.payload
    return _HEAD.pack(len(body), zlib.crc32(body)) + body


def decode_all(data: bytes) -> tuple[list[SpooledMessage], int]:
    """Records of one segment, and how many bytes were valid (a torn tail is cut)."""
    out: list[SpooledMessage] = []
    pos = 0
    while pos + _HEAD.size <= len(data):
        length, crc = _HEAD.unpack_from(data, pos)
        body = data[pos + _HEAD.size : pos + _HEAD.size + length]
        if len(body) < length or zlib.crc32(body) != crc or length < _META.size:
            break
        flags, micros, tlen = _META.unpack_from(body)
        topic = body[_META.size : _META.size + tlen].decode("utf-8", "surrogatepass")
        out.append(
            SpooledMessage(
                topic=topic,
                payload=bytes(body[_META.size + tlen :]),
                received_at=_EPOCH + timedelta(microseconds=micros),
                flags=flags,
            )
        )
        pos += _HEAD.size + length
    return out, pos


class Spool:
    """The spool directory of one intake process (an exclusive lock enforces that).

    Use as an async context manager. `append` from the intake, `next_segment` and
    `release` from the replayer; `pending` says whether anything waits for replay.
    """

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int = 1 << 30,
        segment_max_bytes: int = 8 << 20,
    ) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_max_bytes = segment_max_bytes
        self._lock_fd: int | None = None
        self._head_fd: int | None = None
        self._head: Path | None = None
        self._head_bytes = 0
        self._next_no = 1
        self._closed: list[Path] = []  # oldest first, all awaiting replay
        self._sizes: dict[Path, int] = {}
        self._lock = asyncio.Lock()
        self._changed = asyncio.Condition()
        self.spooled_total = 0
        self.replayed_total = 0

    # --- lifecycle ---------------------------------------------------------------

    async def __aenter__(self) -> Spool:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.directory / "LOCK", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise SpoolError(f"cannot use spool directory {self.directory}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise SpoolError(
                f"spool directory {self.directory} is in use by another process;"
                " give every ingest worker its own HEALTHMON_SPOOL_DIR"
            ) from exc
        self._lock_fd = fd
        for path in sorted(self.directory.glob(f"*{_SUFFIX}")):
            size = path.stat().st_size
            if size == 0:
                path.unlink()
                continue
            self._closed.append(path)
            self._sizes[path] = size
            self._next_no = max(self._next_no, int(path.stem) + 1)
        if self._closed:
            logger.warning(
                "spool %s holds %d segments (%d bytes) from a previous run; replaying",
                self.directory,
                len(self._closed),
                self.size_bytes,
            )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._head_fd is not None:
            os.close(self._head_fd)
            self._head_fd = None
            if self._head is not None and self._head_bytes == 0:
                self._head.unlink(missing_ok=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # --- state -------------------------------------------------------------------

    @property
    def size_bytes(self) -> int:
        return sum(self._sizes.values()) + self._head_bytes

    @property
    def pending(self) -> bool:
        """Anything spooled and not yet replayed (new messages must queue behind it)."""
        return bool(self._closed) or self._head_bytes > 0

    def segments(self) -> int:
        return len(self._closed) + (1 if self._head_bytes else 0)

    # --- intake side -------------------------------------------------------------

    async def append(self, messages: Sequence[SpooledMessage]) -> None:
        """Write and fsync; returns when the messages are durable. Waits while full."""
        data = b"".join(encode(m) for m in messages)
        async with self._changed:
            # An empty spool always takes a batch, however large: no deadlock.
            await self._changed.wait_for(
                lambda: self.size_bytes == 0 or self.size_bytes + len(data) <= self.max_bytes
            )
        async with self._lock:
            if self._head_fd is None or self._head_bytes >= self.segment_max_bytes:
                self._rotate()
                await asyncio.to_thread(self._open_head)
            fd = self._head_fd
            assert fd is not None
            await asyncio.to_thread(_write_fsync, fd, data)
            self._head_bytes += len(data)
            self.spooled_total += len(messages)
        async with self._changed:
            self._changed.notify_all()

    def _open_head(self) -> None:
        path = self.directory / f"{self._next_no:016d}{_SUFFIX}"
        self._next_no += 1
        self._head_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._head, self._head_bytes = path, 0
        _fsync_dir(self.directory)  # the new file's name is durable too

    def _rotate(self) -> None:
        """Close the head segment; it becomes the newest one awaiting replay."""
        if self._head_fd is None:
            return
        os.close(self._head_fd)
        assert self._head is not None
        if self._head_bytes:
            self._closed.append(self._head)
            self._sizes[self._head] = self._head_bytes
        else:
            self._head.unlink(missing_ok=True)
        self._head_fd, self._head, self._head_bytes = None, None, 0

    # --- replay side -------------------------------------------------------------

    async def wait_pending(self) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.pending)

    async def next_segment(self) -> Segment | None:
        """The oldest spooled segment (closing the head if it is the only one)."""
        async with self._lock:
            if not self._closed:
                self._rotate()
            if not self._closed:
                return None
            path = self._closed[0]
        data = await asyncio.to_thread(path.read_bytes)
        messages, valid = decode_all(data)
        if valid < len(data):
            logger.warning(
                "spool segment %s: %d torn bytes at the end ignored (never acknowledged)",
                path.name,
                len(data) - valid,
            )
        return Segment(path, messages, self._sizes.get(path, len(data)))

    async def release(self, segment: Segment) -> None:
        """The segment's messages are committed: delete it and make room."""
        async with self._lock:
            await asyncio.to_thread(_unlink_durably, segment.path)
            with contextlib.suppress(ValueError):
                self._closed.remove(segment.path)
            self._sizes.pop(segment.path, None)
            self.replayed_total += len(segment.messages)
        async with self._changed:
            self._changed.notify_all()


def _write_fsync(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
    os.fsync(fd)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_durably(path: Path) -> None:
    path.unlink(missing_ok=True)
    _fsync_dir(path.parent)


__all__ = [
    "FLAG_DUP",
    "FLAG_RATE_LIMITED",
    "Segment",
    "Spool",
    "SpoolError",
    "SpooledMessage",
    "decode_all",
    "encode",
]
