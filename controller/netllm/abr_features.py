"""An ABR observation as a fixed-size float vector: the experience pool's row format and the model's input.

Values stay in their physical units (kbps, seconds, bytes) so that a pool does not depend on any model's
normalisation; `abr_encoder` scales them. Histories are the last `HISTORY` chunks, oldest first, zero-padded
at the front when fewer chunks have been downloaded (`history_len` says how many are real).

Columns (`OBS_COLUMNS`, float32):

| index | name | unit |
|---|---|---|
| 0 | last_quality | ladder index of the previous chunk (the default quality before the first chunk) |
| 1 | last_bitrate_kbps | bitrate of that level |
| 2 | buffer_s | playback buffer now |
| 3 | chunk_index | index of the chunk being decided (0-based) |
| 4 | total_chunks | chunks in the video |
| 5 | chunks_remaining | total_chunks - chunk_index (the chunk being decided included) |
| 6 | rebuffer_s | cumulative stall time so far |
| 7 | chunk_duration_s | seconds of video per chunk |
| 8 | history_len | real entries in the two histories (0..HISTORY) |
| 9..16 | throughput_kbps_0..7 | measured throughput of the last 8 downloads, oldest first |
| 17..24 | download_time_s_0..7 | their download times, oldest first |
| 25..30 | next_chunk_bytes_0..5 | size of the chunk being decided at each level |
| 31..36 | ladder_kbps_0..5 | the bitrate ladder |
"""

from __future__ import annotations

import numpy as np

from netllm.abr_state import AbrObservation, UnsupportedObservation

HISTORY = 8
LEVELS = 6

OBS_COLUMNS: tuple[str, ...] = (
    "last_quality", "last_bitrate_kbps", "buffer_s", "chunk_index", "total_chunks", "chunks_remaining",
    "rebuffer_s", "chunk_duration_s", "history_len",
    *(f"throughput_kbps_{i}" for i in range(HISTORY)),
    *(f"download_time_s_{i}" for i in range(HISTORY)),
    *(f"next_chunk_bytes_{q}" for q in range(LEVELS)),
    *(f"ladder_kbps_{q}" for q in range(LEVELS)),
)
OBS_DIM = len(OBS_COLUMNS)
COL = {name: i for i, name in enumerate(OBS_COLUMNS)}
THROUGHPUT = slice(COL["throughput_kbps_0"], COL["throughput_kbps_0"] + HISTORY)
DOWNLOAD_TIME = slice(COL["download_time_s_0"], COL["download_time_s_0"] + HISTORY)
NEXT_SIZES = slice(COL["next_chunk_bytes_0"], COL["next_chunk_bytes_0"] + LEVELS)
LADDER = slice(COL["ladder_kbps_0"], COL["ladder_kbps_0"] + LEVELS)


class FeatureError(UnsupportedObservation):
    """An observation this model cannot encode (e.g. a ladder with another number of levels)."""


def _last(values: list[float], n: int) -> tuple[np.ndarray, int]:
    tail = np.asarray(values[-n:], dtype=np.float64)
    out = np.zeros(n, dtype=np.float64)
    if tail.size:
        out[n - tail.size:] = tail
    return out, int(tail.size)


def observation_features(obs: AbrObservation) -> np.ndarray:
    """The OBS_DIM float32 row of `obs` (columns in the module docstring)."""
    if obs.levels != LEVELS:
        raise FeatureError("ladder_kbps", f"NetLLM-ABR models decide among {LEVELS} levels, "
                                          f"this video has {obs.levels}")
    row = np.zeros(OBS_DIM, dtype=np.float64)
    row[COL["last_quality"]] = obs.last_quality
    row[COL["last_bitrate_kbps"]] = obs.ladder_kbps[obs.last_quality]
    row[COL["buffer_s"]] = obs.buffer_s
    row[COL["chunk_index"]] = obs.chunk_index
    row[COL["total_chunks"]] = obs.total_chunks
    row[COL["chunks_remaining"]] = obs.chunks_remaining
    row[COL["rebuffer_s"]] = obs.rebuffer_s
    row[COL["chunk_duration_s"]] = obs.chunk_duration_s
    row[THROUGHPUT], n_tput = _last(obs.throughput_kbps_history, HISTORY)
    row[DOWNLOAD_TIME], _ = _last(obs.download_time_s_history, HISTORY)
    row[COL["history_len"]] = n_tput
    row[NEXT_SIZES] = obs.upcoming_chunk_sizes_bytes[0]
    row[LADDER] = obs.ladder_kbps
    return row.astype(np.float32)


def previous_chunk_qoe(prev: np.ndarray, cur: np.ndarray) -> float:
    """QoE term (netllm.qoe.chunk_qoe) of the chunk downloaded between two consecutive observations' rows.

    The chunk's level is `cur.last_quality`, the one before it `prev.last_quality` (the default level for the
    first chunk, as the simulator counts it), its stall the growth of the cumulative rebuffer time.
    """
    from netllm.qoe import chunk_qoe

    ladder = cur[LADDER]
    bitrate = float(ladder[int(cur[COL["last_quality"]])])
    previous = float(ladder[int(prev[COL["last_quality"]])])
    stall_s = max(0.0, float(cur[COL["rebuffer_s"]]) - float(prev[COL["rebuffer_s"]]))
    return chunk_qoe(bitrate, previous, stall_s)
