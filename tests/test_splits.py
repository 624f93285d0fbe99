"""The project's trace splits: counts, disjointness, no test trace in train/valid, determinism, CLI."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest

from traces.splits import SPLITS, SplitError, all_splits, evaluation_paths, recording_of, split_paths


def _digest(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_split_counts_and_disjointness(shared_data):
    s = all_splits(shared_data)
    counts = {k: len(v) for k, v in s.items()}
    assert counts == {"train": 164, "valid": 29, "fcc-test": 100, "fcc-test-unseen": 58, "norway-test": 310,
                      "norway-test-unseen": 247}
    train, valid = set(s["train"]), set(s["valid"])
    assert not train & valid
    assert all(p.parent.name == "fcc-train" for p in train | valid)
    test_digests = {_digest(p) for p in s["fcc-test"] + s["norway-test"]}
    assert not {_digest(p) for p in train | valid} & test_digests
    for name, paths in s.items():
        assert paths == sorted(paths, key=lambda p: p.name) and len(set(paths)) == len(paths), name


def test_unseen_test_sets_match_the_readme_lists(shared_data):
    s = all_splits(shared_data)
    text = (shared_data / "abr" / "fcc-test-in-train.txt").read_text()
    listed = {line.strip() for line in text.splitlines() if line.strip()}
    assert {p.name for p in s["fcc-test"]} - {p.name for p in s["fcc-test-unseen"]} == listed
    train_names = {p.name for p in (shared_data / "abr" / "traces" / "fcc-train").iterdir()}
    assert all(recording_of(p.name) not in train_names for p in s["norway-test-unseen"])
    assert recording_of("bus.x.log_320") == "bus.x.log"


def test_fcc_valid_is_not_used_and_validation_is_deterministic(shared_data):
    valid = split_paths("valid", shared_data)
    assert valid == split_paths("valid", shared_data)
    assert all("fcc-valid" not in str(p) for name in SPLITS for p in split_paths(name, shared_data))
    with pytest.raises(SplitError):
        split_paths("fcc-valid", shared_data)
    with pytest.raises(SplitError):
        evaluation_paths("train", shared_data)


def test_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(SplitError, match="fcc-train"):
        all_splits(tmp_path)


def test_splits_command_writes_json_lists(shared_data, tmp_path):
    out = tmp_path / "splits"
    proc = subprocess.run([sys.executable, "-m", "netllm", "splits", "--out", str(out),
                           "--data", str(shared_data)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train"] == 164 and summary["fcc_test_in_train"] == 42
    for name in SPLITS:
        paths = json.loads((out / f"{name}.json").read_text())
        assert paths == [str(p) for p in split_paths(name, shared_data)]
