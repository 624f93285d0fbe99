"""The server's request log: one CSV row per media request, appended and flushed as it completes.

Columns (`REQUEST_LOG_COLUMNS`): `wall_time_s` (unix time the request arrived), `method`, `path`, `status`,
`bytes_sent` (body bytes handed to the kernel), `first_byte_s` (arrival -> response headers written, including
the emulated delay), `duration_s` (arrival -> last byte written), `first_byte_delay_ms` (the emulated delay
applied), `remote` (client address), `aborted` (1 when the client went away before the last byte).

"Written" means accepted by the kernel's socket buffer. The server bounds the unsent part of that buffer
(TCP_NOTSENT_LOWAT, see `ServerConfig.notsent_lowat_bytes`), so on a shaped link `duration_s` trails the
real delivery only by about one congestion window.
"""

from __future__ import annotations

import contextlib
import csv
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import Iterator, TextIO

REQUEST_LOG_COLUMNS: tuple[str, ...] = (
    "wall_time_s", "method", "path", "status", "bytes_sent", "first_byte_s", "duration_s",
    "first_byte_delay_ms", "remote", "aborted")


@dataclass
class RequestRecord:
    wall_time_s: float
    method: str
    path: str
    status: int
    bytes_sent: int
    first_byte_s: float
    duration_s: float
    first_byte_delay_ms: float
    remote: str
    aborted: int


assert tuple(f.name for f in fields(RequestRecord)) == REQUEST_LOG_COLUMNS


class RequestLog:
    """Append-only CSV; the header is written when the file is new or empty.

    A request whose row is still to come holds the file open (`request_in_flight`): at shutdown aiohttp may
    run the app's clean-up (which calls `close`) before a cancelled handler has written its row, and that
    row must not be lost. The file is then closed when the last such request is done."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: TextIO = self.path.open("a", newline="")
        self._requests_in_flight = 0
        self._close_requested = False
        self._writer = csv.writer(self._file)
        if self._file.tell() == 0:
            self._writer.writerow(REQUEST_LOG_COLUMNS)
            self._file.flush()

    def write(self, record: RequestRecord) -> None:
        row = astuple(record)
        self._writer.writerow([f"{v:.6f}" if isinstance(v, float) else v for v in row])
        self._file.flush()  # a crashed or killed run still leaves every finished request on disk

    @contextlib.contextmanager
    def request_in_flight(self) -> Iterator["RequestLog"]:
        """Keep the file open until the block (which writes the request's row) has ended."""
        self._requests_in_flight += 1
        try:
            yield self
        finally:
            self._requests_in_flight -= 1
            if self._close_requested and self._requests_in_flight == 0:
                self._file.close()

    def close(self) -> None:
        """Close now, or once the requests in flight have written their rows."""
        self._close_requested = True
        if self._requests_in_flight == 0:
            self._file.close()


def read_request_log(path: Path) -> list[dict[str, str]]:
    """The rows of a request log as dicts keyed by `REQUEST_LOG_COLUMNS` (values as text)."""
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))
