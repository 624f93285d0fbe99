"""The ABR observation: what the player (or the simulator) knows when it asks for the next chunk's quality.

It carries Pensieve's state fields and is the body of `POST /v1/abr/decide`. The same object is what the
simulator hands to a policy, so one policy implementation serves both. Units are in the names.

Histories are oldest first and describe chunks already downloaded (the newest is the chunk just finished).
`upcoming_chunk_sizes_bytes[k][q]` is the size of chunk `chunk_index + k` at quality `q`; row 0 is the chunk
being decided, later rows (up to a horizon) serve look-ahead policies such as MPC.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

MAX_LEVELS = 16
MAX_HISTORY = 64
MAX_HORIZON = 16
MAX_CHUNKS = 100_000
MAX_BUFFER_S = 3600.0
MAX_BITRATE_KBPS = 1e7
MAX_CHUNK_BYTES = 10**10
MAX_SESSION_ID_CHARS = 128
# A chunk's QoE within the bounds above is at most 2e4 Mbps of bitrate and smoothness terms and 4.3 x 36000 s
# of stall; anything larger is a client error, and it would overflow the NetLLM policy's float32 return-to-go.
MAX_CHUNK_QOE_ABS = 1e6


@dataclass(slots=True)
class AbrObservation:
    chunk_index: int
    """Index (0-based) of the chunk whose quality is being decided."""
    total_chunks: int
    """Chunks in the whole video."""
    last_quality: int
    """Quality index of the previous chunk (the default quality before the first chunk)."""
    buffer_s: float
    """Seconds of video in the playback buffer now."""
    throughput_kbps_history: list[float]
    """Measured throughput of past chunk downloads, oldest first."""
    download_time_s_history: list[float]
    """Download time of past chunks, oldest first, same length as the throughput history."""
    upcoming_chunk_sizes_bytes: list[list[int]]
    """Sizes of the next chunks at each quality: row k is chunk `chunk_index + k`."""
    ladder_kbps: list[float]
    """Bitrate of each quality level, ascending."""
    rebuffer_s: float = 0.0
    """Cumulative stall time so far (startup delay excluded)."""
    chunk_duration_s: float = 4.0
    """Seconds of video per chunk."""
    session_id: str = ""
    """Opaque id that lets a stateful policy (robustMPC, NetLLM) keep per-session memory."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Optional fields a policy may use (e.g. the last chunk's reward for return-conditioned models)."""

    @property
    def chunks_remaining(self) -> int:
        """Chunks left to download, the one being decided included."""
        return self.total_chunks - self.chunk_index

    @property
    def levels(self) -> int:
        return len(self.ladder_kbps)

    def to_json(self) -> dict[str, Any]:
        doc = {name: getattr(self, name) for name in self.__slots__ if name != "extra"}
        if self.extra:
            doc["extra"] = self.extra
        return doc


class ObservationError(ValueError):
    """Invalid observation; `field` names the offending field (the controller answers 4xx with it)."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


class UnsupportedObservation(ObservationError):
    """A valid observation that a policy cannot decide on, such as a ladder with another number of levels
    than a trained model's. The controller answers 422 naming the field; the policy has not failed."""


def _number(doc: dict, name: str, lo: float, hi: float, integer: bool = False) -> Any:
    if name not in doc:
        raise ObservationError(name, "missing")
    v = doc[name]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ObservationError(name, f"must be a number, got {type(v).__name__}")
    if integer and not (isinstance(v, int) or (isinstance(v, float) and v.is_integer())):
        raise ObservationError(name, "must be an integer")
    # Compare before any float conversion: a huge JSON integer (10**400) does not fit a float.
    if isinstance(v, float) and not math.isfinite(v) or v < lo or v > hi:
        shown = f"{v}" if len(f"{v}") <= 40 else f"{str(v)[:20]}... ({len(str(v))} digits)"
        raise ObservationError(name, f"must be finite and in [{lo}, {hi}], got {shown}")
    return int(v) if integer else float(v)


