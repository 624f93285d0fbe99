"""`netllm prepare-video`: a real 3-chunk encode with the default ladder, checked through the MPD, the
segment files, video.json and ffprobe; plus the manifest reader/writer and the command's error paths."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from netllm.cli import CommandError, main
from netllm.video import PENSIEVE_LADDER_KBPS, load_video
from server import prepare_video
from server.mpd import (Manifest, MpdError, Representation, fill_template, parse_iso_duration_s, parse_mpd,
                        write_mpd)

SMALL_CHUNKS = 3
# Measured on the 48-chunk default video (summary.json of `netllm prepare-video`, ffmpeg 5.1 / x264 164):
# every segment within 3.2 % of bitrate x 4 s / 8, level means within 0.5 %. The bounds leave some room.
SEGMENT_TOLERANCE = 0.06
LEVEL_MEAN_TOLERANCE = 0.02

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")


def prepare_small_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default ladder, 3 chunks, encoded once per test session (a second call keeps the first output)."""
    out = tmp_path_factory.getbasetemp() / "video-3-chunks"
    assert prepare_video.run(prepare_video.Config(out=out, chunks=SMALL_CHUNKS)) == 0
    return out


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_small_video(tmp_path_factory)


def tiny_config(out: Path, **changes) -> prepare_video.Config:
    """Two small rungs, one chunk: for the command's behaviour, not the ladder (encodes in about a second)."""
    cfg = prepare_video.Config(out=out, chunks=1, ladder_kbps=[100, 200], resolutions=["160x90", "320x180"],
                               noise=0, preset="ultrafast")
    for name, value in changes.items():
        setattr(cfg, name, value)
    return cfg


def test_mpd_has_the_ladder_as_six_numbered_representations(video_dir: Path) -> None:
    manifest = parse_mpd(video_dir / "manifest.mpd")
    reps = manifest.representations
    assert [r.id for r in reps] == ["0", "1", "2", "3", "4", "5"]
    assert [r.bandwidth_bps for r in reps] == [k * 1000 for k in PENSIEVE_LADDER_KBPS]
    heights = [r.height for r in reps]
    assert heights == sorted(heights) and len(set(heights)) == 6
    assert all(r.codecs.startswith("avc1.") and r.mime_type == "video/mp4" for r in reps)
    assert manifest.segment_duration_s == 4.0
    assert manifest.presentation_duration_s == 4.0 * SMALL_CHUNKS
    assert manifest.segment_count == SMALL_CHUNKS
    assert "$RepresentationID$" in manifest.media and "$Number$" in manifest.media


def test_video_json_records_every_segment_file(video_dir: Path) -> None:
    video = load_video(video_dir)
    doc = json.loads((video_dir / "video.json").read_text())
    assert video.ladder_kbps == tuple(float(k) for k in PENSIEVE_LADDER_KBPS)
    assert video.chunk_sizes_bytes.shape == (6, SMALL_CHUNKS)
    assert video.chunk_duration_s == 4.0 and doc["chunk_count"] == SMALL_CHUNKS
    manifest = parse_mpd(video_dir / doc["mpd"])
    for level, rep in enumerate(manifest.representations):
        assert (video_dir / manifest.init_name(rep.id)).is_file()
        for n in range(SMALL_CHUNKS):
            segment = video_dir / manifest.media_name(rep.id, manifest.start_number + n)
            assert segment.stat().st_size == video.chunk_sizes_bytes[level, n]
    assert not (video_dir / manifest.media_name("0", SMALL_CHUNKS + 1)).exists()
    assert doc["representations"] == [r.id for r in manifest.representations]
    assert doc["encoder"]["gop_frames"] == 96 and doc["source"]["fps"] == 24
    # the profile the streams have, read from their codecs strings (ultrafast: no CABAC, so baseline)
    assert doc["encoder"]["profiles"] == [prepare_video.h264_profile(c) for c in doc["codecs"]]
    assert all(p in ("constrained baseline", "baseline", "main", "high") for p in doc["encoder"]["profiles"])
    assert json.loads((video_dir / "config.json").read_text())["chunks"] == SMALL_CHUNKS


def test_segment_sizes_are_close_to_nominal_bitrate(video_dir: Path) -> None:
    video = load_video(video_dir)
    nominal = np.asarray(PENSIEVE_LADDER_KBPS, dtype=float)[:, None] * 1000 * 4.0 / 8
    relative = video.chunk_sizes_bytes / nominal - 1
    assert np.abs(relative).max() < SEGMENT_TOLERANCE, relative
    assert np.abs(relative.mean(axis=1)).max() < LEVEL_MEAN_TOLERANCE, relative
    summary = json.loads((video_dir / "summary.json").read_text())
    assert [row["bitrate_kbps"] for row in summary["size_deviation"]] == list(PENSIEVE_LADDER_KBPS)


