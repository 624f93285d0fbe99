"""The project's splits of the ABR reference traces (`<shared data>/abr/traces`).

Why these splits (see the data README): NetLLM's fcc-valid is a subset of fcc-train, and 42 of the 100
fcc-test traces are byte-identical to fcc-train files. So:

- `train`: fcc-train minus every file byte-identical to an fcc-test trace, minus `valid`;
- `valid`: the project's validation split, carved from the same de-duplicated fcc-train: the
  `VALID_FRACTION` of files with the smallest SHA-256 of their file name (deterministic, independent of the
  file system order and of the trace contents); use it for checkpoint selection and tuning;
- `fcc-test`: all 100 (comparable with published numbers); `fcc-test-unseen`: the 58 not in fcc-train;
- `norway-test`: Genet's 310 Norway HSDPA test traces; `norway-test-unseen`: those cut from recordings that
  are not in fcc-train (fcc-train holds 39 whole Norway recordings, and windows of 32 of them are among the
  norway-test traces; a window `X_<offset>` comes from recording `X`).

Duplicates are found by content, not by the names in `fcc-test-in-train.txt` (the tests check that both
agree). Every function returns sorted absolute paths.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from netllm.paths import shared_data_dir

VALID_FRACTION = 0.15
SPLITS: tuple[str, ...] = ("train", "valid", "fcc-test", "fcc-test-unseen", "norway-test",
                          "norway-test-unseen")
TRAIN_DIR, TEST_DIR, NORWAY_DIR = "fcc-train", "fcc-test", "norway-test"


class SplitError(ValueError):
    """The trace folders are missing or not as expected; the message names the path."""


def trace_root(data_dir: Path | None = None) -> Path:
    """`<data>/abr/traces` (data: `NETLLM_DATA` or ../shared/data by default)."""
    root = Path(data_dir) if data_dir is not None else shared_data_dir()
    return root / "abr" / "traces"


def _files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise SplitError(f"{folder}: trace folder not found")
    return sorted((p.resolve() for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")),
                  key=lambda p: p.name)


def trace_digest(path: Path) -> str:
    """SHA-256 of a trace file's bytes: how the splits recognise the same trace under another name."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def name_rank(name: str) -> str:
    """The key that orders files for the validation carve."""
    return hashlib.sha256(name.encode("utf-8")).hexdigest()


def recording_of(norway_trace_name: str) -> str:
    """The recording a norway-test window was cut from (`X_<offset>` -> `X`)."""
    return re.sub(r"_\d+$", "", norway_trace_name)


@lru_cache(maxsize=8)
def _compute(root: Path) -> dict[str, tuple[Path, ...]]:
    train_all = _files(root / TRAIN_DIR)
    test = _files(root / TEST_DIR)
    norway = _files(root / NORWAY_DIR)
    test_digests = {trace_digest(p) for p in test}
    train_digests = {trace_digest(p) for p in train_all}
    candidates = [p for p in train_all if trace_digest(p) not in test_digests]
    n_valid = round(VALID_FRACTION * len(candidates))
    valid = set(sorted(candidates, key=lambda p: name_rank(p.name))[:n_valid])
    train_names = {p.name for p in train_all}
    return {
        "train": tuple(p for p in candidates if p not in valid),
        "valid": tuple(sorted(valid, key=lambda p: p.name)),
        "fcc-test": tuple(test),
        "fcc-test-unseen": tuple(p for p in test if trace_digest(p) not in train_digests),
        "norway-test": tuple(norway),
        "norway-test-unseen": tuple(p for p in norway if recording_of(p.name) not in train_names),
    }


def all_splits(data_dir: Path | None = None) -> dict[str, list[Path]]:
    """Every split by name (see SPLITS)."""
    return {name: list(paths) for name, paths in _compute(trace_root(data_dir).resolve()).items()}


def split_paths(name: str, data_dir: Path | None = None) -> list[Path]:
    """The trace files of one split."""
    if name not in SPLITS:
        raise SplitError(f"unknown split {name!r}; known: {', '.join(SPLITS)}")
    return all_splits(data_dir)[name]


def train_paths(data_dir: Path | None = None) -> list[Path]:
    return split_paths("train", data_dir)


def valid_paths(data_dir: Path | None = None) -> list[Path]:
    return split_paths("valid", data_dir)


def evaluation_paths(name: str = "fcc-test", data_dir: Path | None = None) -> list[Path]:
    if name not in SPLITS[2:]:
        raise SplitError(f"{name!r} is not a test split; test splits: {', '.join(SPLITS[2:])}")
    return split_paths(name, data_dir)


def copies_of_test_traces(paths: Iterable[Path], data_dir: Path | None = None) -> list[tuple[Path, str, Path]]:
    """(path, test folder, test trace) for each of `paths` whose bytes are a test trace's (fcc-test,
    norway-test), whatever its name: training, validation and choices on validation must never see one.
    Checks whichever test folders exist; SplitError only when none does."""
    root = trace_root(data_dir)
    tests: dict[str, tuple[str, Path]] = {}
    folders = [root / name for name in (TEST_DIR, NORWAY_DIR) if (root / name).is_dir()]
    if not folders:
        raise SplitError(f"{root}: neither {TEST_DIR}/ nor {NORWAY_DIR}/ is there to check against")
    for folder in folders:
        for test_path in _files(folder):
            tests.setdefault(trace_digest(test_path), (folder.name, test_path))
    return [(path, *tests[digest]) for path in paths if (digest := trace_digest(path)) in tests]
