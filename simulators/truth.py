"""The ground-truth log: one JSON object per line, schema in docs/simulators.md."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import orjson

from simulators.model import TruthRecord


class TruthWriter:
    """Appends truth records to a JSON-lines file, flushed per record so a reader (or a
    crash) sees whole lines only."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fh: IO[bytes] | None = None
        self.written = 0

    def __enter__(self) -> TruthWriter:
        self._fh = self.path.open("ab")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def write(self, record: TruthRecord) -> None:
        if self._fh is None:
            raise RuntimeError("TruthWriter used outside its context")
        self._fh.write(orjson.dumps(record.to_json()) + b"\n")
        self._fh.flush()
        self.written += 1

    __call__ = write


def read_truth(path: str | Path) -> Iterator[dict[str, Any]]:
    """The records of a truth log, as dicts."""
    with Path(path).open("rb") as fh:
        for line in fh:
            if line.strip():
                yield orjson.loads(line)