def _probe_frames(path: Path) -> list[tuple[int, float]]:
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                          "frame=key_frame,pts_time", "-of", "csv=p=0", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return [(int(key), float(pts)) for key, pts in (line.split(",")[:2] for line in out.split())]


def test_each_segment_is_four_seconds_opening_on_a_keyframe(video_dir: Path, tmp_path: Path) -> None:
    for level, number in ((0, 1), (5, 2), (3, SMALL_CHUNKS)):
        joined = tmp_path / f"seg-{level}-{number}.mp4"
        joined.write_bytes((video_dir / f"init-{level}.mp4").read_bytes()
                           + (video_dir / f"chunk-{level}-{number}.m4s").read_bytes())
        frames = _probe_frames(joined)
        assert len(frames) == 96, (level, number)  # 4 s at 24 fps
        times = sorted(pts for _, pts in frames)
        assert times[0] == pytest.approx(4.0 * (number - 1))
        assert [key for key, pts in frames if pts == times[0]] == [1]
        assert sum(key for key, _ in frames) == 1  # no scene-cut keyframes inside a segment


def test_rerun_keeps_a_complete_video_and_the_cli_parses_its_options(video_dir: Path) -> None:
    before = (video_dir / "chunk-5-1.m4s").stat().st_mtime_ns
    assert main(["prepare-video", "--out", str(video_dir), "--chunks", str(SMALL_CHUNKS),
                 "--ladder-kbps", ",".join(map(str, PENSIEVE_LADDER_KBPS))]) == 0
    assert (video_dir / "chunk-5-1.m4s").stat().st_mtime_ns == before


def test_other_settings_need_force_and_force_reencodes(tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    assert prepare_video.run(tiny_config(out)) == 0
    assert load_video(out).chunk_sizes_bytes.shape == (2, 1)
    with pytest.raises(CommandError, match="--force"):
        prepare_video.run(tiny_config(out, chunks=2))
    assert prepare_video.run(tiny_config(out, chunks=2, force=True)) == 0
    assert load_video(out).chunk_sizes_bytes.shape == (2, 2)
    assert not (tmp_path / ".tiny.partial").exists()


def test_a_folder_that_is_not_a_video_is_never_replaced(tmp_path: Path) -> None:
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(CommandError, match="not a prepared video"):
        prepare_video.run(tiny_config(out, force=True))
    assert (out / "notes.txt").read_text() == "keep me"


def test_missing_or_failing_ffmpeg_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="ffmpeg not found"):
        prepare_video.run(tiny_config(tmp_path / "a", ffmpeg=str(tmp_path / "no-ffmpeg")))
    with pytest.raises(CommandError, match="exit status") as failure:
        prepare_video.run(tiny_config(tmp_path / "b", pattern="no_such_source"))
    assert "no_such_source" in str(failure.value)  # ffmpeg's own complaint is in the message
    assert not (tmp_path / "b").exists() and not (tmp_path / ".b.partial").exists()


@pytest.mark.parametrize("changes, message", [
    ({"resolutions": ["160x90"]}, "1 entries for 2"),
    ({"resolutions": ["160x90", "wide"]}, "WIDTHxHEIGHT"),
    ({"ladder_kbps": [200, 100]}, "ascending"),
    ({"fps": 25, "chunk_duration_s": 0.3}, "whole"),
    ({"chunks": 0}, "at least 1"),
    # 100 frames at 30 fps: whole frames, but the MPD's millisecond durations would round to 3333
    ({"fps": 30, "chunk_duration_s": 10 / 3}, "milliseconds"),
])
def test_bad_settings_are_refused_before_encoding(tmp_path: Path, changes: dict, message: str) -> None:
    with pytest.raises(CommandError, match=message):
        prepare_video.run(tiny_config(tmp_path / "v", **changes))
    assert not (tmp_path / "v").exists()


def test_manifest_round_trip_and_templates(tmp_path: Path) -> None:
    manifest = Manifest((Representation("a", 300000, 320, 180, "avc1.64000c"),
                         Representation("b", 750000, 640, 360, "avc1.64001e")),
                        segment_duration_s=4.0, presentation_duration_s=10.0,
                        initialization="i-$RepresentationID$.mp4",
                        media="s-$RepresentationID$-$Number%05d$.m4s",
                        start_number=1, frame_rate="24")
    parsed = parse_mpd(write_mpd(tmp_path / "m.mpd", manifest))
    assert parsed == manifest and parsed.segment_count == 3
    assert parsed.media_name("b", 7) == "s-b-00007.m4s"
    assert fill_template("x$$-$RepresentationID$", "3") == "x$-3"
    assert parse_iso_duration_s("PT1H2M3.5S") == 3723.5
    (tmp_path / "bad.mpd").write_text("<MPD xmlns='urn:mpeg:dash:schema:mpd:2011' type='dynamic'/>")
    with pytest.raises(MpdError, match="bad.mpd.*static"):
        parse_mpd(tmp_path / "bad.mpd")
