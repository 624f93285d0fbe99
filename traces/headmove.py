"""Head-movement traces for viewport prediction (VP): the in-memory type, readers and writers of the two file
layouts, converters between them, the dataset index, and NetLLM's prediction windows.

Layouts
-------
- **NetLLM** (the reference data, `<root>/video<V>/<hz>Hz/simple_<hz>Hz_user<U>.csv`): one sample a line,
  `playback_time_s,roll_deg,pitch_deg,yaw_deg`, comma separated, no header (a single header line of words is
  tolerated), 5 Hz. NetLLM made these from the headsets' quaternions with intrinsic Z-X-Y Euler angles:
  roll about Z, pitch about X, yaw about Y. Roll and yaw lie in [-180, 180], pitch in [-90, 90].
- **TRACK** (Rondon et al.'s `sampled_dataset/<video>/<user>`): one sample every 0.2 s,
  `playback_time_s,x,y,z` with (x, y, z) the unit vector of the viewing direction, no header.

Direction convention (both ways between the layouts, and for the great-circle metric)
----------------------------------------------------------------------------------
TRACK's Cartesian frame: z up; yaw is the longitude, measured in the x-y plane from +x towards +y; pitch is
the latitude, positive towards +z:

    x = cos(pitch) cos(yaw),  y = cos(pitch) sin(yaw),  z = sin(pitch)
    yaw = atan2(y, x),        pitch = asin(z)

(TRACK's own Eulerian pair is theta = yaw mod 360 and phi = 90 - pitch.) Whether a headset's positive yaw
turned left or right is the recording's convention; any fixed choice maps great-circle distances unchanged
(a rotation or mirror of the sphere preserves them), so errors are comparable, though absolute directions may
be mirrored with respect to the video frame. The direction uses yaw and pitch only, as TRACK does.
**Roll cannot be recovered from a direction vector** (it turns the view about its own axis): converting a
TRACK trace fills roll with a constant (`roll_deg`, 0 by default) and records that in `HeadTrace.roll_known`.
At the poles (|pitch| = 90) yaw is undefined; atan2 then returns 0 or +-180.

Windows (NetLLM's protocol, `viewport_prediction/dataset/load_dataset.py`)
------------------------------------------------------------------------
A window predicts samples t .. t+horizon-1 from samples t-history .. t-1, for
t = trim_head, trim_head + stride, ... while t < len(trace) - trim_tail. Defaults: 10 history samples (2 s),
20 predicted (4 s), stride 15, trim_head 30, trim_tail 60. So the first predicted sample is at index >= 30
(the history may start at index 20) and the last window starts before the trace's last 60 samples. Windows
use sample indices, not times, as NetLLM does.

Bad files raise `HeadTraceError` naming the file and the 1-based line (`path:line: message`).
"""

from __future__ import annotations

import codecs
import io
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SAMPLE_RATE_HZ = 5
HISTORY_LEN = 10
HORIZON_LEN = 20
WINDOW_STRIDE = 15
TRIM_HEAD = 30
TRIM_TAIL = 60
DEFAULT_MAX_BACKSTEP_S = 1.0
"""What the dataset loader tolerates: Wu2017 as NetLLM ships it has 12 playback-time back-steps of up to
0.69 s (in 11 files, a player clock jittering around seeks). NetLLM ignores the times; so do the windows."""
LAYOUTS = ("auto", "netllm", "track")
FIELDS = ("time_s", "roll_deg", "pitch_deg", "yaw_deg")
TRACK_FIELDS = ("time_s", "x", "y", "z")


class HeadTraceError(ValueError):
    """A malformed head-movement file, with the file and the 1-based line the problem was found on."""

    def __init__(self, path: Path | str, line: int, message: str) -> None:
        self.path = str(path)
        self.line = line
        self.reason = message
        super().__init__(f"{path}:{line}: {message}")


def wrap_deg(angle_deg: np.ndarray | float) -> np.ndarray:
    """Angles wrapped into [-180, 180)."""
    return np.mod(np.asarray(angle_deg, dtype=np.float64) + 180.0, 360.0) - 180.0


def _wrap_outside(angle_deg: np.ndarray) -> np.ndarray:
    """Wrap only values outside [-180, 180], so in-range data (180.0 included) is kept bit for bit."""
    return np.where(np.abs(angle_deg) <= 180.0, angle_deg, wrap_deg(angle_deg))


