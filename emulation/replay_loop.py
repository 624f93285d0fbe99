"""The replay loop: a thread that re-rates the emulated link at every trace timestamp, looping the trace.

Changes are scheduled on the monotonic clock from the replay start, so lateness never accumulates (a late
change is applied at once and the next one keeps its own deadline). Every change is appended (and flushed)
to `rate_log.csv`:

    wall_time_s     unix time the change was applied (same clock as the browser's events' wall_ts)
    elapsed_s       seconds since the replay start when applied
    scheduled_s     seconds since the replay start it was due
    trace_time_s    trace time of the segment's start
    sample_index    trace sample whose bandwidth this is
    rate_kbps       the trace's bandwidth
    applied_kbit    the HTB rate set (after the floor for zero / tiny rates)
    tc_ms           how long the `tc class change` took

`start_wall_s` (unix time of the replay start) aligns trace time with wall time: elapsed e corresponds to
trace time `start_trace_time_s + e` (modulo the loop).
"""

from __future__ import annotations

import csv
import threading
import time
from pathlib import Path
from typing import Callable

from emulation.trace_schedule import segments
from traces.bandwidth import BandwidthTrace

RATE_LOG_COLUMNS = ("wall_time_s", "elapsed_s", "scheduled_s", "trace_time_s", "sample_index", "rate_kbps",
                    "applied_kbit", "tc_ms")


class TraceReplayer(threading.Thread):
    """`set_rate(kbps) -> applied bit/s` is called at each segment start until `stop()`."""

    def __init__(self, trace: BandwidthTrace, start_trace_time_s: float, set_rate: Callable[[float], int],
                 log_path: Path | None = None) -> None:
        super().__init__(name=f"replay-{trace.name}", daemon=True)
        self.trace = trace
        self.start_trace_time_s = start_trace_time_s
        self.set_rate = set_rate
        self.log_path = Path(log_path) if log_path else None
        self._stop_event = threading.Event()
        self._first_applied = threading.Event()
        self.start_wall_s: float | None = None
        self.start_mono_s: float | None = None
        self.changes = 0
        self.max_lateness_s = 0.0
        self.error: BaseException | None = None

    def begin(self, timeout_s: float = 10.0) -> "TraceReplayer":
        """Start the thread and return once the first rate is in place."""
        self.start()
        if not self._first_applied.wait(timeout_s) and self.error is None:
            raise TimeoutError("the replay loop did not apply its first rate")
        if self.error is not None:
            raise RuntimeError(f"replay loop failed: {self.error}") from self.error
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout_s)

    def run(self) -> None:
        fh = open(self.log_path, "w", newline="", buffering=1) if self.log_path else None
        try:
            writer = csv.writer(fh) if fh else None
            if writer:
                writer.writerow(RATE_LOG_COLUMNS)
            self.start_mono_s = time.monotonic()
            self.start_wall_s = time.time()
            for seg in segments(self.trace, self.start_trace_time_s):
                if self._stop_event.wait(max(0.0, self.start_mono_s + seg.start_s - time.monotonic())):
                    return
                t_call = time.monotonic()
                applied = self.set_rate(seg.rate_kbps)
                t_done = time.monotonic()
                self.changes += 1
                self.max_lateness_s = max(self.max_lateness_s, t_call - self.start_mono_s - seg.start_s)
                self._first_applied.set()
                if writer:
                    writer.writerow([f"{time.time():.6f}", f"{t_done - self.start_mono_s:.6f}",
                                     f"{seg.start_s:.6f}",
                                     f"{seg.trace_time_s:.6f}", seg.sample_index, f"{seg.rate_kbps:.3f}",
                                     f"{applied / 1000:.3f}", f"{(t_done - t_call) * 1000:.2f}"])
        except BaseException as exc:  # reported to the session through `error`
            self.error = exc
            self._first_applied.set()
        finally:
            if fh:
                fh.close()
