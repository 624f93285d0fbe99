"""Pieces every evaluation harness shares (`netllm sim`, `netllm cjs-eval`, ...): running independent units of
work over a process pool with a progress bar, confidence intervals of means, and paired comparisons of two
policies over the same sessions."""

from __future__ import annotations

import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any, Callable, Sequence


def map_units(run_unit: Callable[..., Any], units: Sequence[tuple], initializer: Callable[..., None],
              initargs: tuple, workers: int, desc: str, unit_name: str,
              on_result: Callable[[Any], None] | None = None) -> list[Any]:
    """Run `run_unit(*unit)` for every unit, in `workers` processes (each set up once by
    `initializer(*initargs)`), showing progress. Results come back in completion order, and `on_result`,
    when given, sees each one in this process as it arrives (so a run can write rows that survive a kill).
    A failed unit cancels the units not started yet."""
    from tqdm import tqdm

    bar = tqdm(total=len(units), desc=desc, unit=unit_name, disable=None)
    results: list[Any] = []

    def done(result: Any) -> None:
        results.append(result)
        if on_result is not None:
            on_result(result)
        bar.update()

    try:
        if workers <= 1:
            initializer(*initargs)
            for unit in units:
                done(run_unit(*unit))
        else:
            # "spawn": the parent may already have run torch (policy checks), and forking a process whose torch
            # thread pools are initialised can deadlock the children.
            context = multiprocessing.get_context("spawn")
            threads = max(1, (os.cpu_count() or 1) // workers)
            pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_share_cores,
                                       initargs=(threads, initializer, *initargs))
            try:
                futures = [pool.submit(run_unit, *unit) for unit in units]
                for future in as_completed(futures):
                    done(future.result())
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()
    return results


def _share_cores(threads: int, initializer: Callable[..., None], *initargs: Any) -> None:
    """A pool worker's set-up: at most its share of the cores for torch's intra-op threads (torch-based
    policies would otherwise start one thread per core in every worker and oversubscribe the machine), then
    the harness's own initializer. An explicit OMP_NUM_THREADS wins."""
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    initializer(*initargs)


def mean_ci95(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high): Student-t 95% interval of the mean. A single value has a mean but no interval
    (low and high NaN: one sample says nothing about the spread; a zero-width interval would claim
    certainty); no value has neither."""
    from scipy import stats

    n = len(values)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = math.fsum(values) / n
    if n < 2:
        return mean, math.nan, math.nan
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


@dataclass(frozen=True)
class PairedDifference:
    """A policy against a reference over the same sessions (same trace, same start): per-session QoE
    differences, policy minus reference. Pairing removes the trace-to-trace spread that dominates unpaired
    intervals (on fcc-test a policy's own 95% interval is about +-0.1 wide)."""

    pairs: int
    mean_diff: float
    ci95_low: float
    ci95_high: float
    wins: int
    """Sessions where the policy scored higher than the reference (by more than the tie tolerance)."""
    ties: int
    losses: int
    wilcoxon_p: float
    """Two-sided Wilcoxon signed-rank p-value over the non-tied pairs (1.0 when every pair ties)."""


def paired_difference(values: Sequence[float], reference: Sequence[float],
                      tie_tol: float = 1e-9) -> PairedDifference:
    """Compare `values[i]` with `reference[i]` session by session (equal lengths, at least one pair, every
    value finite: a NaN difference is neither above nor below the tie tolerance, so it would count as a tie;
    drop such sessions first and say so)."""
    from scipy import stats

    if len(values) != len(reference) or not values:
        raise ValueError(f"paired comparison needs equal, non-empty lists ({len(values)} vs {len(reference)})")
    bad = [i for i, (a, b) in enumerate(zip(values, reference))
           if not (math.isfinite(a) and math.isfinite(b))]
    if bad:
        raise ValueError(f"paired comparison needs finite values; pair {bad[0]} is "
                         f"({values[bad[0]]}, {reference[bad[0]]}) ({len(bad)} non-finite pairs)")
    diffs = [float(a) - float(b) for a, b in zip(values, reference)]
    mean, low, high = mean_ci95(diffs)
    wins = sum(d > tie_tol for d in diffs)
    losses = sum(d < -tie_tol for d in diffs)
    untied = [d for d in diffs if abs(d) > tie_tol]
    p_value = float(stats.wilcoxon(untied).pvalue) if untied else 1.0
    return PairedDifference(len(diffs), mean, low, high, wins, len(diffs) - wins - losses, losses, p_value)


def _run_shard(run_unit: Callable[..., Any], initializer: Callable[..., None], initargs: tuple,
               units: Sequence[tuple]) -> list[Any]:
    """One Ray task: set the worker up once, then run its shard's units in order."""
    initializer(*initargs)
    return [run_unit(*unit) for unit in units]


def map_units_ray(run_unit: Callable[..., Any], units: Sequence[tuple], initializer: Callable[..., None],
                  initargs: tuple, address: str, num_cpus: int | None, desc: str,
                  shard_key: Callable[[tuple], Any] | None = None) -> list[Any]:
    """`map_units` over Ray (`netllm.raycluster`; `address` is `local` or a cluster's). Units with the same
    `shard_key` (default: each unit its own key) run in one task; keys are dealt round-robin, in first-seen
    order, into about four shards per cluster CPU. Results come back grouped by shard, not in unit order:
    callers sort them, as they do `map_units`'s completion-order results."""
    from netllm.raycluster import cluster_cpus, ray_session, run_remote

    keys: dict[Any, int] = {}
    for i, unit in enumerate(units):
        keys.setdefault(shard_key(unit) if shard_key else i, len(keys))
    with ray_session(address, num_cpus) as ray:
        shard_count = max(1, min(len(keys), 4 * cluster_cpus(ray)))
        shards: list[list[tuple]] = [[] for _ in range(shard_count)]
        for i, unit in enumerate(units):
            shards[keys[shard_key(unit) if shard_key else i] % shard_count].append(unit)
        tasks = [(run_unit, initializer, initargs, shard) for shard in shards if shard]
        results = run_remote(ray, _run_shard, tasks, desc, "shard")
    return [result for shard in results for result in shard]


def interval_text(low: float | None, high: float | None, unit: str, signed: bool = False,
                  digits: int = 4) -> str:
    """A 95% interval as the commands print it; one `unit` (a trace, a pair, a seed) has none (mean_ci95
    gives NaN ends, which summaries store as null)."""
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return f"[no interval: 1 {unit}]"
    spec = f"{'+' if signed else ''}.{digits}f"
    return f"[{low:{spec}}, {high:{spec}}]"