@dataclass(frozen=True, eq=False)
class HeadTrace:
    """One viewer's head movement over one video: samples in playback order."""
    video_id: str
    user_id: str
    time_s: np.ndarray
    roll_deg: np.ndarray
    pitch_deg: np.ndarray
    yaw_deg: np.ndarray
    dataset: str = ""
    source: str = ""
    roll_known: bool = True
    """False when roll was filled in (converted from a direction vector)."""
    time_backsteps: int = field(default=0, compare=False)
    """Samples whose playback time is below the previous one (tolerated up to the reader's limit)."""

    def __post_init__(self) -> None:
        arrays = [np.asarray(getattr(self, n), dtype=np.float64) for n in FIELDS]
        if any(a.ndim != 1 for a in arrays) or len({a.shape for a in arrays}) != 1:
            raise ValueError("time_s, roll_deg, pitch_deg and yaw_deg must be 1-D arrays of one length")
        for name, array in zip(FIELDS, arrays):
            object.__setattr__(self, name, array)

    def __len__(self) -> int:
        return int(self.time_s.shape[0])

    @property
    def poses_deg(self) -> np.ndarray:
        """(n, 3) array of roll, pitch, yaw in degrees (the policies' input layout)."""
        return np.stack([self.roll_deg, self.pitch_deg, self.yaw_deg], axis=1)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.dataset, self.video_id, self.user_id)


# -- converters ----------------------------------------------------------------------------------------------

def angles_to_vectors(yaw_deg: np.ndarray, pitch_deg: np.ndarray) -> np.ndarray:
    """Unit viewing-direction vectors (..., 3) from yaw and pitch in degrees (see the module docstring)."""
    yaw = np.radians(np.asarray(yaw_deg, dtype=np.float64))
    pitch = np.radians(np.asarray(pitch_deg, dtype=np.float64))
    cos_pitch = np.cos(pitch)
    return np.stack([cos_pitch * np.cos(yaw), cos_pitch * np.sin(yaw), np.sin(pitch)], axis=-1)


