"""TPC-H job data: the restricted unpickler (refuses crafted pickles, accepts the real files), the DAG reader
and the arrival streams."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from numpy.lib import format as npy_format

from traces.jobs import (
    NUM_QUERIES,
    QUERY_SIZES,
    JobCatalog,
    JobDataError,
    generate_arrivals,
    load_job,
    load_pickled_npy,
)


class _SystemCall:
    """Unpickling this runs a shell command: the classic pickle attack."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _EvalCall:
    def __reduce__(self):
        return (eval, ("__import__('os').getcwd()",))


def _write_object_npy(path: Path, payload: bytes, shape: tuple = ()) -> None:
    """An .npy header announcing an object array, followed by `payload` (a pickle stream)."""
    with open(path, "wb") as fh:
        npy_format.write_array_header_1_0(fh, {"descr": "|O", "fortran_order": False, "shape": shape})
        fh.write(payload)


@pytest.fixture
def tpch(shared_data: Path) -> Path:
    return shared_data / "cjs" / "tpch"


@pytest.mark.parametrize("wrap_in_array", [False, True])
def test_restricted_unpickler_refuses_os_system(tmp_path: Path, wrap_in_array: bool) -> None:
    marker = tmp_path / "pwned"
    evil = _SystemCall(f"touch {marker}")
    if wrap_in_array:
        # the realistic attack: a genuine numpy object array with a hostile element
        array = np.empty((), dtype=object)
        array[()] = {0: evil}
        payload = pickle.dumps(array, protocol=2)
    else:
        payload = pickle.dumps(evil, protocol=2)
    path = tmp_path / "task_duration_1.npy"
    _write_object_npy(path, payload)
    with pytest.raises(JobDataError) as info:
        load_pickled_npy(path)
    message = str(info.value)
    assert str(path) in message
    assert "system" in message and ("posix" in message or "os" in message)
    assert not marker.exists()


def test_restricted_unpickler_refuses_builtin_eval(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    _write_object_npy(path, pickle.dumps(_EvalCall(), protocol=2))
    with pytest.raises(JobDataError, match=r"refused pickled global (__builtin__|builtins)\.eval"):
        load_pickled_npy(path)


def test_restricted_unpickler_rejects_non_object_and_garbage(tmp_path: Path) -> None:
    plain = tmp_path / "plain.npy"
    np.save(plain, np.zeros(3))
    with pytest.raises(JobDataError, match="expected a pickled object array"):
        load_pickled_npy(plain)
    broken = tmp_path / "broken.npy"
    _write_object_npy(broken, b"\x80\x02cnumpy\nndarr")
    with pytest.raises(JobDataError, match="broken.npy"):
        load_pickled_npy(broken)
    not_npy = tmp_path / "text.npy"
    not_npy.write_text("hello")
    with pytest.raises(JobDataError, match="not a .npy file"):
        load_pickled_npy(not_npy)


def test_restricted_unpickler_accepts_benign_object_array(tmp_path: Path) -> None:
    array = np.empty((), dtype=object)
    array[()] = {0: {"first_wave": {5: [1000, 2000]}}, 1: [1.5, 2], "k": (3, 4)}
    path = tmp_path / "ok.npy"
    np.save(path, array, allow_pickle=True)
    assert load_pickled_npy(path) == array.item()


def test_real_files_load_with_the_restricted_unpickler(tpch: Path) -> None:
    raw = load_pickled_npy(tpch / "2g" / "task_duration_1.npy")
    assert sorted(raw) == [0, 1, 2, 3]
    assert set(raw[0]) == {"first_wave", "rest_wave", "fresh_durations"}
    assert load_pickled_npy(tpch / "2g" / "stage_id_to_node_idx_map_1.npy") == {0: 0, 1: 1, 3: 2, 4: 3}


def test_job_structure_matches_decima_conventions(tpch: Path) -> None:
    job = load_job(tpch, 1, "2g")
    assert job.num_stages == 4 and job.name == "tpch-2g-q1"
    raw = load_pickled_npy(tpch / "2g" / "task_duration_1.npy")
    for stage in job.stages:
        r = raw[stage.index]
        assert stage.num_tasks == len(r["first_wave"][2]) + len(r["rest_wave"][2])  # tasks at the first level
        # fresh durations were removed from the first wave (multiset difference), seconds not ms
        for level, values in stage.first_wave.items():
            fresh = list(r["fresh_durations"][level])
            kept = []
            for v in r["first_wave"][level]:
                if v in fresh:
                    fresh.remove(v)
                else:
                    kept.append(v / 1000.0)
            if kept:
                assert list(values) == pytest.approx(kept)
        assert stage.rest_wave[2] == pytest.approx([v / 1000.0 for v in r["rest_wave"][2]])
    assert [s.parents for s in job.stages] == [(), (0,), (1,), (2,)]
    assert job.adjacency.dtype == bool and job.adjacency[0, 1]


@pytest.mark.slow
def test_every_tpch_job_loads(tpch: Path) -> None:
    jobs = JobCatalog(tpch).all_jobs()
    assert len(jobs) == NUM_QUERIES * len(QUERY_SIZES) == 154
    assert max(j.num_stages for j in jobs) == 18
    assert 1100 < np.mean([j.num_tasks for j in jobs]) < 1200
    for job in jobs:
        for stage in job.stages:
            for level in stage.first_wave:
                assert stage.first_wave[level] or stage.fresh[level]


def test_bad_adjacency_and_missing_files(tmp_path: Path) -> None:
    folder = tmp_path / "2g"
    folder.mkdir()
    with pytest.raises(JobDataError, match="missing"):
        load_job(tmp_path, 1, "2g")
    np.save(folder / "adj_mat_1.npy", np.array([[0.0, 1.0], [1.0, 0.0]]))
    _write_object_npy(folder / "task_duration_1.npy", pickle.dumps(np.empty((), dtype=object), protocol=2))
    with pytest.raises(JobDataError, match="cycle"):
        load_job(tmp_path, 1, "2g")
    with pytest.raises(JobDataError, match="no TPC-H job"):
        load_job(tmp_path, 23, "2g")


def test_arrival_stream() -> None:
    arrivals = generate_arrivals(np.random.default_rng(5), 2000, mean_gap_s=25.0, initial_jobs=3)
    assert [a.arrival_s for a in arrivals[:3]] == [0.0, 0.0, 0.0]
    gaps = np.diff([a.arrival_s for a in arrivals[2:]])
    assert (gaps > 0).all() and abs(gaps.mean() - 25.0) < 2.5
    assert {a.size for a in arrivals} == set(QUERY_SIZES)
    assert {a.query for a in arrivals} == set(range(1, NUM_QUERIES + 1))
    again = generate_arrivals(np.random.default_rng(5), 2000, mean_gap_s=25.0, initial_jobs=3)
    assert again == arrivals
    netllm = generate_arrivals(np.random.default_rng(0), 200)
    assert netllm[0].arrival_s == 0.0 and netllm[1].arrival_s > 0.0 and len(netllm) == 200
    with pytest.raises(ValueError):
        generate_arrivals(np.random.default_rng(0), 3, initial_jobs=4)
