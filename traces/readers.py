"""Readers (and a writer) for the bandwidth-trace file formats the project accepts.

Formats, all returned as `traces.bandwidth.BandwidthTrace` (seconds, kbps):

- **cooked** (Pensieve/NetLLM): one sample a line, `time_s bandwidth_Mbps`, separated by spaces or tabs;
  blank lines are ignored. Sample i's bandwidth holds over (time_s[i-1], time_s[i]] (see `traces.bandwidth`).
- **mahimahi**: one integer millisecond timestamp a line, each a delivery opportunity for one 1500-byte
  packet (repeated timestamps = several packets in the same millisecond). Converted to a step function by
  counting opportunities in bins of `mahimahi_bin_s` (default 1 s): bin k covers [k*bin, (k+1)*bin) ms, the
  last bin ends at (and includes) the last timestamp, which is also the trace's period as in Mahimahi. A bin's
  rate is `packets * 1500 * 8 bit / bin length`. Sample 0 (the interval before time 0, never replayed) repeats
  the first bin's rate.
- **sabre**: a JSON array of `{"duration_ms", "bandwidth_kbps", "latency_ms"}` periods (Sabre's network
  format); period j becomes sample j+1 ending at the cumulative duration; sample 0 repeats period 0.

Format detection (`fmt="auto"`): a `.json` file name, or content whose first non-blank character is `[`,
is sabre; otherwise the first non-blank line decides: one token -> mahimahi, two tokens -> cooked. Anything
else is a `TraceFileError` (a comma-separated line gets a message saying that cooked columns are separated by
spaces or tabs).

Every trace must span at least `traces.bandwidth.MIN_SPAN_S`; a Mahimahi trace may hold at most
`MAX_MAHIMAHI_BINS` bins (its memory grows with its length over the bin).

Errors name the file and the 1-based line number (`path:line: message`) and carry them as attributes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterator

import numpy as np

from traces.bandwidth import MIN_SPAN_S, BandwidthTrace, TraceError

FORMATS = ("cooked", "mahimahi", "sabre")
MAHIMAHI_PACKET_BITS = 1500 * 8
DEFAULT_MAHIMAHI_BIN_S = 1.0
MAX_MAHIMAHI_BINS = 1_000_000
"""About 11.6 days of 1 s bins (some 50 MB while binning). A longer trace is almost surely a mistyped
timestamp, and binning it would allocate memory in proportion (a 10^14 ms stamp asked for 745 GiB)."""
COMMA_HINT = ("comma-separated values? cooked traces separate time_s and bandwidth_Mbps with spaces or tabs, "
              "Mahimahi traces have one integer millisecond timestamp a line")


class TraceFileError(TraceError):
    """A malformed trace file, with the file and 1-based line the problem was found on."""

    def __init__(self, path: Path | str, line: int, message: str) -> None:
        self.path = str(path)
        self.line = line
        self.reason = message
        super().__init__(f"{path}:{line}: {message}")


def _data_lines(text: str) -> Iterator[tuple[int, list[str]]]:
    """(1-based line number, tokens) of every non-blank line."""
    for number, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if tokens:
            yield number, tokens


def _number(path: Path, line: int, token: str, what: str) -> float:
    try:
        value = float(token)
    except ValueError:
        hint = f" ({COMMA_HINT})" if "," in token else ""
        raise TraceFileError(path, line, f"{what} {token!r} is not a number{hint}") from None
    if not math.isfinite(value):
        raise TraceFileError(path, line, f"{what} {token!r} is not finite")
    return value


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TraceFileError(path, 1, f"not a text file ({exc.reason})") from None


def _last_line(text: str) -> int:
    return max(1, len(text.splitlines()))


def read_cooked(path: Path | str, name: str | None = None) -> BandwidthTrace:
    """A Pensieve "cooked" trace: `time_s bandwidth_Mbps` per line."""
    path = Path(path)
    text = _read_text(path)
    times: list[float] = []
    rates_kbps: list[float] = []
    for line, tokens in _data_lines(text):
        if len(tokens) != 2:
            hint = f" ({COMMA_HINT})" if "," in "".join(tokens) else ""
            raise TraceFileError(path, line,
                                 f"expected 2 columns (time_s bandwidth_Mbps), found {len(tokens)}{hint}")
        time_s = _number(path, line, tokens[0], "time")
        mbps = _number(path, line, tokens[1], "bandwidth")
        if mbps < 0:
            raise TraceFileError(path, line, f"negative bandwidth {tokens[1]}")
        if times and time_s < times[-1]:
            raise TraceFileError(path, line, f"time goes backwards ({tokens[0]} after {times[-1]:g})")
        kbps = mbps * 1000.0
        if not math.isfinite(kbps):  # finite Mbps near the float limit overflow in kbps
            raise TraceFileError(path, line, f"bandwidth {tokens[1]} Mbps is too large")
        times.append(time_s)
        rates_kbps.append(kbps)
    return _finish(path, text, name, times, rates_kbps)


def _finish(path: Path, text: str, name: str | None, times: list[float], rates_kbps: list[float],
            latency_ms: list[float] | None = None) -> BandwidthTrace:
    last = _last_line(text)
    if not times:
        raise TraceFileError(path, last, "empty trace (no samples)")
    if len(times) < 2:
        raise TraceFileError(path, last, "a trace needs at least 2 samples")
    if times[-1] <= times[0]:
        raise TraceFileError(path, last, "the trace spans no time")
    if times[-1] - times[0] < MIN_SPAN_S:
        raise TraceFileError(path, last, f"the trace spans only {times[-1] - times[0]:.3g} s; at least "
                                         f"{MIN_SPAN_S} s is needed (a replay loops over it)")
    lat = np.asarray(latency_ms, dtype=np.float64) if latency_ms is not None else None
    return BandwidthTrace(name or path.name, np.asarray(times), np.asarray(rates_kbps), lat, source=str(path))


def read_mahimahi(path: Path | str, bin_s: float = DEFAULT_MAHIMAHI_BIN_S,
                  name: str | None = None) -> BandwidthTrace:
    """A Mahimahi packet-delivery trace, binned into a bandwidth step function (see the module docstring)."""
    path = Path(path)
    if not (bin_s > 0 and math.isfinite(bin_s)):
        raise ValueError(f"mahimahi bin must be > 0 s, got {bin_s}")
    text = _read_text(path)
    stamps_ms: list[int] = []
    for line, tokens in _data_lines(text):
        if len(tokens) != 1:
            raise TraceFileError(path, line, f"expected 1 column (timestamp_ms), found {len(tokens)}")
        try:
            stamp = int(tokens[0])
        except ValueError:
            hint = f" ({COMMA_HINT})" if "," in tokens[0] else ""
            raise TraceFileError(path, line, f"timestamp {tokens[0]!r} is not an integer{hint}") from None
        if stamp < 0:
            raise TraceFileError(path, line, f"negative timestamp {stamp}")
        if stamps_ms and stamp < stamps_ms[-1]:
            raise TraceFileError(path, line, f"time goes backwards ({stamp} after {stamps_ms[-1]})")
        stamps_ms.append(stamp)
    last = _last_line(text)
    if not stamps_ms:
        raise TraceFileError(path, last, "empty trace (no timestamps)")
    period_ms = stamps_ms[-1]
    if period_ms <= 0:
        raise TraceFileError(path, last, "the trace spans no time (last timestamp must be > 0 ms)")
    # Compared before any division: a timestamp of hundreds of digits does not fit a float.
    if period_ms > MAX_MAHIMAHI_BINS * bin_s * 1000.0:
        shown = period_ms if period_ms < 10**18 else f"{str(period_ms)[:12]}... ({len(str(period_ms))} digits)"
        raise TraceFileError(path, last, f"last timestamp {shown} ms makes more than {MAX_MAHIMAHI_BINS} bins "
                                         f"of {bin_s:g} s (a wrong timestamp, or use a larger bin)")
    return _bin_mahimahi(path, name, np.asarray(stamps_ms, dtype=np.int64), period_ms, bin_s * 1000.0)


def _bin_mahimahi(path: Path, name: str | None, stamps_ms: np.ndarray, period_ms: int,
                  bin_ms: float) -> BandwidthTrace:
    n_bins = max(1, math.ceil(period_ms / bin_ms))
    edges_ms = np.minimum(np.arange(n_bins + 1) * bin_ms, period_ms).astype(np.float64)
    edges_ms[-1] = period_ms
    # Bin k counts stamps in [edge_k, edge_k+1); the final timestamp goes into the last bin.
    index = np.searchsorted(edges_ms, stamps_ms, side="right") - 1
    index = np.clip(index, 0, n_bins - 1)
    counts = np.bincount(index, minlength=n_bins).astype(np.float64)
    lengths_ms = np.diff(edges_ms)
    rates_kbps = counts * MAHIMAHI_PACKET_BITS / lengths_ms  # bit per ms == kbit per s
    bandwidth = np.concatenate([[rates_kbps[0]], rates_kbps])
    return BandwidthTrace(name or path.name, edges_ms / 1000.0, bandwidth, source=str(path))


def read_sabre(path: Path | str, name: str | None = None) -> BandwidthTrace:
    """A Sabre network JSON: `[{"duration_ms", "bandwidth_kbps", "latency_ms"}, ...]`."""
    path = Path(path)
    text = _read_text(path)
    times = [0.0]
    rates: list[float] = []
    latency: list[float] = []
    for line, entry in _json_array_items(path, text):
        if not isinstance(entry, dict):
            raise TraceFileError(path, line, "each period must be an object with duration_ms, bandwidth_kbps")
        duration_ms = _json_field(path, line, entry, "duration_ms")
        bandwidth_kbps = _json_field(path, line, entry, "bandwidth_kbps")
        latency_ms = _json_field(path, line, entry, "latency_ms", required=False)
        if duration_ms <= 0:
            raise TraceFileError(path, line, f"duration_ms must be > 0, got {duration_ms:g}")
        if bandwidth_kbps < 0:
            raise TraceFileError(path, line, f"negative bandwidth_kbps {bandwidth_kbps:g}")
        if latency_ms < 0:
            raise TraceFileError(path, line, f"negative latency_ms {latency_ms:g}")
        times.append(times[-1] + duration_ms / 1000.0)
        rates.append(bandwidth_kbps)
        latency.append(latency_ms)
    if not rates:
        raise TraceFileError(path, _last_line(text), "empty trace (no periods)")
    return _finish(path, text, name, times, [rates[0], *rates], [latency[0], *latency])


def _json_field(path: Path, line: int, entry: dict, key: str, required: bool = True) -> float:
    if key not in entry:
        if required:
            raise TraceFileError(path, line, f"missing {key!r}")
        return 0.0
    value = entry[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TraceFileError(path, line, f"{key} {value!r} is not a number")
    if not math.isfinite(value):
        raise TraceFileError(path, line, f"{key} {value!r} is not finite")
    return float(value)


def _json_array_items(path: Path, text: str) -> Iterator[tuple[int, object]]:
    """Items of a top-level JSON array with the line each starts on (json.loads loses positions)."""
    decoder = json.JSONDecoder()
    pos = _skip_ws(text, 0)
    if pos >= len(text):
        raise TraceFileError(path, 1, "empty trace (no JSON)")
    if text[pos] != "[":
        raise TraceFileError(path, _line_of(text, pos), "expected a JSON array of periods")
    pos = _skip_ws(text, pos + 1)
    if pos < len(text) and text[pos] == "]":
        return
    while True:
        try:
            item, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise TraceFileError(path, exc.lineno, f"invalid JSON: {exc.msg}") from None
        yield _line_of(text, pos), item
        pos = _skip_ws(text, end)
        if pos < len(text) and text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
            continue
        if pos < len(text) and text[pos] == "]":
            if _skip_ws(text, pos + 1) < len(text):
                raise TraceFileError(path, _line_of(text, pos + 1), "extra data after the JSON array")
            return
        where = _line_of(text, min(pos, len(text) - 1))
        raise TraceFileError(path, where, "expected ',' or ']' in the array")


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def detect_format(path: Path | str) -> str:
    """The format of a trace file by the rule in the module docstring."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        return "sabre"
    text = _read_text(path)
    if text.lstrip().startswith("["):
        return "sabre"
    for line, tokens in _data_lines(text):
        if len(tokens) == 1 and "," in tokens[0]:
            raise TraceFileError(path, line, f"unknown trace format: {COMMA_HINT}")
        if len(tokens) == 1:
            return "mahimahi"
        if len(tokens) == 2:
            return "cooked"
        raise TraceFileError(path, line, f"unknown trace format: {len(tokens)} columns "
                                         "(cooked has 2, mahimahi 1; sabre is a JSON array)")
    raise TraceFileError(path, _last_line(text), "empty trace (no samples)")