def vectors_to_angles(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(yaw_deg in (-180, 180], pitch_deg in [-90, 90]) of direction vectors (..., 3); any non-zero length."""
    xyz = np.asarray(xyz, dtype=np.float64)
    norm = np.linalg.norm(xyz, axis=-1)
    if np.any(~(norm > 0)):
        raise ValueError("a direction vector has zero length (or is not finite)")
    yaw = np.degrees(np.arctan2(xyz[..., 1], xyz[..., 0]))
    pitch = np.degrees(np.arcsin(np.clip(xyz[..., 2] / norm, -1.0, 1.0)))
    return yaw, pitch


def trace_to_vectors(trace: HeadTrace) -> np.ndarray:
    """(n, 4) TRACK rows: playback time and the unit viewing direction (roll is dropped)."""
    xyz = angles_to_vectors(trace.yaw_deg, trace.pitch_deg)
    return np.column_stack([trace.time_s, xyz])


def vectors_to_trace(time_s: np.ndarray, xyz: np.ndarray, video_id: str, user_id: str, dataset: str = "",
                     roll_deg: float = 0.0, source: str = "") -> HeadTrace:
    """A HeadTrace from TRACK rows; roll is unknown and filled with `roll_deg` (`roll_known=False`)."""
    yaw, pitch = vectors_to_angles(xyz)
    roll = np.full(yaw.shape, float(roll_deg))
    return HeadTrace(video_id, user_id, np.asarray(time_s, dtype=np.float64), roll, pitch, yaw,
                     dataset=dataset, source=source, roll_known=False)


# -- readers and writers -------------------------------------------------------------------------------------

def _decode(path: Path) -> str:
    raw = path.read_bytes()
    # Spreadsheet tools save CSV with a UTF-8 byte-order mark; it is not part of the first field.
    raw = raw.removeprefix(codecs.BOM_UTF8)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HeadTraceError(path, raw[:exc.start].count(b"\n") + 1, "not UTF-8 text") from None


def _is_float(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _is_header(tokens: list[str]) -> bool:
    """Column names: words only (so `nan`/`inf`, which parse as numbers, are data, not a header)."""
    return all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_ ()./-]*", t) and not _is_float(t) for t in tokens)


def _fast_rows(text: str, n_fields: int) -> np.ndarray | None:
    """numpy's parser for the common clean file (no header, no blank line, all finite); None otherwise, and
    the line-by-line parser then finds the exact problem."""
    if not text.strip():
        return None
    try:
        values = np.loadtxt(io.StringIO(text), delimiter=",", comments=None, ndmin=2, dtype=np.float64)
    except ValueError:
        return None
    n_lines = text.count("\n") + (0 if text.endswith("\n") else 1)
    if values.shape != (n_lines, n_fields) or not np.isfinite(values).all():
        return None
    return values


def _parse_rows(path: Path, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(values (n, len(names)), 1-based line numbers (n,)) of a comma-separated numeric file; every malformed
    line is a HeadTraceError. Blank lines are skipped; one header line of words may come first."""
    text = _decode(path)
    fast = _fast_rows(text, len(names))
    if fast is not None:
        return fast, np.arange(1, fast.shape[0] + 1)
    rows: list[list[float]] = []
    lines: list[int] = []
    seen_first = False
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        tokens = [t.strip() for t in line.split(",")]
        if not seen_first and _is_header(tokens):
            seen_first = True
            continue
        seen_first = True
        if len(tokens) != len(names):
            raise HeadTraceError(path, number, f"expected {len(names)} comma-separated fields "
                                 f"({', '.join(names)}), got {len(tokens)}")
        row = []
        for index, (name, token) in enumerate(zip(names, tokens), start=1):
            try:
                value = float(token)
            except ValueError:
                raise HeadTraceError(path, number,
                                     f"field {index} ({name}) is not a number: {token!r}") from None
            if not math.isfinite(value):
                raise HeadTraceError(path, number, f"field {index} ({name}) is not finite: {token!r}")
            row.append(value)
        rows.append(row)
        lines.append(number)
    if not rows:
        raise HeadTraceError(path, 1, "no samples (empty file)")
    return np.asarray(rows, dtype=np.float64), np.asarray(lines)


def _check_times(path: Path, time_s: np.ndarray, lines: np.ndarray, max_backstep_s: float) -> int:
    """Number of tolerated back-steps; HeadTraceError on a negative time or a bigger step back."""
    negative = np.flatnonzero(time_s < 0)
    if negative.size:
        i = int(negative[0])
        raise HeadTraceError(path, int(lines[i]), f"negative playback time {time_s[i]:g} s")
    steps = np.diff(time_s)
    too_far = np.flatnonzero(steps < -max_backstep_s)
    if too_far.size:
        i = int(too_far[0]) + 1
        raise HeadTraceError(path, int(lines[i]), f"playback time goes backwards: {time_s[i]:g} s after "
                             f"{time_s[i - 1]:g} s on line {int(lines[i - 1])}")
    return int(np.count_nonzero(steps < 0))


def read_head_trace(path: Path | str, video_id: str = "", user_id: str = "", dataset: str = "",
                    max_backstep_s: float = 0.0) -> HeadTrace:
    """A NetLLM-layout CSV (`time_s,roll_deg,pitch_deg,yaw_deg`). Pitch must lie in [-90, 90]; roll and yaw
    outside [-180, 180] are wrapped. Playback time must not be negative nor step back by more than
    `max_backstep_s` (0: never)."""
    path = Path(path)
    values, lines = _parse_rows(path, FIELDS)
    bad_pitch = np.flatnonzero(np.abs(values[:, 2]) > 90.0 + 1e-9)
    if bad_pitch.size:
        i = int(bad_pitch[0])
        raise HeadTraceError(path, int(lines[i]), f"pitch_deg {values[i, 2]:g} is outside [-90, 90]")
    backsteps = _check_times(path, values[:, 0], lines, max_backstep_s)
    return HeadTrace(video_id, user_id, values[:, 0], _wrap_outside(values[:, 1]), values[:, 2],
                     _wrap_outside(values[:, 3]), dataset=dataset, source=str(path), time_backsteps=backsteps)


def read_track_trace(path: Path | str, video_id: str = "", user_id: str = "", dataset: str = "",
                     roll_deg: float = 0.0, max_backstep_s: float = 0.0) -> HeadTrace:
    """A TRACK-layout CSV (`time_s,x,y,z`), converted to angles; roll is filled with `roll_deg`."""
    path = Path(path)
    values, lines = _parse_rows(path, TRACK_FIELDS)
    norms = np.linalg.norm(values[:, 1:], axis=1)
    zero = np.flatnonzero(norms < 1e-9)
    if zero.size:
        raise HeadTraceError(path, int(lines[int(zero[0])]), "x, y, z is a zero vector, not a direction")
    backsteps = _check_times(path, values[:, 0], lines, max_backstep_s)
    trace = vectors_to_trace(values[:, 0], values[:, 1:], video_id, user_id, dataset, roll_deg, str(path))
    object.__setattr__(trace, "time_backsteps", backsteps)
    return trace


def write_head_trace(trace: HeadTrace, path: Path | str) -> Path:
    """Write the NetLLM layout (6 decimals, as the reference files)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.column_stack([trace.time_s, trace.roll_deg, trace.pitch_deg, trace.yaw_deg])
    np.savetxt(path, data, fmt="%.6f", delimiter=",")
    return path


def write_track_trace(trace: HeadTrace, path: Path | str) -> Path:
    """Write the TRACK layout (time, unit vector); roll is lost."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(path, trace_to_vectors(trace), fmt="%.9f", delimiter=",")
    return path


# -- dataset index -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TraceRef:
    """One (video, user) file of a dataset, not yet read."""
    dataset: str
    video_id: str
    user_id: str
    path: Path
    layout: str


def _natural_key(text: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text))


