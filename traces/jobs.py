"""TPC-H job DAGs with measured Spark task durations (Decima's data set), and job arrival streams.

Data layout (one folder per input size: 2g 5g 10g 20g 50g 80g 100g; 22 queries each):
- `adj_mat_Q.npy`: plain float64 square 0/1 matrix, `adj[i, j] == 1` is an edge from stage i (parent) to
  stage j (child); read with `allow_pickle=False`.
- `task_duration_Q.npy`: a PICKLED 0-d object array holding `{stage_index: {"first_wave": {e: [ms...]},
  "rest_wave": {e: [ms...]}, "fresh_durations": {e: [ms...]}}}`, where `e` is the executor count the job ran
  with when the durations were measured (2, 5, 10, 20, 40, 50, 60, 80, 100 for most stages).
  "first_wave": tasks an executor ran as its first task of the stage; "rest_wave": later tasks of the same
  executor on the stage; "fresh_durations": first tasks of executors that had just joined the job (they pay
  the JVM warm-up).
- `stage_id_to_node_idx_map_Q.npy`: a PICKLED 0-d object array `{spark_stage_id: stage_index}`.

The pickled files are never opened with `allow_pickle=True`: `RestrictedUnpickler` admits only the globals a
numpy object array of builtins needs and refuses anything else with an error naming the file and the global.

Conventions taken from Decima (hongzimao/decima-sim, `spark_env/job_generator.py`) and NetLLM's copy of
spark-sched-sim, so that job sizes and durations match the published setting:
- a stage's task count is len(first_wave[e]) + len(rest_wave[e]) at the first recorded executor level (2);
- first-wave durations that also appear among the fresh durations are removed (as a multiset: one removal per
  fresh occurrence), and a level left without first-wave durations borrows those of the nearest lower level;
- durations are converted from milliseconds to seconds.

Arrival streams (`generate_arrivals`): `initial_jobs` jobs at time zero, then Poisson arrivals (exponential
gaps of mean `mean_gap_s`) until `num_jobs` jobs in all; each job's query is uniform over 1..22 and its size
uniform over the seven sizes (independently). With `initial_jobs=1` and 200 jobs this is NetLLM's setting
(spark-sched-sim's `job_arrival_cap=200`: job 0 at t=0, the next 199 after exponential gaps); Decima's own
paper setting used 10 initial jobs plus a stream.
"""

from __future__ import annotations

import io
import pickle
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npy_format

from netllm.paths import shared_data_dir

QUERY_SIZES: tuple[str, ...] = ("2g", "5g", "10g", "20g", "50g", "80g", "100g")
NUM_QUERIES: int = 22
WAVES: tuple[str, ...] = ("first_wave", "rest_wave", "fresh_durations")


class JobDataError(ValueError):
    """Malformed or refused job data; the message names the file (and the stage/field where it applies)."""


def default_tpch_dir() -> Path:
    """Where the TPC-H DAGs live by default: `<shared data>/cjs/tpch`."""
    return shared_data_dir() / "cjs" / "tpch"


