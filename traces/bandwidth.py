"""The one bandwidth-trace type used by the link emulator and the chunk-level simulator.

A trace is a step function of time given by samples (time_s[i], bandwidth_kbps[i]). Following Pensieve's
simulator, sample i's bandwidth holds over the interval (time_s[i-1], time_s[i]]: starting a replay "at sample
index k" means starting at time time_s[k-1] with bandwidth_kbps[k]. When a replay runs past the last sample it
loops back to sample 1 (time shifted so the loop is seamless), as Pensieve does.

Units: seconds, kbps, milliseconds. Readers for the file formats live in `traces.readers`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MIN_SPAN_S = 0.001
"""Shortest trace accepted: one millisecond, Mahimahi's resolution (a one-line Mahimahi file spans 1 ms).
A replay loops over the trace, so a trace spanning (almost) no time would loop (almost) forever."""


class TraceError(ValueError):
    """A malformed trace; the message names the file and, where it applies, the line."""


@dataclass(frozen=True)
class BandwidthTrace:
    name: str
    """Usually the file name; used in logs and results."""
    time_s: np.ndarray
    """Sample timestamps, float64, non-decreasing, at least 2 samples spanning at least MIN_SPAN_S."""
    bandwidth_kbps: np.ndarray
    """Bandwidth of the interval ending at each sample, float64, >= 0 and finite."""
    latency_ms: np.ndarray | None = None
    """Optional per-sample one-way latency (Sabre traces carry it)."""
    source: str | None = field(default=None, compare=False)
    """The file it came from, if any."""

    def __post_init__(self) -> None:
        t = np.asarray(self.time_s, dtype=np.float64)
        b = np.asarray(self.bandwidth_kbps, dtype=np.float64)
        object.__setattr__(self, "time_s", t)
        object.__setattr__(self, "bandwidth_kbps", b)
        where = self.source or self.name
        if t.ndim != 1 or t.shape != b.shape or t.size < 2:
            raise TraceError(f"{where}: a trace needs at least 2 samples of (time, bandwidth)")
        if not (np.isfinite(t).all() and np.isfinite(b).all()):
            raise TraceError(f"{where}: non-finite time or bandwidth")
        if (b < 0).any():
            raise TraceError(f"{where}: negative bandwidth")
        if (np.diff(t) < 0).any():
            raise TraceError(f"{where}: time goes backwards")
        if t[-1] <= t[0]:
            raise TraceError(f"{where}: the trace spans no time")
        if t[-1] - t[0] < MIN_SPAN_S:
            raise TraceError(f"{where}: the trace spans only {t[-1] - t[0]:.3g} s; at least {MIN_SPAN_S} s "
                             "is needed (a replay loops over it)")

    @property
    def duration_s(self) -> float:
        return float(self.time_s[-1] - self.time_s[0])

    @property
    def mean_bandwidth_kbps(self) -> float:
        """Time-weighted mean over the trace's intervals."""
        dt = np.diff(self.time_s)
        return float((self.bandwidth_kbps[1:] * dt).sum() / dt.sum())