def _netllm_refs(root: Path, hz: int) -> list[TraceRef]:
    pattern = re.compile(rf"simple_{hz}Hz_user(.+)\.csv")
    refs = []
    for video_dir in root.iterdir():
        match_video = re.fullmatch(r"video(.+)", video_dir.name)
        if not match_video or not (video_dir / f"{hz}Hz").is_dir():
            continue
        for file in (video_dir / f"{hz}Hz").iterdir():
            match_user = pattern.fullmatch(file.name)
            if match_user and file.is_file():
                refs.append(TraceRef(root.name, match_video.group(1), match_user.group(1), file, "netllm"))
    return refs


def _track_refs(root: Path) -> list[TraceRef]:
    refs = []
    for video_dir in root.iterdir():
        if not video_dir.is_dir() or video_dir.name.startswith("."):
            continue
        for file in video_dir.iterdir():
            if file.is_file() and not file.name.startswith("."):
                refs.append(TraceRef(root.name, video_dir.name, file.stem, file, "track"))
    return refs


def index_vp_dataset(root: Path | str, layout: str = "auto", hz: int = SAMPLE_RATE_HZ) -> list[TraceRef]:
    """Every trace file of a dataset folder, sorted by (video, user) in natural order. The dataset is named
    after the folder. `auto` picks the NetLLM layout when `video*/<hz>Hz/` folders exist, else TRACK's."""
    root = Path(root)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: dataset folder not found")
    refs = _netllm_refs(root, hz) if layout in ("auto", "netllm") else []
    if not refs and layout in ("auto", "track"):
        refs = _track_refs(root)
    if not refs:
        raise FileNotFoundError(f"{root}: no head-movement traces found (expected video<V>/{hz}Hz/"
                                f"simple_{hz}Hz_user<U>.csv or TRACK's <video>/<user> files)")
    return sorted(refs, key=lambda r: (_natural_key(r.video_id), _natural_key(r.user_id)))


def read_ref(ref: TraceRef, max_backstep_s: float = DEFAULT_MAX_BACKSTEP_S) -> HeadTrace:
    if ref.layout == "track":
        return read_track_trace(ref.path, ref.video_id, ref.user_id, ref.dataset,
                                max_backstep_s=max_backstep_s)
    return read_head_trace(ref.path, ref.video_id, ref.user_id, ref.dataset, max_backstep_s=max_backstep_s)


def load_vp_dataset(root: Path | str, layout: str = "auto", hz: int = SAMPLE_RATE_HZ,
                    select: Callable[[TraceRef], bool] | None = None,
                    max_backstep_s: float = DEFAULT_MAX_BACKSTEP_S) -> list[HeadTrace]:
    """The traces of a dataset folder (those `select` keeps), in index order."""
    refs = index_vp_dataset(root, layout, hz)
    return [read_ref(r, max_backstep_s) for r in refs if select is None or select(r)]


