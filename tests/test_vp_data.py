"""Head-movement traces: reader errors (file + line), converters, windows, splits, the reference data sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from traces.headmove import (
    HeadTrace,
    HeadTraceError,
    WindowSpec,
    angles_to_vectors,
    index_vp_dataset,
    load_vp_dataset,
    make_windows,
    read_head_trace,
    read_ref,
    read_track_trace,
    synthetic_head_trace,
    trace_to_vectors,
    vectors_to_angles,
    vectors_to_trace,
    write_head_trace,
    write_track_trace,
)
from traces.vp_splits import NETLLM_USERS, NETLLM_VIDEOS, SPLITS, VpSplitError, select_split, split_report

GOOD = "0.000000,4.6,9.9,153.6\n0.200000,6.7,11.2,141.7\n0.400000,7.7,8.3,130.0\n"


def write(tmp_path: Path, text: str, name: str = "t.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_reads_the_netllm_layout(tmp_path: Path) -> None:
    trace = read_head_trace(write(tmp_path, GOOD), "4", "83", "Jin2022")
    assert len(trace) == 3 and trace.key == ("Jin2022", "4", "83")
    np.testing.assert_allclose(trace.poses_deg[1], [6.7, 11.2, 141.7])
    np.testing.assert_allclose(trace.time_s, [0.0, 0.2, 0.4])


def test_header_and_blank_lines_are_tolerated(tmp_path: Path) -> None:
    trace = read_head_trace(write(tmp_path, "time,roll,pitch,yaw\n\n" + GOOD + "\n"))
    assert len(trace) == 3


@pytest.mark.parametrize("text, line, words", [
    ("", 1, "no samples"),
    ("\n\n", 1, "no samples"),
    (GOOD + "0.6,1.0,abc,3.0\n", 4, "field 3 (pitch_deg) is not a number"),
    (GOOD + "0.6,1.0,2.0\n", 4, "expected 4 comma-separated fields"),
    (GOOD + "0.6,1.0,2.0,3.0,4.0\n", 4, "got 5"),
    ("0.0,1,2,3\n0.2,nan,2,3\n", 2, "field 2 (roll_deg) is not finite"),
    ("0.0,1,2,3\n0.2,1,2,inf\n", 2, "field 4 (yaw_deg) is not finite"),
    ("0.0,1,2,3\n0.4,1,2,3\n0.2,1,2,3\n", 3, "goes backwards"),
    ("0.0,1,2,3\n0.2,1,95,3\n", 2, "outside [-90, 90]"),
    ("-0.2,1,2,3\n", 1, "negative playback time"),
    ("nan,nan,nan,nan\n", 1, "not finite"),
    ("0.0 1 2 3\n", 1, "expected 4 comma-separated fields"),
])
def test_malformed_files_name_file_and_line(tmp_path: Path, text: str, line: int, words: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(HeadTraceError) as info:
        read_head_trace(path)
    assert info.value.line == line and info.value.path == str(path)
    assert words in str(info.value) and str(info.value).startswith(f"{path}:{line}:")


def test_non_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bin.csv"
    path.write_bytes(b"0.0,1,2,3\n0.2,1,2,\xff\n")
    with pytest.raises(HeadTraceError) as info:
        read_head_trace(path)
    assert info.value.line == 2


def test_small_time_backsteps_are_tolerated_when_asked(tmp_path: Path) -> None:
    path = write(tmp_path, "0.0,1,2,3\n0.5,1,2,3\n0.3,1,2,3\n0.7,1,2,3\n")
    assert read_head_trace(path, max_backstep_s=0.5).time_backsteps == 1
    with pytest.raises(HeadTraceError, match="goes backwards"):
        read_head_trace(path, max_backstep_s=0.1)


def test_out_of_range_yaw_and_roll_are_wrapped_in_range_values_kept(tmp_path: Path) -> None:
    trace = read_head_trace(write(tmp_path, "0.0,190,0,-180\n0.2,180,0,540\n"))
    np.testing.assert_allclose(trace.roll_deg, [-170.0, 180.0])
    np.testing.assert_allclose(trace.yaw_deg, [-180.0, -180.0])


def test_track_layout_reader_and_its_errors(tmp_path: Path) -> None:
    trace = read_track_trace(write(tmp_path, "0.0,1,0,0\n0.2,0,1,0\n0.4,0,0,2\n"), roll_deg=0.0)
    np.testing.assert_allclose(trace.yaw_deg[:2], [0.0, 90.0], atol=1e-9)
    np.testing.assert_allclose(trace.pitch_deg, [0.0, 0.0, 90.0], atol=1e-9)
    assert not trace.roll_known and np.all(trace.roll_deg == 0.0)
    with pytest.raises(HeadTraceError) as info:
        read_track_trace(write(tmp_path, "0.0,1,0,0\n0.2,0,0,0\n", "z.csv"))
    assert info.value.line == 2 and "zero vector" in info.value.reason


def test_axis_convention_known_directions() -> None:
    yaw, pitch = np.array([0.0, 90.0, 180.0, 0.0, 37.0]), np.array([0.0, 0.0, 0.0, 90.0, -90.0])
    vectors = angles_to_vectors(yaw, pitch)
    np.testing.assert_allclose(vectors, [[1, 0, 0], [0, 1, 0], [-1, 0, 0], [0, 0, 1], [0, 0, -1]], atol=1e-12)


@given(st.floats(-179.9, 179.9), st.floats(-89.9, 89.9))
def test_angles_vectors_round_trip(yaw: float, pitch: float) -> None:
    vector = angles_to_vectors(np.array(yaw), np.array(pitch))
    assert abs(np.linalg.norm(vector) - 1.0) < 1e-12
    back_yaw, back_pitch = vectors_to_angles(vector)
    assert abs(float(back_pitch) - pitch) < 1e-7
    assert abs(float(back_yaw) - yaw) < 1e-6


def test_trace_round_trip_through_files(tmp_path: Path) -> None:
    trace = synthetic_head_trace(n_samples=120, noise_deg=2.0, seed=3)
    again = read_head_trace(write_head_trace(trace, tmp_path / "a.csv"))
    np.testing.assert_allclose(again.poses_deg, trace.poses_deg, atol=1e-6)
    via_track = read_track_trace(write_track_trace(trace, tmp_path / "b.csv"))
    yaw_error = np.abs((via_track.yaw_deg - trace.yaw_deg + 180) % 360 - 180)
    assert yaw_error.max() < 1e-5 and np.abs(via_track.pitch_deg - trace.pitch_deg).max() < 1e-5
    # roll is lost in a direction vector: filled, and flagged as such
    assert not via_track.roll_known and np.all(via_track.roll_deg == 0.0)
    rows = trace_to_vectors(trace)
    rebuilt = vectors_to_trace(rows[:, 0], rows[:, 1:], "1", "1", roll_deg=5.0)
    assert np.all(rebuilt.roll_deg == 5.0)


def test_head_trace_rejects_mismatched_arrays() -> None:
    with pytest.raises(ValueError, match="one length"):
        HeadTrace("1", "1", np.zeros(3), np.zeros(3), np.zeros(2), np.zeros(3))


def constant_trace(n: int) -> HeadTrace:
    index = np.arange(n, dtype=np.float64)
    return HeadTrace("v", "u", index / 5, index, index / 10, -index)


@pytest.mark.parametrize("n, expected",
                         [(300, 14), (100, 1), (91, 1), (90, 0), (60, 0), (121, 3), (1800, 114)])
def test_window_counts_follow_netllm(n: int, expected: int) -> None:
    # NetLLM: range(trim_head=30, n - trim_tail=60, step=15)
    assert len(range(30, n - 60, 15)) == expected
    assert len(make_windows([constant_trace(n)])) == expected


def test_window_contents() -> None:
    trace = constant_trace(300)
    windows = make_windows([trace])
    assert windows.history_deg.shape == (14, 10, 3) and windows.future_deg.shape == (14, 20, 3)
    assert windows.start[0] == 20 and windows.start[1] == 35
    # history is samples 20..29 and the future the samples 30..49: 1..20 after the history
    np.testing.assert_array_equal(windows.history_deg[0, :, 0], np.arange(20, 30))
    np.testing.assert_array_equal(windows.future_deg[0, :, 0], np.arange(30, 50))
    np.testing.assert_allclose(windows.history_time_s[0, -1], 29 / 5)
    assert windows.start[-1] + 10 < 300 - 60
    short = make_windows([trace], WindowSpec(history=5, horizon=5, stride=1, trim_head=5, trim_tail=0))
    assert len(short) == 300 - 5 - 5 + 1 and short.future_deg[-1, -1, 0] == 299


def test_window_spec_validation() -> None:
    with pytest.raises(ValueError):
        WindowSpec(history=10, trim_head=5)
    with pytest.raises(ValueError):
        WindowSpec(horizon=0)


def synthetic_dataset(root: Path, videos: int = 6, users: int = 7) -> Path:
    folder = root / "Synth"
    for v in range(1, videos + 1):
        for u in range(1, users + 1):
            trace = synthetic_head_trace(str(v), str(u), n_samples=150, noise_deg=1.0, seed=v * 100 + u)
            write_head_trace(trace, folder / f"video{v}" / "5Hz" / f"simple_5Hz_user{u}.csv")
    return folder


def test_index_and_hash_splits_on_a_synthetic_dataset(tmp_path: Path) -> None:
    folder = synthetic_dataset(tmp_path)
    refs = index_vp_dataset(folder)
    assert len(refs) == 42 and refs[0].dataset == "Synth"
    assert [r.user_id for r in refs[:7]] == [str(u) for u in range(1, 8)]  # natural order
    chosen = {s: select_split(refs, s) for s in SPLITS}
    assert all(chosen.values())
    for a in SPLITS:
        for b in SPLITS:
            if a < b:
                assert not {r.video_id for r in chosen[a]} & {r.video_id for r in chosen[b]}
                assert not {r.user_id for r in chosen[a]} & {r.user_id for r in chosen[b]}
    assert chosen == {s: select_split(index_vp_dataset(folder), s) for s in SPLITS}  # deterministic
    report = split_report(refs)
    assert report["scheme"] == "hash"
    assert sum(report[s]["pairs"] for s in SPLITS) + report["pairs_in_no_split"] == 42
    with pytest.raises(VpSplitError):
        select_split(refs, "test", "netllm")
    traces = load_vp_dataset(folder, select=lambda r: r.video_id == "2")
    assert len(traces) == 7 and all(t.video_id == "2" for t in traces)


def test_track_layout_dataset(tmp_path: Path) -> None:
    folder = tmp_path / "TrackSet"
    for v in ("a", "b"):
        for u in ("1", "2"):
            write_track_trace(synthetic_head_trace(v, u, n_samples=40), folder / v / u)
    refs = index_vp_dataset(folder)
    assert {r.layout for r in refs} == {"track"} and len(refs) == 4
    assert len(read_ref(refs[0])) == 40


def test_netllm_groups_are_disjoint() -> None:
    for groups in (NETLLM_VIDEOS, NETLLM_USERS):
        for dataset, splits in groups.items():
            seen: set[int] = set()
            for ids in splits.values():
                assert not seen & set(ids), dataset
                seen |= set(ids)


def test_reference_datasets_and_netllm_splits(shared_data: Path) -> None:
    expected = {"Jin2022": (2268, 126, 1698), "Wu2017": (864, 18, 1395)}
    for name, (pairs, test_pairs, test_windows) in expected.items():
        refs = index_vp_dataset(shared_data / "vp" / name)
        assert len(refs) == pairs
        test = select_split(refs, "test")
        assert len(test) == test_pairs
        traces = [read_ref(r) for r in test]
        assert len(make_windows(traces)) == test_windows
        train_users = {r.user_id for r in select_split(refs, "train")}
        assert not train_users & {r.user_id for r in test}