def _number_list(doc: dict, name: str, lo: float, hi: float, max_len: int, min_len: int = 0,
                 integer: bool = False) -> list:
    if name not in doc:
        raise ObservationError(name, "missing")
    seq = doc[name]
    if not isinstance(seq, list):
        raise ObservationError(name, "must be a list")
    if not min_len <= len(seq) <= max_len:
        raise ObservationError(name, f"must have {min_len}..{max_len} entries, got {len(seq)}")
    return [_number({name: x}, name, lo, hi, integer) for x in seq]


def parse_observation(doc: Any) -> AbrObservation:
    """Validate a decoded JSON body; raises ObservationError naming the first bad field."""
    if not isinstance(doc, dict):
        raise ObservationError("body", "must be a JSON object")
    ladder = _number_list(doc, "ladder_kbps", 1e-3, MAX_BITRATE_KBPS, MAX_LEVELS, min_len=1)
    if any(b <= a for a, b in zip(ladder, ladder[1:])):
        raise ObservationError("ladder_kbps", "must be strictly ascending")
    levels = len(ladder)
    total = _number(doc, "total_chunks", 1, MAX_CHUNKS, integer=True)
    index = _number(doc, "chunk_index", 0, total - 1, integer=True)
    last_q = _number(doc, "last_quality", 0, levels - 1, integer=True)
    buffer_s = _number(doc, "buffer_s", 0.0, MAX_BUFFER_S)
    tput = _number_list(doc, "throughput_kbps_history", 1e-6, MAX_BITRATE_KBPS * 10, MAX_HISTORY)
    dtime = _number_list(doc, "download_time_s_history", 0.0, MAX_BUFFER_S, MAX_HISTORY)
    if len(dtime) != len(tput):
        raise ObservationError("download_time_s_history", "must have as many entries as throughput_kbps_history")
    rows = doc.get("upcoming_chunk_sizes_bytes")
    if not isinstance(rows, list) or not 1 <= len(rows) <= MAX_HORIZON:
        raise ObservationError("upcoming_chunk_sizes_bytes", f"must be a list of 1..{MAX_HORIZON} rows")
    if len(rows) > total - index:
        raise ObservationError("upcoming_chunk_sizes_bytes", "has rows past the end of the video")
    sizes = [_number_list({"upcoming_chunk_sizes_bytes": r}, "upcoming_chunk_sizes_bytes", 1, MAX_CHUNK_BYTES,
                          levels, min_len=levels, integer=True) for r in rows]
    rebuffer_s = _number(doc, "rebuffer_s", 0.0, 10 * MAX_BUFFER_S) if "rebuffer_s" in doc else 0.0
    chunk_s = _number(doc, "chunk_duration_s", 0.01, 600.0) if "chunk_duration_s" in doc else 4.0
    session_id = doc.get("session_id", "")
    if not isinstance(session_id, str) or len(session_id) > MAX_SESSION_ID_CHARS:
        raise ObservationError("session_id", f"must be a string of at most {MAX_SESSION_ID_CHARS} characters")
    extra = doc.get("extra", {})
    if not isinstance(extra, dict):
        raise ObservationError("extra", "must be an object")
    # The one extra a policy reads as a number (netllm's return-to-go); null means "not given" (chunk 0).
    if extra.get("last_chunk_qoe") is not None:
        try:
            qoe = _number(extra, "last_chunk_qoe", -MAX_CHUNK_QOE_ABS, MAX_CHUNK_QOE_ABS)
        except ObservationError as err:
            raise ObservationError("extra.last_chunk_qoe", err.message) from None
        extra = {**extra, "last_chunk_qoe": qoe}
    return AbrObservation(index, total, last_q, buffer_s, tput, dtime, sizes, ladder, rebuffer_s, chunk_s,
                          session_id, extra)