# ------------------------------------------------------------------------------------- restricted unpickling
_NUMPY_GLOBALS: frozenset[tuple[str, str]] = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
})
_BUILTIN_NAMES: frozenset[str] = frozenset(
    {"dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "bool", "str", "bytes"})


def _admitted(module: str, name: str) -> Any:
    """The object for an admitted global, or None. numpy 2 moved `numpy.core` to `numpy._core`; the old
    path is resolved here without importing the deprecated shim."""
    if (module, name) in _NUMPY_GLOBALS:
        if module == "numpy":
            return getattr(np, name)
        from numpy._core import multiarray  # numpy >= 2

        return getattr(multiarray, name)
    if (module, name) == ("_codecs", "encode"):  # how Python 3 writes bytes (array buffers) at protocol 2
        import _codecs

        return _codecs.encode
    if module in ("builtins", "__builtin__") and name in _BUILTIN_NAMES:
        import builtins

        return getattr(builtins, name)
    return None


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles numpy object arrays of dicts/lists/numbers and nothing else.

    Every global the stream names goes through `find_class`; anything not on the allow-list raises
    JobDataError naming the file and the refused global, before it is imported or called.
    """

    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        super().__init__(file, encoding="latin1")  # the data were pickled by Python 2
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        obj = _admitted(module, name)
        if obj is None:
            raise JobDataError(f"{self.source}: refused pickled global {module}.{name} (only numpy arrays, "
                               "dtypes, scalars and builtin containers/numbers are allowed)")
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise JobDataError(f"{self.source}: refused persistent id {pid!r} in pickle")


def load_pickled_npy(path: Path) -> Any:
    """The object held by a pickled 0-d object `.npy` file, unpickled with `RestrictedUnpickler`."""
    with open(path, "rb") as fp:
        try:
            version = npy_format.read_magic(fp)
            if version == (1, 0):
                shape, _, dtype = npy_format.read_array_header_1_0(fp)
            elif version == (2, 0):
                shape, _, dtype = npy_format.read_array_header_2_0(fp)
            else:
                raise JobDataError(f"{path}: unsupported .npy version {version}")
        except ValueError as exc:
            if isinstance(exc, JobDataError):
                raise
            raise JobDataError(f"{path}: not a .npy file ({exc})") from None
        if not dtype.hasobject:
            raise JobDataError(f"{path}: expected a pickled object array, found dtype {dtype}")
        try:
            array = RestrictedUnpickler(fp, str(path)).load()
        except JobDataError:
            raise
        except Exception as exc:  # truncated or corrupt stream
            raise JobDataError(f"{path}: cannot unpickle: {type(exc).__name__}: {exc}") from None
    if not isinstance(array, np.ndarray) or array.shape != shape or array.dtype != object:
        raise JobDataError(f"{path}: pickle does not hold the {shape} object array its header announces")
    return array.item() if array.shape == () else array


def load_adjacency(path: Path) -> np.ndarray:
    """A square 0/1 adjacency matrix as bool (adj[i, j]: edge parent i -> child j), acyclic."""
    try:
        adj = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise JobDataError(f"{path}: cannot read adjacency matrix: {exc}") from None
    if adj.ndim != 2 or adj.shape[0] != adj.shape[1] or adj.shape[0] == 0:
        raise JobDataError(f"{path}: adjacency must be a non-empty square matrix, got shape {adj.shape}")
    if not np.isin(adj, (0, 1)).all():
        raise JobDataError(f"{path}: adjacency entries must be 0 or 1")
    adj = adj.astype(bool)
    if np.diag(adj).any() or not _is_acyclic(adj):
        raise JobDataError(f"{path}: the stage graph has a cycle")
    return adj


def _is_acyclic(adj: np.ndarray) -> bool:
    indegree = adj.sum(axis=0).astype(int)
    frontier = [int(i) for i in np.flatnonzero(indegree == 0)]
    seen = 0
    while frontier:
        node = frontier.pop()
        seen += 1
        for child in np.flatnonzero(adj[node]):
            indegree[child] -= 1
            if indegree[child] == 0:
                frontier.append(int(child))
    return seen == adj.shape[0]


# ----------------------------------------------------------------------------------------------- job types
Durations = dict[int, tuple[float, ...]]
"""executor level -> task durations in seconds."""


@dataclass(frozen=True)
class StageSpec:
    """One stage of a query DAG with its measured task durations (seconds, Decima pre-processing applied)."""
    index: int
    num_tasks: int
    parents: tuple[int, ...]
    children: tuple[int, ...]
    first_wave: Durations = field(repr=False)
    rest_wave: Durations = field(repr=False)
    fresh: Durations = field(repr=False)
    mean_duration_s: float = 0.0
    """Mean over every measured duration of the stage (the simulator's initial duration estimate)."""

    @property
    def levels(self) -> tuple[int, ...]:
        return tuple(sorted(self.first_wave))


@dataclass(frozen=True)
class JobDag:
    """A TPC-H query at one input size: stages, edges and measured durations."""
    query: int
    size: str
    stages: tuple[StageSpec, ...]
    adjacency: np.ndarray = field(repr=False)
    """bool [stages, stages], adjacency[i, j]: stage j depends on stage i."""
    spark_stage_ids: dict[int, int] = field(default_factory=dict, repr=False)
    """Spark stage id -> stage index, as recorded with the measurements."""

    @property
    def name(self) -> str:
        return f"tpch-{self.size}-q{self.query}"

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    @property
    def num_tasks(self) -> int:
        return sum(s.num_tasks for s in self.stages)

    def total_work_s(self) -> float:
        """Rough serial work: sum over stages of tasks x mean duration."""
        return sum(s.num_tasks * s.mean_duration_s for s in self.stages)


def _durations(raw: Any, where: str) -> Durations:
    if not isinstance(raw, dict) or not raw:
        raise JobDataError(f"{where}: expected a non-empty dict executor_level -> list of durations")
    out: Durations = {}
    for level, values in raw.items():
        if isinstance(level, bool) or not isinstance(level, int) or level < 1:
            raise JobDataError(f"{where}: executor level {level!r} is not a positive integer")
        if not isinstance(values, list):
            raise JobDataError(f"{where}[{level}]: expected a list of durations, got {type(values).__name__}")
        try:
            arr = np.array(values)  # ints -> int64, floats -> float64; bools, strings, objects: other kinds
        except (OverflowError, ValueError):
            arr = np.array([], dtype=object)
        if arr.ndim != 1 or arr.dtype.kind not in "iuf" or not (np.isfinite(arr).all() and (arr >= 0).all()):
            raise JobDataError(f"{where}[{level}]: durations must be finite non-negative numbers")
        out[level] = tuple((arr / 1000.0).tolist())
    return out


def _clean_first_wave(first: Durations, fresh: Durations) -> Durations:
    """Decima's pre-processing: drop first-wave durations also found among the fresh ones (multiset
    difference), then give every level without first-wave data the nearest lower level's."""
    clean: Durations = {}
    for level, values in first.items():
        fresh_left = Counter(fresh.get(level, ()))
        kept = []
        for v in values:
            if fresh_left[v] > 0:
                fresh_left[v] -= 1
            else:
                kept.append(v)
        clean[level] = tuple(kept)
    previous: tuple[float, ...] = ()
    for level in sorted(clean):
        if not clean[level]:
            clean[level] = previous
        previous = clean[level]
    return clean


def _stage_spec(index: int, raw: Any, adj: np.ndarray, where: str) -> StageSpec:
    if not isinstance(raw, dict) or set(raw) != set(WAVES):
        raise JobDataError(f"{where}: expected a dict with keys {list(WAVES)}")
    waves = {w: _durations(raw[w], f"{where}.{w}") for w in WAVES}
    levels = set(waves["first_wave"])
    if set(waves["rest_wave"]) != levels or set(waves["fresh_durations"]) != levels:
        raise JobDataError(f"{where}: the three waves must cover the same executor levels")
    count_level = min(levels)
    num_tasks = len(waves["first_wave"][count_level]) + len(waves["rest_wave"][count_level])
    if num_tasks < 1:
        raise JobDataError(f"{where}: stage has no tasks")
    # The stage's mean task duration (its `task_duration_s` before any task has run) averages the raw waves.
    # Decima averages after cleaning the first wave, which differs by more than 1 % on about 30 % of stages;
    # the shipped decima-cjs and netllm-cjs checkpoints were trained on this definition, so it stays.
    every = [v for w in WAVES for vals in waves[w].values() for v in vals]
    first = _clean_first_wave(waves["first_wave"], waves["fresh_durations"])
    for level in levels:
        if not first[level] and not waves["fresh_durations"][level]:
            raise JobDataError(f"{where}: level {level} has neither first-wave nor fresh durations")
    return StageSpec(index=index, num_tasks=num_tasks,
                     parents=tuple(int(i) for i in np.flatnonzero(adj[:, index])),
                     children=tuple(int(i) for i in np.flatnonzero(adj[index])),
                     first_wave=first, rest_wave=waves["rest_wave"], fresh=waves["fresh_durations"],
                     mean_duration_s=float(np.mean(every)))


def load_job(tpch_dir: Path, query: int, size: str) -> JobDag:
    """One query DAG: `tpch_dir/size/{adj_mat,task_duration,stage_id_to_node_idx_map}_query.npy`."""
    if size not in QUERY_SIZES or not 1 <= query <= NUM_QUERIES:
        raise JobDataError(f"no TPC-H job {size} q{query} (sizes {QUERY_SIZES}, queries 1..{NUM_QUERIES})")
    folder = Path(tpch_dir) / size
    adj_path = folder / f"adj_mat_{query}.npy"
    dur_path = folder / f"task_duration_{query}.npy"
    map_path = folder / f"stage_id_to_node_idx_map_{query}.npy"
    for path in (adj_path, dur_path):
        if not path.is_file():
            raise JobDataError(f"{path}: missing (expected Decima's TPC-H layout under {tpch_dir})")
    adj = load_adjacency(adj_path)
    raw = load_pickled_npy(dur_path)
    if not isinstance(raw, dict) or sorted(raw) != list(range(adj.shape[0])):
        raise JobDataError(f"{dur_path}: expected a dict keyed by stage index 0..{adj.shape[0] - 1}")
    stages = tuple(_stage_spec(i, raw[i], adj, f"{dur_path} stage {i}") for i in range(adj.shape[0]))
    spark_ids: dict[int, int] = {}
    if map_path.is_file():
        mapping = load_pickled_npy(map_path)
        if not isinstance(mapping, dict) or not all(
                isinstance(k, int) and isinstance(v, int) for k, v in mapping.items()):
            raise JobDataError(f"{map_path}: expected a dict of int -> int")
        spark_ids = dict(mapping)
    return JobDag(query=query, size=size, stages=stages, adjacency=adj, spark_stage_ids=spark_ids)


class JobCatalog:
    """Loads query DAGs on first use and keeps them (they are immutable)."""

    def __init__(self, tpch_dir: Path | None = None) -> None:
        self.tpch_dir = Path(tpch_dir) if tpch_dir is not None else default_tpch_dir()
        if not self.tpch_dir.is_dir():
            raise JobDataError(f"{self.tpch_dir}: TPC-H job folder not found")
        self._jobs: dict[tuple[int, str], JobDag] = {}

    def get(self, query: int, size: str) -> JobDag:
        key = (query, size)
        job = self._jobs.get(key)
        if job is None:
            job = self._jobs[key] = load_job(self.tpch_dir, query, size)
        return job

    def all_jobs(self) -> list[JobDag]:
        return [self.get(q, s) for s in QUERY_SIZES for q in range(1, NUM_QUERIES + 1)]


# ------------------------------------------------------------------------------------------ arrival streams
@dataclass(frozen=True)
class JobArrival:
    job_id: int
    arrival_s: float
    query: int
    size: str


def generate_arrivals(rng: np.random.Generator, num_jobs: int, mean_gap_s: float = 25.0,
                      initial_jobs: int = 1, sizes: tuple[str, ...] = QUERY_SIZES,
                      num_queries: int = NUM_QUERIES) -> list[JobArrival]:
    """`initial_jobs` jobs at t=0, then exponential gaps of mean `mean_gap_s` up to `num_jobs` jobs; each job
    uniform over queries 1..num_queries and (independently) over `sizes`. Draw order per job: its gap
    (streamed jobs only), its query, its size."""
    if num_jobs < 1 or not 0 <= initial_jobs <= num_jobs:
        raise ValueError("need num_jobs >= 1 and 0 <= initial_jobs <= num_jobs")
    if not mean_gap_s > 0 or not sizes or num_queries < 1:
        raise ValueError("need mean_gap_s > 0, at least one size and one query")
    arrivals: list[JobArrival] = []
    t = 0.0
    for job_id in range(num_jobs):
        if job_id >= initial_jobs:
            t += float(rng.exponential(mean_gap_s))
        query = int(rng.integers(1, num_queries + 1))
        size = sizes[int(rng.integers(len(sizes)))]
        arrivals.append(JobArrival(job_id, t, query, size))
    return arrivals
