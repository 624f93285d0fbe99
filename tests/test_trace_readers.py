"""Trace readers (cooked, Mahimahi, Sabre), format detection, malformed input, generators, reference data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, strategies as st

from traces.bandwidth import BandwidthTrace, TraceError
from traces.generators import constant, main as generators_main, markov, parse_steps, stepped
from traces.readers import (
    MAX_MAHIMAHI_BINS, TraceFileError, detect_format, read_cooked, read_mahimahi, read_sabre, read_trace,
    read_trace_dir, write_cooked,
)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ---- cooked ---------------------------------------------------------------------------------------------

def test_cooked_space_tab_and_blank_lines(tmp_path: Path) -> None:
    path = _write(tmp_path, "t1", "0.0 1.5\n\n1.0\t2.0\n  \n2.5   0.0\n")
    trace = read_trace(path)
    assert trace.name == "t1"
    np.testing.assert_allclose(trace.time_s, [0.0, 1.0, 2.5])
    np.testing.assert_allclose(trace.bandwidth_kbps, [1500.0, 2000.0, 0.0])
    assert trace.source == str(path)


@pytest.mark.parametrize("text, line, words", [
    ("0 1\n1 abc\n", 2, "not a number"),
    ("0 1\n1 2 3\n", 2, "expected 2 columns"),
    ("0 1\n\n1 -2\n", 3, "negative bandwidth"),
    ("0 1\n1 nan\n", 2, "not finite"),
    ("0 1\n1 inf\n", 2, "not finite"),
    ("0 1\n2 1\n1 1\n", 3, "backwards"),
    ("", 1, "empty"),
    ("\n\n", 2, "empty"),
    ("0 1\n", 1, "at least 2 samples"),
    ("1 1\n1 2\n", 2, "spans no time"),
])
def test_cooked_malformed(tmp_path: Path, text: str, line: int, words: str) -> None:
    path = _write(tmp_path, "bad", text)
    with pytest.raises(TraceFileError) as info:
        read_cooked(path)
    assert info.value.line == line
    assert info.value.path == str(path)
    assert str(info.value).startswith(f"{path}:{line}:")
    assert words in str(info.value)
    assert isinstance(info.value, TraceError)


def test_write_cooked_round_trip(tmp_path: Path) -> None:
    trace = markov(seed=3, duration_s=50)
    back = read_trace(write_cooked(trace, tmp_path / "sub" / "m.txt"))
    np.testing.assert_allclose(back.time_s, trace.time_s, rtol=1e-12)
    np.testing.assert_allclose(back.bandwidth_kbps, trace.bandwidth_kbps, rtol=1e-12)


@given(st.lists(st.tuples(st.floats(0.01, 100), st.floats(0, 100)), min_size=1, max_size=30))
def test_stepped_round_trip_property(steps: list[tuple[float, float]]) -> None:
    import tempfile

    trace = stepped(steps)
    with tempfile.TemporaryDirectory() as tmp:
        back = read_trace(write_cooked(trace, Path(tmp) / "s"))
    np.testing.assert_allclose(back.bandwidth_kbps, trace.bandwidth_kbps, rtol=1e-12)
    np.testing.assert_allclose(back.duration_s, sum(d for d, _ in steps), rtol=1e-9)


# ---- mahimahi -------------------------------------------------------------------------------------------

def test_mahimahi_binning(tmp_path: Path) -> None:
    # 1 packet/ms during the first second (12 Mbps), 1 packet / 10 ms in the second (1.2 Mbps).
    stamps = list(range(0, 1000)) + list(range(1000, 2001, 10))
    trace = read_trace(_write(tmp_path, "m.down", "\n".join(map(str, stamps)) + "\n"))
    np.testing.assert_allclose(trace.time_s, [0.0, 1.0, 2.0])
    np.testing.assert_allclose(trace.bandwidth_kbps, [12000.0, 12000.0, 101 * 12.0])


def test_mahimahi_repeated_stamps_and_custom_bin(tmp_path: Path) -> None:
    path = _write(tmp_path, "m", "0\n0\n0\n250\n499\n500\n")
    trace = read_mahimahi(path, bin_s=0.25)
    np.testing.assert_allclose(trace.time_s, [0.0, 0.25, 0.5])
    # bin [0,250): 3 packets; bin [250,500]: 3 packets (the last stamp belongs to the last bin)
    np.testing.assert_allclose(trace.bandwidth_kbps, [3 * 48.0, 3 * 48.0, 3 * 48.0])


def test_mahimahi_partial_last_bin(tmp_path: Path) -> None:
    trace = read_mahimahi(_write(tmp_path, "m", "\n".join(str(t) for t in range(0, 1500)) + "\n"))
    np.testing.assert_allclose(trace.time_s, [0.0, 1.0, 1.499])
    # stamps 1000..1499: 500 packets in a 499 ms last bin (it includes the final stamp)
    np.testing.assert_allclose(trace.bandwidth_kbps[2], 500 * 12000 / 499.0)


@pytest.mark.parametrize("text, line, words", [
    ("0\n1.5\n", 2, "not an integer"),
    ("0\nx\n", 2, "not an integer"),
    ("0\n5\n3\n", 3, "backwards"),
    ("0\n-1\n", 2, "negative timestamp"),
    ("0\n1 2\n", 2, "expected 1 column"),
    ("0\n0\n", 2, "spans no time"),
])
def test_mahimahi_malformed(tmp_path: Path, text: str, line: int, words: str) -> None:
    with pytest.raises(TraceFileError) as info:
        read_mahimahi(_write(tmp_path, "bad", text))
    assert info.value.line == line and words in str(info.value)


def test_mahimahi_empty(tmp_path: Path) -> None:
    with pytest.raises(TraceFileError, match="empty"):
        read_mahimahi(_write(tmp_path, "e", ""))


# ---- sabre ----------------------------------------------------------------------------------------------

def test_sabre(tmp_path: Path) -> None:
    doc = [{"duration_ms": 2000, "bandwidth_kbps": 800, "latency_ms": 40},
           {"duration_ms": 500, "bandwidth_kbps": 0, "latency_ms": 60}]
    trace = read_trace(_write(tmp_path, "net.json", json.dumps(doc, indent=1)))
    np.testing.assert_allclose(trace.time_s, [0.0, 2.0, 2.5])
    np.testing.assert_allclose(trace.bandwidth_kbps, [800, 800, 0])
    np.testing.assert_allclose(trace.latency_ms, [40, 40, 60])


SABRE_GOOD = '{"duration_ms": 1000, "bandwidth_kbps": 500, "latency_ms": 20}'


@pytest.mark.parametrize("text, line, words", [
    (f"[\n{SABRE_GOOD},\n" + '{"duration_ms": 1000, "bandwidth_kbps": -5, "latency_ms": 1}\n]', 3,
     "negative"),
    (f"[\n{SABRE_GOOD},\n" + '{"duration_ms": 1000, "latency_ms": 1}\n]', 3, "missing 'bandwidth_kbps'"),
    (f"[\n{SABRE_GOOD},\n" + '{"duration_ms": "x", "bandwidth_kbps": 1}\n]', 3, "not a number"),
    (f"[\n{SABRE_GOOD},\n" + '{"duration_ms": 0, "bandwidth_kbps": 1}\n]', 3, "duration_ms must be > 0"),
    (f"[\n{SABRE_GOOD},\n\n" + '{"duration_ms": 1, "bandwidth_kbps": NaN}\n]', 4, "not finite"),
    (f"[\n{SABRE_GOOD},\n" + "[1, 2]\n]", 3, "must be an object"),
    (f"[\n{SABRE_GOOD},\n" + '{"duration_ms": 1,,}\n]', 3, "invalid JSON"),
    (f"[\n{SABRE_GOOD}\n" + "oops", 3, "expected ',' or ']'"),
    ("[]", 1, "empty"),
    ('{"a": 1}', 1, "expected a JSON array"),
])
def test_sabre_malformed(tmp_path: Path, text: str, line: int, words: str) -> None:
    with pytest.raises(TraceFileError) as info:
        read_sabre(_write(tmp_path, "bad.json", text))
    assert info.value.line == line and words in str(info.value), str(info.value)


# ---- detection and directories ----------------------------------------------------------------------------

def test_detect_format(tmp_path: Path) -> None:
    assert detect_format(_write(tmp_path, "a", "\n0 1\n1 2\n")) == "cooked"
    assert detect_format(_write(tmp_path, "b", "\n0\n5\n")) == "mahimahi"
    assert detect_format(_write(tmp_path, "c", "  [ ]")) == "sabre"
    assert detect_format(_write(tmp_path, "d.json", "0 1\n")) == "sabre"
    with pytest.raises(TraceFileError, match=r":2: unknown trace format: 3 columns"):
        detect_format(_write(tmp_path, "e", "\n1 2 3\n"))
    with pytest.raises(TraceError, match="no such trace file"):
        read_trace(tmp_path / "missing")
    with pytest.raises(ValueError, match="unknown trace format"):
        read_trace(tmp_path / "a", fmt="csv")


def test_binary_file_is_a_trace_error(tmp_path: Path) -> None:
    path = tmp_path / "bin"
    path.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(TraceFileError, match="not a text file"):
        read_trace(path)


def test_read_trace_dir_sorted_and_errors(tmp_path: Path) -> None:
    for name in ("b_trace", "a_trace", "c_trace"):
        _write(tmp_path, name, "0 1\n1 2\n")
    _write(tmp_path, ".hidden", "garbage")
    (tmp_path / "subdir").mkdir()
    assert [t.name for t in read_trace_dir(tmp_path)] == ["a_trace", "b_trace", "c_trace"]
    assert [t.name for t in read_trace_dir(tmp_path, pattern="c*")] == ["c_trace"]
    with pytest.raises(TraceError, match="no trace files"):
        read_trace_dir(tmp_path, pattern="zzz*")
    _write(tmp_path, "d_bad", "0 1\n1 x\n")
    with pytest.raises(TraceFileError, match="d_bad:2:"):
        read_trace_dir(tmp_path)


def test_all_reference_traces(shared_data: Path) -> None:
    counts = {}
    for folder in sorted((shared_data / "abr" / "traces").iterdir()):
        traces = read_trace_dir(folder)
        counts[folder.name] = len(traces)
        for trace in traces:
            assert trace.duration_s > 30 and trace.mean_bandwidth_kbps > 0
    assert counts == {"fcc-test": 100, "fcc-train": 235, "fcc-valid": 150, "norway-test": 310}


# ---- generators ------------------------------------------------------------------------------------------

def test_stepped_and_constant() -> None:
    trace = stepped([(20, 1), (20, 3), (20, 0.5)])
    np.testing.assert_allclose(trace.time_s, [0, 20, 40, 60])
    np.testing.assert_allclose(trace.bandwidth_kbps, [1000, 1000, 3000, 500])
    flat = constant(2.0, duration_s=10)
    assert flat.time_s.size == 11 and flat.mean_bandwidth_kbps == pytest.approx(2000)
    with pytest.raises(ValueError):
        stepped([(0, 1)])
    with pytest.raises(ValueError):
        stepped([])


def test_markov_seeded_and_bounded() -> None:
    a, b, c = markov(7, 300), markov(7, 300), markov(8, 300)
    np.testing.assert_array_equal(a.bandwidth_kbps, b.bandwidth_kbps)
    assert not np.array_equal(a.bandwidth_kbps, c.bandwidth_kbps)
    assert a.bandwidth_kbps.min() >= 150 and a.duration_s == pytest.approx(300)
    assert np.unique(np.round(a.bandwidth_kbps, -2)).size > 3  # it actually moves


def test_parse_steps_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert parse_steps("1:20,0.5:10") == [(20.0, 1.0), (10.0, 0.5)]
    with pytest.raises(ValueError, match="Mbps:seconds"):
        parse_steps("1-20")
    out = tmp_path / "s.txt"
    assert generators_main(["stepped", "--steps", "1:20,3:20", "--out", str(out)]) == 0
    np.testing.assert_allclose(read_trace(out).bandwidth_kbps, [1000, 1000, 3000])
    assert generators_main(["markov", "--seed", "1", "--duration-s", "30", "--out", str(tmp_path / "m")]) == 0
    assert read_trace(tmp_path / "m").duration_s == pytest.approx(30)
    assert generators_main(["stepped", "--steps", "1:0", "--out", str(out)]) == 2


# ---- degenerate and oversized inputs ----------------------------------------------------------------------

def test_trace_spanning_almost_no_time_is_refused(tmp_path: Path) -> None:
    # A replay loops over the trace: 1e-300 s of it would loop (practically) forever.
    with pytest.raises(TraceFileError) as info:
        read_trace(_write(tmp_path, "tiny", "0 1\n1e-300 1\n"))
    assert info.value.line == 2 and "spans only 1e-300 s" in str(info.value)
    with pytest.raises(TraceError, match="spans only"):
        stepped([(1e-320, 1.0)])
    with pytest.raises(TraceError, match="spans only"):
        BandwidthTrace("t", np.array([0.0, 1e-4]), np.array([1.0, 1.0]))
    # One Mahimahi line (a 12 Mbps constant link) spans 1 ms: the shortest trace allowed.
    assert read_mahimahi(_write(tmp_path, "one", "1\n")).duration_s == pytest.approx(0.001)


def test_cooked_bandwidth_overflowing_kbps_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(TraceFileError) as info:
        read_cooked(_write(tmp_path, "big", "0 1\n1 1e308\n"))
    assert info.value.line == 2 and "too large" in str(info.value)


def test_mahimahi_bins_are_capped(tmp_path: Path) -> None:
    # 10^14 ms would be 10^11 one-second bins (745 GiB); refused before any allocation.
    with pytest.raises(TraceFileError) as info:
        read_mahimahi(_write(tmp_path, "long", "1\n100000000000000\n"))
    assert info.value.line == 2 and f"more than {MAX_MAHIMAHI_BINS}" in str(info.value)
    # A timestamp too large for a float: the same error, not an OverflowError.
    with pytest.raises(TraceFileError, match=r"huge:2: last timestamp 1000.*\(401 digits\)"):
        read_mahimahi(_write(tmp_path, "huge", "1\n1" + "0" * 400 + "\n"))
    # The same length with bins big enough is fine.
    assert read_mahimahi(_write(tmp_path, "ok", "1\n100000000000\n"), bin_s=1e6).duration_s == 1e8


def test_comma_separated_file_gets_a_helpful_message(tmp_path: Path) -> None:
    path = _write(tmp_path, "csv", "0,1\n1,2\n")
    with pytest.raises(TraceFileError, match=r"csv:1: .*comma-separated values\? cooked traces separate"):
        read_trace(path)
    with pytest.raises(TraceFileError, match="comma-separated"):
        read_cooked(path)
    with pytest.raises(TraceFileError, match="comma-separated"):
        read_cooked(_write(tmp_path, "csv2", "0, 1\n1, 2\n"))


@pytest.mark.parametrize("args, words", [
    (["stepped", "--steps", "1:1e-320"], "spans only"),
    (["stepped", "--steps", "inf:10"], "finite"),
    (["markov", "--seed", "1", "--duration-s", "inf"], "finite"),
    (["markov", "--seed", "1", "--duration-s", "30", "--max-mbps", "inf"], "finite"),
    (["markov", "--seed", "-1", "--duration-s", "30"], "seed"),
    (["constant", "--mbps", "1", "--duration-s", "1e12"], "at most 1000000"),
    (["constant", "--mbps", "1", "--duration-s", "-5"], "duration"),
    (["constant", "--mbps", "1", "--duration-s", "nan"], "duration"),
])
def test_gen_trace_refuses_bad_values(tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str],
                                      words: str) -> None:
    out = tmp_path / "t.txt"
    assert generators_main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_gen_trace_unwritable_out_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "a_folder"
    folder.mkdir()
    assert generators_main(["constant", "--mbps", "1", "--duration-s", "5", "--out", str(folder)]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {folder}" in err and len(err.strip().splitlines()) == 1