# -- windows -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WindowSpec:
    """NetLLM's window protocol (see the module docstring)."""
    history: int = HISTORY_LEN
    horizon: int = HORIZON_LEN
    stride: int = WINDOW_STRIDE
    trim_head: int = TRIM_HEAD
    trim_tail: int = TRIM_TAIL

    def __post_init__(self) -> None:
        if min(self.history, self.horizon, self.stride) < 1 or min(self.trim_head, self.trim_tail) < 0:
            raise ValueError("history, horizon and stride must be >= 1; trims >= 0")
        if self.trim_head < self.history:
            raise ValueError(f"trim_head ({self.trim_head}) must be >= history ({self.history})")

    def future_starts(self, n_samples: int) -> range:
        """Index t of each window's first predicted sample."""
        last = min(n_samples - self.trim_tail, n_samples - self.horizon + 1)
        return range(self.trim_head, max(self.trim_head, last), self.stride)


@dataclass(frozen=True)
class WindowBatch:
    """Windows stacked for vectorised evaluation: row i is one window."""
    dataset: np.ndarray        # (N,) str
    video_id: np.ndarray       # (N,) str
    user_id: np.ndarray        # (N,) str
    start: np.ndarray          # (N,) int: index of the first history sample
    history_time_s: np.ndarray  # (N, H)
    history_deg: np.ndarray    # (N, H, 3) roll, pitch, yaw
    future_time_s: np.ndarray  # (N, F)
    future_deg: np.ndarray     # (N, F, 3)

    def __len__(self) -> int:
        return int(self.start.shape[0])

    def take(self, rows: np.ndarray | slice) -> WindowBatch:
        return WindowBatch(**{name: getattr(self, name)[rows] for name in self.__dataclass_fields__})


def make_windows(traces: Iterable[HeadTrace], spec: WindowSpec = WindowSpec()) -> WindowBatch:
    """All windows of `traces`, trace by trace in order, each in playback order."""
    meta: list[tuple[str, str, str, int]] = []
    hist_t, hist, fut_t, fut = [], [], [], []
    for trace in traces:
        starts = np.asarray(spec.future_starts(len(trace)), dtype=np.int64)
        if starts.size == 0:
            continue
        poses = trace.poses_deg
        h_idx = starts[:, None] + np.arange(-spec.history, 0)[None, :]
        f_idx = starts[:, None] + np.arange(spec.horizon)[None, :]
        hist_t.append(trace.time_s[h_idx])
        hist.append(poses[h_idx])
        fut_t.append(trace.time_s[f_idx])
        fut.append(poses[f_idx])
        meta += [(trace.dataset, trace.video_id, trace.user_id, int(t) - spec.history) for t in starts]
    if not meta:
        empty = np.zeros((0,), dtype=str)
        return WindowBatch(empty, empty, empty, np.zeros(0, dtype=np.int64), np.zeros((0, spec.history)),
                           np.zeros((0, spec.history, 3)), np.zeros((0, spec.horizon)),
                           np.zeros((0, spec.horizon, 3)))
    columns = list(zip(*meta))
    return WindowBatch(np.asarray(columns[0], dtype=str), np.asarray(columns[1], dtype=str),
                       np.asarray(columns[2], dtype=str), np.asarray(columns[3], dtype=np.int64),
                       np.concatenate(hist_t), np.concatenate(hist), np.concatenate(fut_t),
                       np.concatenate(fut))


# -- synthetic traces ----------------------------------------------------------------------------------------

def synthetic_head_trace(video_id: str = "1", user_id: str = "1", n_samples: int = 300,
                         hz: float = SAMPLE_RATE_HZ, yaw_speed_deg_s: float = 20.0,
                         pitch_amplitude_deg: float = 20.0,
                         noise_deg: float = 0.0, seed: int = 0, dataset: str = "synthetic") -> HeadTrace:
    """A viewer turning at a constant yaw speed (wrapping through +-180), nodding sinusoidally in pitch, with
    an optional random walk of `noise_deg` per sample on every axis (seeded): for tests and demos."""
    rng = np.random.default_rng(seed)
    time_s = np.arange(n_samples) / float(hz)
    walk = np.cumsum(rng.normal(0.0, noise_deg, size=(n_samples, 3)), axis=0) if noise_deg > 0 \
        else np.zeros((n_samples, 3))
    yaw = wrap_deg(rng.uniform(-180, 180) + yaw_speed_deg_s * time_s + walk[:, 2])
    pitch = np.clip(pitch_amplitude_deg * np.sin(2 * np.pi * time_s / 10.0) + walk[:, 1], -90.0, 90.0)
    roll = wrap_deg(walk[:, 0])
    return HeadTrace(video_id, user_id, time_s, roll, pitch, yaw, dataset=dataset)
