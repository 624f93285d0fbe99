"""Malformed inputs outside the trace readers: video size files, head-movement CSVs with a byte-order
mark, and file-system failures of any command (one line, exit status 2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from netllm.cli import main
from netllm.video import VideoError, load_video
from traces.headmove import read_head_trace, synthetic_head_trace, write_head_trace


def size_folder(root: Path, level_3: str) -> Path:
    for level in range(6):
        text = level_3 if level == 3 else "1000\n2000\n3000\n"
        (root / f"video_size_{level}").write_text(text)
    return root


@pytest.mark.parametrize("text, line, words", [
    ("1000\n100000000000000000000\n3000\n", 2, "must be in 1..2^53"),
    ("1000\n\n0\n", 3, "must be in 1..2^53"),
    ("1000\n2000\n12.5\n", 3, "not an integer byte count"),
])
def test_video_size_file_errors_name_the_line(tmp_path: Path, text: str, line: int, words: str) -> None:
    folder = size_folder(tmp_path, text)
    with pytest.raises(VideoError) as info:
        load_video(folder)
    assert str(info.value).startswith(f"{folder / 'video_size_3'}:{line}: ") and words in str(info.value)


def test_huge_chunk_size_in_video_json_is_a_video_error(tmp_path: Path) -> None:
    (tmp_path / "video.json").write_text('{"ladder_kbps": [300], "chunk_duration_s": 4, '
                                         '"chunk_sizes_bytes": [[100000000000000000000]]}')
    with pytest.raises(VideoError, match="not a usable video.json"):
        load_video(tmp_path)


def test_head_trace_with_a_utf8_byte_order_mark_is_read(tmp_path: Path) -> None:
    trace = synthetic_head_trace("1", "1", n_samples=40, seed=3)
    plain = write_head_trace(trace, tmp_path / "plain.csv")
    marked = tmp_path / "marked.csv"
    marked.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    np.testing.assert_array_equal(read_head_trace(marked).poses_deg, read_head_trace(plain).poses_deg)


def test_os_errors_are_one_line_with_status_2(shared_data: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "taken"
    out.write_text("")
    assert main(["splits", "--out", str(out), "--data", str(shared_data)]) == 2
    assert capsys.readouterr().err.strip() == f"netllm splits: error: {out}: File exists"
