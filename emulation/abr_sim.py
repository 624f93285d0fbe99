"""Chunk-level ABR simulator with Pensieve's dynamics, driving any `AbrPolicy` through `AbrObservation`.

Dynamics (those of Pensieve's `sim/env.py`, as NetLLM uses them), per chunk of quality q:

1. Download: the chunk's bytes flow over the trace from the current trace position (sample pointer + time
   inside its interval). Sample i delivers `bandwidth_kbps[i] * 125 * payload_fraction` bytes/s over
   (time_s[i-1], time_s[i]] (payload_fraction 0.95 is Pensieve's packet payload share). Past the last sample
   the trace loops back to sample 1 (start of the interval after time_s[0]).
2. Delay = download time + RTT (80 ms), times a U(0.9, 1.1) factor when noise is on. The RTT and the noise
   lengthen the wall-clock delay but do not move the trace position (as in Pensieve).
3. Stall = max(delay - buffer, 0); buffer = max(buffer - delay, 0) + chunk duration.
4. If the buffer exceeds the cap (60 s), the player sleeps ceil(excess / 0.5 s) * 0.5 s; the sleep drains the
   buffer and advances the trace position (the link idles).

A session starts at trace sample index k (1 <= k < samples): position time_s[k-1], empty buffer. The first
chunk is fetched at `default_quality` without asking the policy (`default_quality=None` asks the policy for
chunk 0 too); every later decision is `policy.select_quality(obs)` with the observation a live player would
send. The project's default is quality 1 (Pensieve's DEFAULT_QUALITY); NetLLM's baseline runner uses 0,
which is what reproduces its published figures exactly (see benchmarks/bench_fcc_protocol.py).
The first chunk's stall is the startup delay: logged apart (`startup_delay_s`),
not as rebuffering (Pensieve's first reward counts it, but the protocol skips the first chunk's QoE).

Internally the buffer and delays are kept in milliseconds with Pensieve's operation order, so results match a
Pensieve-style simulator to float rounding (rates are kbps * 125 here, Mbps * 1e6 / 8 there); everything
exposed is in seconds and kbps.

Live timing (`SimConfig.live`, a `LiveTiming`; None by default, which keeps everything above exactly as it
is) adds what the live testbed does around each request and Pensieve leaves out: the player's start-up
requests (video.json, MPD) before chunk 0, a gap between a chunk's last byte and the next request, dash.js
fetching the new representation's init segment before every quality switch, and the RTT letting trace time
pass (the live RTT is a first-byte delay while the link keeps replaying the trace). Time before a request
drains the buffer like the download does (stall if it runs dry) and counts in the startup delay for chunk 0;
the logged download time stays request -> last byte. `measured_live_timing()` gives the values measured on
the live testbed; with `spread=True` the gaps and transfer times also scatter as they do live (seeded), so
several seeds give the range of outcomes a live session can have on a trace.

The hot loop uses plain Python floats and lists (numpy scalars are ~10x slower) and one reused observation;
`simulate_session(..., log_rows=False)` skips building per-chunk log rows.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple

from controller.policies.base import AbrPolicy
from netllm.abr_state import AbrObservation
from netllm.chunklog import SessionSummary
from netllm.qoe import chunk_qoe, count_switches
from netllm.video import Video
from traces.bandwidth import BandwidthTrace, TraceError

KBPS_TO_BYTES_PER_S = 125.0
"""1 kbps = 1000 bit/s = 125 byte/s."""
MAX_LOOPS_PER_CHUNK = 10_000
"""A trace must deliver the video's largest chunk in at most this many passes over it (checked up front):
a trace with almost no data per pass would otherwise make a download loop (almost) forever."""
MAX_LOOPS_PER_CALL = 100_000
"""Passes over the trace one download or wait may make (a run-time backstop to the check above: a wait that
long on a very short trace, or a transfer stretched by jitter, raises a TraceError instead of hanging)."""


@dataclass(frozen=True)
class LiveTiming:
    """What the live testbed does around each chunk request that Pensieve's simulator leaves out.

    The defaults model nothing (all zero); `measured_live_timing()` gives the live testbed's values.
    Wall time spent before a request drains the buffer; the trace position moves with it except for RTTs
    when `rtt_consumes_trace` is False (Pensieve's rule).
    """

    startup_bytes: int = 0
    """Bytes fetched over the link before chunk 0 is requested (the player's video.json and the MPD)."""
    startup_requests: int = 0
    """HTTP requests in that start-up; each waits one RTT (`SimConfig.rtt_s`) for its first byte."""
    startup_idle_s: float = 0.0
    """Seconds of start-up spent neither transferring nor waiting on an RTT (page script, dash.js set-up);
    trace time passes."""
    request_gap_s: float = 0.0
    """Seconds from a chunk's last byte (or the end of a buffer-cap sleep) to the next chunk's request:
    append, decision round trip, dash.js scheduling. Trace time passes, the buffer drains."""
    init_bytes: tuple[int, ...] = ()
    """Init segment bytes per quality level. Chunk 0, and every chunk whose quality differs from the
    previous chunk's, is preceded by one request for its level's init segment (one RTT + these bytes), as
    dash.js 5 does on every representation switch. (): no init requests."""
    request_overhead_s: float = 0.0
    """First-byte latency of every request beyond `SimConfig.rtt_s` (server, HTTP, loopback hops); it counts
    like the RTT (in the download time, and in trace time when `rtt_consumes_trace`)."""
    request_gap_quantiles_s: tuple[float, ...] = ()
    """The spread of that gap: evenly spaced quantiles (0 %, ..., 100 %) of measured gaps. When set, each
    gap is drawn from this distribution (inverse CDF, linear between quantiles) with the session's seeded
    generator instead of being `request_gap_s`. (): the fixed mean gap."""
    transfer_jitter: float = 0.0
    """Standard deviation of the log of a per-chunk factor on each chunk's transfer: the chunk moves as if it
    were exp(N(0, sigma)) times its size, so the trace position stays consistent. Live downloads scatter
    around the shaped rate by about 1 %. 0: none."""
    rtt_consumes_trace: bool = False
    """True: every request's RTT lets trace time pass before its first byte arrives (the live RTT is a
    first-byte delay while the link keeps replaying the trace). False: Pensieve's rule, the RTT lengthens
    the delay without moving the trace position."""

    def __post_init__(self) -> None:
        if self.startup_bytes < 0 or self.startup_requests < 0 or any(b < 0 for b in self.init_bytes):
            raise ValueError("startup_bytes, startup_requests and init_bytes must be >= 0")
        if not (self.startup_idle_s >= 0 and self.request_gap_s >= 0 and self.request_overhead_s >= 0):
            raise ValueError("startup_idle_s, request_gap_s and request_overhead_s must be >= 0 seconds")
        q = self.request_gap_quantiles_s
        if q and (len(q) < 2 or q[0] < 0 or any(b < a for a, b in zip(q, q[1:]))):
            raise ValueError("request_gap_quantiles_s: at least 2 non-negative, non-decreasing quantiles")
        if not self.transfer_jitter >= 0:
            raise ValueError("transfer_jitter must be >= 0")

    @property
    def random(self) -> bool:
        """Whether sessions depend on the seed (gap spread or transfer jitter)."""
        return bool(self.request_gap_quantiles_s) or self.transfer_jitter > 0

    def draw_gap_s(self, rng: random.Random) -> float:
        """One request gap: the mean, or a draw from the measured quantiles."""
        q = self.request_gap_quantiles_s
        if not q:
            return self.request_gap_s
        x = rng.random() * (len(q) - 1)
        i = min(int(x), len(q) - 2)
        return q[i] + (q[i + 1] - q[i]) * (x - i)


# Live-testbed measurements behind `measured_live_timing()`. Sources: the four recorded 48-chunk live sessions
# runs/sim-vs-live/live-{bba,robustmpc} (stepped 3/1.2/4.5/0.8 Mbps trace) and
# runs/sim-vs-live-fcc026/live-{bba,robustmpc} (fcc-test 026), `netllm stream --rtt-ms 80`, rtt_method
# server-first-byte-delay, default prepared video; chunks.csv (page times), requests.csv (server log) and
# summary.json (replay_start_wall_s, page_epoch_s) of each.
LIVE_REQUEST_GAP_S = 0.029
"""Pooled mean of chunk i's last byte -> chunk i+1's request over the 108 gaps without a quality switch
(per session means 0.033, 0.029, 0.020, 0.032 s; medians 0.019-0.030 s). Gaps before a switch are
0.112-0.125 s on average: these plus one init request (0.080 s RTT + first-byte overhead + ~840 B)."""
LIVE_REQUEST_GAP_DECILES_S = (0.0150, 0.0183, 0.0198, 0.0216, 0.0252, 0.0272, 0.0286, 0.0314, 0.0355, 0.0428,
                              0.0711)
"""Deciles of the same 108 gaps (standard deviation 0.011 s): the spread of the browser's scheduling."""
LIVE_TRANSFER_JITTER = 0.011
"""Standard deviation of log(live / simulated download time) over 182 chunks of the 12 sessions of
runs/sim-vs-live-multi that were requested at the same quality within 0.15 s of the simulated request (mean
-0.002, i.e. no bias; 5-95 % range -1.3 %..+1.0 %, extremes -5 %..+8 %)."""
LIVE_REQUEST_OVERHEAD_S = 0.0048
"""Mean request -> first byte over the 192 chunks is 0.0848 s (per session 0.0861, 0.0848, 0.0838, 0.0846 s)
with an 80 ms first-byte delay configured: 4.8 ms on top of the RTT."""
LIVE_STARTUP_REQUESTS = 2
"""video.json (the player's ladder) then manifest.mpd, each a request over the shaped link (requests.csv);
the chunk-0 init segment is modelled by `init_bytes`."""
LIVE_STARTUP_IDLE_S = 0.20
"""Chunk 0's request comes 0.466, 0.484, 0.475, 0.458 s (mean 0.471 s) of trace time after the replay start;
minus 3 first-byte waits (video.json, MPD, init: 3 x 0.0848 s) and 6.2 kB at the traces' 2.3-3 Mbps
(0.017-0.023 s) leaves 0.20 s of page script and dash.js set-up."""
LIVE_FALLBACK_STARTUP_BYTES = 4046 + 1283
"""video.json + manifest.mpd of the default prepared video (.cache/videos/default, `netllm prepare-video`
defaults), for videos without those files (Pensieve-style video_size_L folders)."""
LIVE_FALLBACK_INIT_BYTES = 838
"""Init segment size of that video (837-842 B per level), likewise."""


def _file_size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def measured_live_timing(video_dir: Path | None = None, levels: int = 6, spread: bool = False) -> LiveTiming:
    """The live testbed's timing: start-up and init-segment bytes from the prepared video in `video_dir`
    (video.json, its MPD and init segments, as the live server sends them), the rest measured (see the
    LIVE_* constants). Without those files (None, or a Pensieve-style folder) the default video's sizes
    are used for `levels` levels. The RTT itself is `SimConfig.rtt_s`. `spread` adds the measured spread
    of request gaps and transfer times, so each seed plays one plausible live session."""
    startup_bytes, init = LIVE_FALLBACK_STARTUP_BYTES, (LIVE_FALLBACK_INIT_BYTES,) * levels
    doc_path = Path(video_dir) / "video.json" if video_dir is not None else None
    if doc_path is not None and doc_path.is_file():
        try:
            doc = json.loads(doc_path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{doc_path}: not readable JSON ({exc})") from None
        mpd = _file_size(doc_path.parent / str(doc.get("mpd", "manifest.mpd")))
        inits = [_file_size(doc_path.parent / str(name)) for name in doc.get("init_segments", [])]
        if mpd is not None and inits and None not in inits:
            startup_bytes = doc_path.stat().st_size + mpd
            init = tuple(int(b) for b in inits if b is not None)
    return LiveTiming(startup_bytes=startup_bytes, startup_requests=LIVE_STARTUP_REQUESTS,
                      startup_idle_s=LIVE_STARTUP_IDLE_S, request_gap_s=LIVE_REQUEST_GAP_S, init_bytes=init,
                      request_overhead_s=LIVE_REQUEST_OVERHEAD_S, rtt_consumes_trace=True,
                      request_gap_quantiles_s=LIVE_REQUEST_GAP_DECILES_S if spread else (),
                      transfer_jitter=LIVE_TRANSFER_JITTER if spread else 0.0)


@dataclass(frozen=True)
class SimConfig:
    """Simulator constants (Pensieve's values by default)."""

    buffer_cap_s: float = 60.0
    """Buffer above which the player sleeps instead of requesting."""
    drain_step_s: float = 0.5
    """Sleep granularity when the buffer is over the cap."""
    rtt_s: float = 0.08
    """Added to every chunk's delay (request round trip); it does not consume trace time."""
    payload_fraction: float = 0.95
    """Share of the link rate that carries chunk bytes (packet header overhead)."""
    noise: bool = False
    """Multiply each delay by U(noise_low, noise_high) from the session's seeded generator."""
    noise_low: float = 0.9
    noise_high: float = 1.1
    default_quality: int | None = 1
    """Quality of chunk 0, fetched without asking the policy; None: the policy decides chunk 0 too."""
    history_len: int = 8
    """Past downloads kept in the observation's throughput/download-time histories (Pensieve's 8)."""
    horizon: int = 5
    """Rows of upcoming chunk sizes in the observation (MPC's look-ahead)."""
    chunk_count: int | None = None
    """Play only the first N chunks of the video (None: all)."""
    live: LiveTiming | None = None
    """Live-testbed request timing (see LiveTiming); None: Pensieve's dynamics exactly."""

    def __post_init__(self) -> None:
        if not (self.buffer_cap_s > 0 and self.drain_step_s > 0 and self.rtt_s >= 0):
            raise ValueError("buffer_cap_s and drain_step_s must be > 0, rtt_s >= 0")
        if not 0 < self.payload_fraction <= 1:
            raise ValueError("payload_fraction must be in (0, 1]")
        if not 0 < self.noise_low <= self.noise_high:
            raise ValueError("need 0 < noise_low <= noise_high")
        if self.history_len < 1 or self.horizon < 1:
            raise ValueError("history_len and horizon must be >= 1")


class PreparedTrace:
    """A trace as the hot loop wants it: Python lists, rates already in bytes/s."""

    __slots__ = ("name", "source", "time_s", "rate_bytes_per_s", "samples", "bytes_per_loop")

    def __init__(self, trace: BandwidthTrace) -> None:
        self.name = trace.name
        self.source = trace.source or trace.name
        self.time_s: list[float] = trace.time_s.tolist()
        self.rate_bytes_per_s: list[float] = [b * KBPS_TO_BYTES_PER_S for b in trace.bandwidth_kbps.tolist()]
        self.samples = len(self.time_s)
        # Bytes one pass over the trace carries (before the payload fraction): a replay loops over 1..n-1.
        self.bytes_per_loop = sum(self.rate_bytes_per_s[i] * (self.time_s[i] - self.time_s[i - 1])
                                  for i in range(1, self.samples))
        if not self.bytes_per_loop > 0:
            raise TraceError(f"{self.source}: the trace carries no data (zero bandwidth "
                             "everywhere), so no chunk download could ever finish")

    def check_start(self, start_index: int) -> None:
        if not 1 <= start_index < self.samples:
            raise ValueError(f"{self.name}: start index {start_index} outside 1..{self.samples - 1}")


class PreparedVideo:
    """Chunk sizes as lists, plus the observation's look-ahead rows precomputed per chunk."""

    __slots__ = ("name", "ladder_kbps", "levels", "chunk_count", "chunk_duration_s", "sizes_by_chunk",
                 "upcoming_rows", "max_chunk_bytes")

    def __init__(self, video: Video, horizon: int = 5, chunk_count: int | None = None) -> None:
        n = video.chunk_count if chunk_count is None else min(chunk_count, video.chunk_count)
        if n < 1:
            raise ValueError("a session needs at least one chunk")
        self.name = video.name
        self.ladder_kbps: list[float] = [float(b) for b in video.ladder_kbps]
        self.levels = len(self.ladder_kbps)
        self.chunk_count = n
        self.chunk_duration_s = float(video.chunk_duration_s)
        sizes = video.chunk_sizes_bytes[:, :n].T.tolist()
        self.sizes_by_chunk: list[list[int]] = [[int(x) for x in row] for row in sizes]
        self.upcoming_rows: list[list[list[int]]] = [
            self.sizes_by_chunk[i:min(i + horizon, n)] for i in range(n)]
        self.max_chunk_bytes = max(max(row) for row in self.sizes_by_chunk)


def prepare(trace: BandwidthTrace | PreparedTrace, video: Video | PreparedVideo,
            config: SimConfig) -> tuple[PreparedTrace, PreparedVideo]:
    pt = trace if isinstance(trace, PreparedTrace) else PreparedTrace(trace)
    pv = video if isinstance(video, PreparedVideo) else PreparedVideo(video, config.horizon,
                                                                      config.chunk_count)
    if config.default_quality is not None and not 0 <= config.default_quality < pv.levels:
        raise ValueError(f"default quality {config.default_quality} outside 0..{pv.levels - 1}")
    if config.live is not None and config.live.init_bytes and len(config.live.init_bytes) != pv.levels:
        raise ValueError(f"live timing has init_bytes for {len(config.live.init_bytes)} levels, the video "
                         f"{pv.name} has {pv.levels}")
    check_trace_carries_video(pt, pv, config)
    return pt, pv


def check_trace_carries_video(trace: PreparedTrace, video: PreparedVideo, config: SimConfig) -> None:
    """TraceError unless one pass over the trace carries at least 1/MAX_LOOPS_PER_CHUNK of the video's
    largest chunk (so that no download loops over the trace without end)."""
    payload_per_loop = trace.bytes_per_loop * config.payload_fraction
    loops = video.max_chunk_bytes / payload_per_loop
    if loops > MAX_LOOPS_PER_CHUNK:
        span_s = trace.time_s[-1] - trace.time_s[0]
        raise TraceError(f"{trace.source}: one pass over the trace ({span_s:.3g} s) carries only "
                         f"{payload_per_loop:.3g} bytes, so the largest chunk ({video.max_chunk_bytes} "
                         f"bytes) would need {loops:.3g} passes (at most {MAX_LOOPS_PER_CHUNK}): too little "
                         "bandwidth or too short a trace")


class TraceCursor:
    """Position in a looping trace; `download` and `idle` advance it with Pensieve's interval walk."""

    __slots__ = ("times", "rates", "samples", "ptr", "last_time_s", "payload_fraction", "source")

    def __init__(self, trace: PreparedTrace, start_index: int, payload_fraction: float) -> None:
        trace.check_start(start_index)
        self.source = trace.source
        self.times = trace.time_s
        self.rates = trace.rate_bytes_per_s
        self.samples = trace.samples
        self.ptr = start_index
        self.last_time_s = self.times[start_index - 1]
        self.payload_fraction = payload_fraction

    def download(self, size_bytes: float) -> float:
        """Seconds of trace time needed to deliver `size_bytes`; moves the position to the finish."""
        times, rates, frac = self.times, self.rates, self.payload_fraction
        ptr, last = self.ptr, self.last_time_s
        sent = 0.0
        elapsed = 0.0
        loops = 0
        while True:
            rate = rates[ptr]
            duration = times[ptr] - last
            payload = rate * duration * frac
            if sent + payload > size_bytes:
                part = (size_bytes - sent) / rate / frac
                elapsed += part
                last += part
                break
            sent += payload
            elapsed += duration
            last = times[ptr]
            ptr += 1
            if ptr >= self.samples:
                ptr = 1
                last = times[0]
                loops += 1
                if loops > MAX_LOOPS_PER_CALL:
                    self._too_many_loops(f"a download of {size_bytes:.0f} bytes")
        self.ptr, self.last_time_s = ptr, last
        return elapsed

    def _too_many_loops(self, what: str) -> None:
        raise TraceError(f"{self.source}: {what} would pass over the trace more than {MAX_LOOPS_PER_CALL} "
                         "times: too little bandwidth or too short a trace")

    def idle(self, sleep_ms: float) -> None:
        """Let `sleep_ms` of trace time pass without downloading (Pensieve's drain sleep, in its units)."""
        times = self.times
        ptr, last = self.ptr, self.last_time_s
        wait_ms, loops = sleep_ms, 0
        while True:
            duration = times[ptr] - last
            if duration > sleep_ms / 1000.0:
                last += sleep_ms / 1000.0
                break
            sleep_ms -= duration * 1000.0
            last = times[ptr]
            ptr += 1
            if ptr >= self.samples:
                ptr = 1
                last = times[0]
                loops += 1
                if loops > MAX_LOOPS_PER_CALL:
                    self._too_many_loops(f"a wait of {wait_ms / 1000.0:.3g} s")
        self.ptr, self.last_time_s = ptr, last


class ChunkPlayer:
    """The player/network state of one session; `fetch(quality)` downloads the next chunk.

    All quantities in milliseconds internally (Pensieve's operation order); the returned outcome is in
    seconds. The stepping core of `simulate_session`, `AbrSession` (Gymnasium env, experience collection) and
    the offline optimum's plan replay.
    """

    __slots__ = ("video", "cfg", "cursor", "rng", "chunk_index", "buffer_ms", "clock_s", "rtt_ms", "cap_ms",
                 "drain_ms", "chunk_ms", "live", "last_quality", "request_s")

    def __init__(self, trace: PreparedTrace, video: PreparedVideo, config: SimConfig, start_index: int = 1,
                 rng: random.Random | None = None) -> None:
        self.video = video
        self.cfg = config
        self.cursor = TraceCursor(trace, start_index, config.payload_fraction)
        self.rng = rng if rng is not None else random.Random(0)
        self.chunk_index = 0
        self.buffer_ms = 0.0
        self.clock_s = 0.0
        self.rtt_ms = config.rtt_s * 1000.0
        if config.live is not None:  # every request's first byte: the RTT plus the live overhead
            self.rtt_ms += config.live.request_overhead_s * 1000.0
        self.cap_ms = config.buffer_cap_s * 1000.0
        self.drain_ms = config.drain_step_s * 1000.0
        self.chunk_ms = video.chunk_duration_s * 1000.0
        self.live = config.live
        self.last_quality = -1
        self.request_s = 0.0
        """Simulated time of the last chunk request (after any live-timing wait before it)."""

    @property
    def done(self) -> bool:
        return self.chunk_index >= self.video.chunk_count

    def _before_request(self, quality: int) -> float:
        """Live timing: milliseconds from the decision to the chunk's request; moves the trace position."""
        live, cursor, rtt_ms = self.live, self.cursor, self.rtt_ms
        trace_rtt_ms = rtt_ms if live.rtt_consumes_trace else 0.0
        if self.chunk_index == 0:
            idle_ms = live.startup_idle_s * 1000.0
            wait_ms = idle_ms + live.startup_requests * rtt_ms
            trace_idle_ms = idle_ms + live.startup_requests * trace_rtt_ms
            fetch_bytes = live.startup_bytes
        else:
            wait_ms = trace_idle_ms = live.draw_gap_s(self.rng) * 1000.0
            fetch_bytes = 0
        if live.init_bytes and quality != self.last_quality:
            wait_ms += rtt_ms
            trace_idle_ms += trace_rtt_ms
            fetch_bytes += live.init_bytes[quality]
        # Waits first, then the bytes: the start-up's few kB take milliseconds, so their order is immaterial.
        if trace_idle_ms > 0.0:
            cursor.idle(trace_idle_ms)
        if fetch_bytes > 0:
            wait_ms += cursor.download(fetch_bytes) * 1000.0
        return wait_ms

    def fetch(self, quality: int) -> tuple[int, float, float, float, float, float]:
        """Download chunk `chunk_index` at `quality`. Returns (bytes, delay_s, stall_s, buffer_before_s,
        buffer_after_s, sleep_s); buffer_after_s is right after the chunk was appended, before any sleep."""
        size = self.video.sizes_by_chunk[self.chunk_index][quality]
        if self.live is None:
            self.request_s = self.clock_s
            delay_ms = self.cursor.download(size) * 1000.0 + self.rtt_ms
            wait_ms = 0.0
        else:
            wait_ms = self._before_request(quality)
            self.request_s = self.clock_s + wait_ms / 1000.0
            if self.live.rtt_consumes_trace and self.rtt_ms > 0.0:
                self.cursor.idle(self.rtt_ms)
            moved = size
            if self.live.transfer_jitter > 0.0:
                moved = size * math.exp(self.rng.gauss(0.0, self.live.transfer_jitter))
            delay_ms = self.cursor.download(moved) * 1000.0 + self.rtt_ms
        if self.cfg.noise:
            delay_ms *= self.rng.uniform(self.cfg.noise_low, self.cfg.noise_high)
        before_ms = self.buffer_ms
        if wait_ms > 0.0:  # live timing: the wait before the request drains the buffer too
            total_ms = wait_ms + delay_ms
            stall_ms = total_ms - before_ms if total_ms > before_ms else 0.0
            buffer_ms = (before_ms - total_ms if before_ms > total_ms else 0.0) + self.chunk_ms
        else:
            stall_ms = delay_ms - before_ms if delay_ms > before_ms else 0.0
            buffer_ms = (before_ms - delay_ms if before_ms > delay_ms else 0.0) + self.chunk_ms
        after_ms = buffer_ms
        sleep_ms = 0.0
        if buffer_ms > self.cap_ms:
            sleep_ms = math.ceil((buffer_ms - self.cap_ms) / self.drain_ms) * self.drain_ms
            buffer_ms -= sleep_ms
            self.cursor.idle(sleep_ms)
        self.buffer_ms = buffer_ms
        self.chunk_index += 1
        self.last_quality = quality
        self.clock_s += (wait_ms + delay_ms + sleep_ms) / 1000.0
        return (size, delay_ms / 1000.0, stall_ms / 1000.0, before_ms / 1000.0, after_ms / 1000.0,
                sleep_ms / 1000.0)


@dataclass
class SessionResult:
    """Per-chunk arrays of one simulated session (index = chunk index) and optional log rows."""

    trace: str
    policy: str
    start_index: int
    qualities: list[int]
    bitrates_kbps: list[float]
    chunk_bytes: list[int]
    download_times_s: list[float]
    rebuffers_s: list[float]
    """Stall before each chunk; 0 for chunk 0 (its wait is `startup_delay_s`)."""
    buffers_s: list[float]
    """Buffer after each chunk (after any cap sleep): what the next decision sees."""
    qoe: list[float]
    startup_delay_s: float
    duration_s: float
    """Simulated wall-clock length of the session (downloads, RTTs and sleeps)."""
    rows: list[dict[str, Any]] | None = None
    chunk_duration_s: float = 4.0

    @property
    def mean_qoe(self) -> float:
        """Mean per-chunk QoE over chunks 1.. (NetLLM's protocol skips chunk 0)."""
        q = self.qoe[1:]
        return sum(q) / len(q) if q else float("nan")

    def summary(self) -> SessionSummary:
        n = len(self.qoe)
        rebuf = sum(self.rebuffers_s)
        return SessionSummary(
            policy=self.policy, chunks=n, mean_qoe=self.mean_qoe,
            mean_qoe_all_chunks=sum(self.qoe) / n if n else float("nan"),
            mean_bitrate_kbps=sum(self.bitrates_kbps) / n if n else float("nan"),
            total_rebuffer_s=rebuf, rebuffer_ratio=rebuf / (n * self.chunk_duration_s) if n else float("nan"),
            startup_delay_s=self.startup_delay_s, switches=count_switches(self.qualities), fallback_chunks=0)


def new_observation(video: PreparedVideo, session_id: str, last_quality: int) -> AbrObservation:
    return AbrObservation(
        chunk_index=0, total_chunks=video.chunk_count, last_quality=last_quality, buffer_s=0.0,
        throughput_kbps_history=[], download_time_s_history=[],
        upcoming_chunk_sizes_bytes=video.upcoming_rows[0],
        ladder_kbps=list(video.ladder_kbps), rebuffer_s=0.0, chunk_duration_s=video.chunk_duration_s,
        session_id=session_id)


def _wants_outcome(policy: AbrPolicy) -> bool:
    return type(policy).observe_outcome is not AbrPolicy.observe_outcome


def simulate_session(policy: AbrPolicy, trace: BandwidthTrace | PreparedTrace, video: Video | PreparedVideo,
                     start_index: int = 1, config: SimConfig = SimConfig(), seed: int | None = 0,
                     log_rows: bool = False, policy_name: str | None = None, session_id: str | None = None,
                     on_decision: Callable[[AbrObservation, int], None] | None = None) -> SessionResult:
    """Play one session of `video` over `trace` from sample `start_index` with `policy`.

    `seed` seeds the generator of the delay noise (`config.noise`) and of the live-timing spread
    (`LiveTiming.random`); neither is on by default. `log_rows` builds chunk-log rows
    (netllm.chunklog.COLUMNS, simulated times). `on_decision(obs, quality)` is called after every policy
    decision with the (reused, so copy what you keep) observation, e.g. to collect experience.
    """
    pt, pv = prepare(trace, video, config)
    name = policy_name or getattr(policy, "name", type(policy).__name__)
    sid = session_id or f"{name}:{pt.name}:{start_index}"
    player = ChunkPlayer(pt, pv, config, start_index, random.Random(seed))
    ladder = pv.ladder_kbps
    first = config.default_quality
    obs = new_observation(pv, sid, first if first is not None else 0)
    tput_hist, time_hist = obs.throughput_kbps_history, obs.download_time_s_history
    hist_len = config.history_len
    row_rtt_s = config.rtt_s if config.live is None else player.rtt_ms / 1000.0
    upcoming = pv.upcoming_rows
    feedback = _wants_outcome(policy)
    policy.reset()

    n = pv.chunk_count
    qualities: list[int] = []
    bitrates: list[float] = []
    sizes: list[int] = []
    delays: list[float] = []
    stalls: list[float] = []
    buffers: list[float] = []
    qoes: list[float] = []
    rows: list[dict[str, Any]] | None = [] if log_rows else None
    prev_kbps = ladder[first] if first is not None else None
    rebuffer_total = 0.0
    startup = 0.0
    perf = time.perf_counter
    latency_ms = 0.0
    for index in range(n):
        if index == 0 and first is not None:
            quality = first
        else:
            if log_rows:
                t0 = perf()
                quality = policy.select_quality(obs)
                latency_ms = (perf() - t0) * 1000.0
            else:
                quality = policy.select_quality(obs)
            if on_decision is not None:
                on_decision(obs, quality)
        quality = int(quality)
        if not 0 <= quality < pv.levels:
            raise ValueError(f"policy {name} chose quality {quality} outside 0..{pv.levels - 1}")
        size, delay_s, stall_s, before_s, after_s, sleep_s = player.fetch(quality)
        request_s = player.request_s
        if index == 0:
            startup, stall_s = stall_s, 0.0
        kbps = ladder[quality]
        if prev_kbps is None:
            prev_kbps = kbps
        qoe = chunk_qoe(kbps, prev_kbps, stall_s)
        prev_kbps = kbps
        rebuffer_total += stall_s
        buffer_s = player.buffer_ms / 1000.0
        tput = size * 8.0 / (delay_s * 1000.0)
        qualities.append(quality)
        bitrates.append(kbps)
        sizes.append(size)
        delays.append(delay_s)
        stalls.append(stall_s)
        buffers.append(buffer_s)
        qoes.append(qoe)
        if rows is not None:
            rows.append(_row(sid, name, pt.name, index, quality, kbps, size, request_s, delay_s, row_rtt_s,
                             tput, before_s, after_s, stall_s, latency_ms, qoe))
        if feedback:
            policy.observe_outcome(qoe)
        # The observation the next decision sees (reused object: policies must not keep its lists).
        tput_hist.append(tput)
        time_hist.append(delay_s)
        if len(tput_hist) > hist_len:
            del tput_hist[0]
            del time_hist[0]
        if index + 1 < n:
            obs.chunk_index = index + 1
            obs.last_quality = quality
            obs.buffer_s = buffer_s
            obs.rebuffer_s = rebuffer_total
            obs.upcoming_chunk_sizes_bytes = upcoming[index + 1]
    return SessionResult(pt.name, name, start_index, qualities, bitrates, sizes, delays, stalls, buffers,
                         qoes, startup, player.clock_s, rows, pv.chunk_duration_s)


def _row(sid: str, policy: str, trace: str, index: int, quality: int, kbps: float, size: int,
         request_s: float, delay_s: float, rtt_s: float, tput: float, before_s: float, after_s: float,
         stall_s: float, latency_ms: float, qoe: float) -> dict[str, Any]:
    """One chunk-log row; the first byte is taken to arrive one RTT after the request."""
    return {
        "session_id": sid, "policy": policy, "trace": trace, "chunk_index": index, "quality": quality,
        "bitrate_kbps": kbps, "chunk_bytes": size, "request_time_s": request_s,
        "first_byte_time_s": request_s + min(rtt_s, delay_s),
        "finish_time_s": request_s + delay_s, "download_time_s": delay_s, "throughput_kbps": tput,
        "buffer_before_s": before_s, "buffer_after_s": after_s, "rebuffer_s": stall_s,
        "decision_latency_ms": latency_ms, "fallback": False, "qoe": qoe,
    }


class ChunkStep(NamedTuple):
    """What one chunk download produced (seconds, kbps)."""

    chunk_index: int
    quality: int
    bitrate_kbps: float
    chunk_bytes: int
    download_time_s: float
    """Request to last byte: transfer + RTT (times the noise factor)."""
    rebuffer_s: float
    """Stall before this chunk could play; for chunk 0 this is 0 and the wait is the startup delay."""
    startup_delay_s: float
    buffer_s: float
    """Buffer after the chunk and any cap sleep (what the next decision sees)."""
    sleep_s: float
    qoe: float


class AbrSession:
    """One session driven step by step: read `obs`, call `step(quality)` until `done`.

    The same dynamics and observation as `simulate_session` (which inlines them for speed); the Gymnasium
    env and experience collection use this. With a default quality, chunk 0 is fetched on construction
    (`first_step`) and `obs` is the decision for chunk 1. `obs` is one object updated in place.
    """

    def __init__(self, trace: BandwidthTrace | PreparedTrace, video: Video | PreparedVideo,
                 config: SimConfig = SimConfig(), start_index: int = 1, seed: int | None = 0,
                 session_id: str = "") -> None:
        self.trace, self.video = prepare(trace, video, config)
        self.config = config
        self.start_index = start_index
        self.player = ChunkPlayer(self.trace, self.video, config, start_index, random.Random(seed))
        first = config.default_quality
        self.obs = new_observation(self.video, session_id or f"{self.trace.name}:{start_index}",
                                   first if first is not None else 0)
        self._prev_kbps = self.video.ladder_kbps[first] if first is not None else None
        self.first_step: ChunkStep | None = self.step(first) if first is not None else None

    @property
    def done(self) -> bool:
        return self.player.done

    def step(self, quality: int) -> ChunkStep:
        if self.done:
            raise RuntimeError("the session is over")
        quality = int(quality)
        video, player, obs = self.video, self.player, self.obs
        if not 0 <= quality < video.levels:
            raise ValueError(f"quality {quality} outside 0..{video.levels - 1}")
        index = player.chunk_index
        size, delay_s, stall_s, _, _, sleep_s = player.fetch(quality)
        startup = 0.0
        if index == 0:
            startup, stall_s = stall_s, 0.0
        kbps = video.ladder_kbps[quality]
        prev = kbps if self._prev_kbps is None else self._prev_kbps
        qoe = chunk_qoe(kbps, prev, stall_s)
        self._prev_kbps = kbps
        buffer_s = player.buffer_ms / 1000.0
        obs.throughput_kbps_history.append(size * 8.0 / (delay_s * 1000.0))
        obs.download_time_s_history.append(delay_s)
        if len(obs.throughput_kbps_history) > self.config.history_len:
            del obs.throughput_kbps_history[0]
            del obs.download_time_s_history[0]
        obs.last_quality = quality
        obs.buffer_s = buffer_s
        obs.rebuffer_s += stall_s
        if index + 1 < video.chunk_count:
            obs.chunk_index = index + 1
            obs.upcoming_chunk_sizes_bytes = video.upcoming_rows[index + 1]
        return ChunkStep(index, quality, kbps, size, delay_s, stall_s, startup, buffer_s, sleep_s, qoe)