def read_trace(path: Path | str, fmt: str = "auto", mahimahi_bin_s: float = DEFAULT_MAHIMAHI_BIN_S,
               name: str | None = None) -> BandwidthTrace:
    """Read one trace file; `fmt` is "auto" or one of FORMATS."""
    path = Path(path)
    if not path.is_file():
        raise TraceError(f"{path}: no such trace file")
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt == "cooked":
        return read_cooked(path, name)
    if fmt == "mahimahi":
        return read_mahimahi(path, mahimahi_bin_s, name)
    if fmt == "sabre":
        return read_sabre(path, name)
    raise ValueError(f"unknown trace format {fmt!r}; expected 'auto' or one of {FORMATS}")


def read_trace_dir(directory: Path | str, pattern: str = "*", fmt: str = "auto",
                   mahimahi_bin_s: float = DEFAULT_MAHIMAHI_BIN_S) -> list[BandwidthTrace]:
    """Every regular, non-hidden file matching `pattern`, in sorted file-name order (NetLLM's order)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise TraceError(f"{directory}: not a directory")
    files = sorted((p for p in directory.glob(pattern) if p.is_file() and not p.name.startswith(".")),
                   key=lambda p: p.name)
    if not files:
        raise TraceError(f"{directory}: no trace files match {pattern!r}")
    return [read_trace(p, fmt, mahimahi_bin_s) for p in files]


def write_cooked(trace: BandwidthTrace, path: Path | str) -> Path:
    """Write a trace in the cooked format (`time_s<TAB>bandwidth_Mbps`); `read_cooked` reads it back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{t!r}\t{b / 1000.0!r}" for t, b in zip(trace.time_s.tolist(), trace.bandwidth_kbps.tolist())]
    path.write_text("\n".join(lines) + "\n")
    return path
