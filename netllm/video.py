"""A video as the ABR logic sees it: the bitrate ladder and the byte size of every chunk at every level.

Two on-disk forms are read:
- `video.json`, written by `netllm prepare-video` next to the MPD (keys below);
- a Pensieve-style folder of `video_size_L` files (one integer byte count a line, one file per level L).

video.json keys: `ladder_kbps` (list, ascending), `chunk_duration_s`, `chunk_count`,
`chunk_sizes_bytes` (list over levels of lists over chunks), `mpd` (file name of the manifest),
`representations` (ids in the MPD, same order as the ladder), optional `resolutions` and `source`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PENSIEVE_LADDER_KBPS: tuple[int, ...] = (300, 750, 1200, 1850, 2850, 4300)
"""The six-rung ladder of Pensieve and NetLLM."""
CHUNK_DURATION_S: float = 4.0
MAX_CHUNK_BYTES: int = 2 ** 53
"""Largest chunk size accepted: sizes are int64 on disk and floats in the simulator, exact up to 2^53."""


class VideoError(ValueError):
    """A video description that cannot be used; the message names the file."""


@dataclass(frozen=True)
class Video:
    ladder_kbps: tuple[float, ...]
    chunk_sizes_bytes: np.ndarray
    """int64 array, shape (levels, chunks)."""
    chunk_duration_s: float = CHUNK_DURATION_S
    name: str = "video"
    meta: dict = field(default_factory=dict, compare=False)

    @property
    def levels(self) -> int:
        return len(self.ladder_kbps)

    @property
    def chunk_count(self) -> int:
        return int(self.chunk_sizes_bytes.shape[1])

    def truncated(self, chunk_count: int) -> "Video":
        """The first `chunk_count` chunks (Pensieve's size files carry one extra line)."""
        return Video(self.ladder_kbps, self.chunk_sizes_bytes[:, :chunk_count].copy(), self.chunk_duration_s,
                     self.name, self.meta)


def _check(video: Video, source: Path) -> Video:
    sizes = video.chunk_sizes_bytes
    if sizes.ndim != 2 or sizes.shape[0] != len(video.ladder_kbps) or sizes.shape[1] == 0:
        raise VideoError(f"{source}: chunk sizes must be one non-empty row per ladder level")
    if (sizes <= 0).any():
        raise VideoError(f"{source}: chunk sizes must be positive")
    if (sizes > MAX_CHUNK_BYTES).any():
        raise VideoError(f"{source}: chunk sizes must be at most 2^53 bytes")
    if any(b <= a for a, b in zip(video.ladder_kbps, video.ladder_kbps[1:])):
        raise VideoError(f"{source}: ladder must be strictly ascending")
    return video


def load_video_json(path: Path) -> Video:
    path = Path(path)
    if path.is_dir():
        path = path / "video.json"
    try:
        doc = json.loads(path.read_text())
        video = Video(
            ladder_kbps=tuple(float(x) for x in doc["ladder_kbps"]),
            chunk_sizes_bytes=np.asarray(doc["chunk_sizes_bytes"], dtype=np.int64),
            chunk_duration_s=float(doc["chunk_duration_s"]),
            name=str(doc.get("name", path.parent.name)),
            meta={k: v for k, v in doc.items() if k not in ("chunk_sizes_bytes",)},
        )
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError, OverflowError) as exc:
        raise VideoError(f"{path}: not a usable video.json ({exc})") from exc
    return _check(video, path)


def load_pensieve_sizes(folder: Path, ladder_kbps: tuple[float, ...] = PENSIEVE_LADDER_KBPS,
                        chunk_count: int | None = 48) -> Video:
    """Read `video_size_0..L-1`. Pensieve's files have 49 lines for 48 chunks; `chunk_count` trims."""
    folder = Path(folder)
    rows = [_read_size_file(folder / f"video_size_{level}") for level in range(len(ladder_kbps))]
    n = min(len(r) for r in rows)
    if chunk_count is not None:
        n = min(n, chunk_count)
    sizes = np.asarray([r[:n] for r in rows], dtype=np.int64)
    return _check(Video(tuple(float(x) for x in ladder_kbps), sizes, CHUNK_DURATION_S, folder.name), folder)


def _read_size_file(path: Path) -> list[int]:
    """The byte counts of one `video_size_L` file; a bad line is a VideoError naming `path:line`."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise VideoError(f"{path}: cannot read ({exc})") from exc
    sizes: list[int] = []
    for number, line in enumerate(text.splitlines(), start=1):
        token = line.strip()
        if not token:
            continue
        try:
            size = int(token)
        except ValueError:
            raise VideoError(f"{path}:{number}: {token[:40]!r} is not an integer byte count") from None
        if not 0 < size <= MAX_CHUNK_BYTES:
            raise VideoError(f"{path}:{number}: chunk size {token[:40]} must be in 1..2^53 bytes")
        sizes.append(size)
    return sizes


def load_video(path: Path) -> Video:
    """A prepared video folder (with video.json), a video.json file, or a `video_size_L` folder."""
    path = Path(path)
    if path.is_file() or (path / "video.json").exists():
        return load_video_json(path)
    if (path / "video_size_0").exists():
        return load_pensieve_sizes(path)
    raise VideoError(f"{path}: neither a prepared video (video.json) nor a folder of video_size_L files")
