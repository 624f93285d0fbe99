"""Synthetic bandwidth traces: stepped, constant, and a seeded Markov random walk.

The Markov generator follows the idea of Pensieve's synthetic traces (a hidden bandwidth state that jumps
between levels, observed with noise) but is this project's own: `states` log-spaced levels between
`min_mbps` and `max_mbps`; every `step_s` the state stays with probability `1 - switch_prob`, otherwise
it moves by a uniformly drawn 1..`max_jump` levels up or down (reflected at the ends); the emitted
bandwidth is the state's level times a Gaussian factor `1 + N(0, noise)`, floored at `min_mbps / 2`.
The same seed always gives the same trace.

`python -m traces.generators stepped --steps 1:20,3:20,0.5:20,2:20 --out t.txt` writes a cooked file
(`make demo` and the fidelity benchmark use this); `constant` and `markov` work alike (see --help).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from traces.bandwidth import BandwidthTrace

MAX_SAMPLES = 1_000_000
"""Most samples a generated trace may have (11.6 days at 1 s): far beyond any session, small in memory."""


def _sample_count(duration_s: float, step_s: float) -> int:
    """Samples of `step_s` covering `duration_s`; ValueError for a duration that is not a usable length."""
    if not (math.isfinite(step_s) and step_s > 0):
        raise ValueError(f"step must be a finite number of seconds > 0, got {step_s}")
    if not (math.isfinite(duration_s) and duration_s >= step_s):
        raise ValueError(f"duration must be a finite number of seconds >= the {step_s:g} s step, "
                         f"got {duration_s}")
    count = int(round(duration_s / step_s))
    if count > MAX_SAMPLES:
        raise ValueError(f"duration {duration_s:g} s is {count} samples of {step_s:g} s; at most "
                         f"{MAX_SAMPLES} are allowed")
    return count


def stepped(steps_s_mbps: Sequence[tuple[float, float]], name: str = "stepped") -> BandwidthTrace:
    """A step function: for each (duration_s, Mbps) in order, that bandwidth for that long, from time 0."""
    if not steps_s_mbps:
        raise ValueError("a stepped trace needs at least one (duration_s, Mbps) step")
    times = [0.0]
    rates_kbps: list[float] = []
    for duration_s, mbps in steps_s_mbps:
        if not (duration_s > 0 and math.isfinite(duration_s)):
            raise ValueError(f"step duration must be a finite number of seconds > 0, got {duration_s}")
        if not (mbps >= 0 and math.isfinite(mbps)):
            raise ValueError(f"step bandwidth must be a finite number of Mbps >= 0, got {mbps}")
        times.append(times[-1] + float(duration_s))
        rates_kbps.append(float(mbps) * 1000.0)
    return BandwidthTrace(name, np.asarray(times), np.asarray([rates_kbps[0], *rates_kbps]))


def constant(mbps: float, duration_s: float = 600.0, step_s: float = 1.0,
             name: str = "constant") -> BandwidthTrace:
    """A flat trace, sampled every `step_s` (so offsets by sample index still mean something)."""
    count = _sample_count(duration_s, step_s)
    return stepped([(step_s, mbps)] * count, name=name)


def markov(seed: int, duration_s: float = 600.0, step_s: float = 1.0, min_mbps: float = 0.3,
           max_mbps: float = 6.0, states: int = 10, switch_prob: float = 0.1, max_jump: int = 2,
           noise: float = 0.1, name: str | None = None) -> BandwidthTrace:
    """A seeded Markov random walk over log-spaced bandwidth levels (module docstring)."""
    if not (0 < min_mbps < max_mbps < math.inf) or states < 2 or not (0 <= switch_prob <= 1) or max_jump < 1:
        raise ValueError("markov: need 0 < min_mbps < max_mbps (finite), states >= 2, 0 <= switch_prob <= 1, "
                         "max_jump >= 1")
    if seed < 0:
        raise ValueError(f"markov: the seed must be >= 0, got {seed}")
    count = max(2, _sample_count(duration_s, step_s))
    rng = np.random.default_rng(seed)
    levels_mbps = np.geomspace(min_mbps, max_mbps, states)
    state = int(rng.integers(states))
    values_mbps = np.empty(count)
    for i in range(count):
        if rng.random() < switch_prob:
            jump = int(rng.integers(1, max_jump + 1)) * (1 if rng.random() < 0.5 else -1)
            state = _reflect(state + jump, states)
        values_mbps[i] = max(min_mbps / 2, levels_mbps[state] * (1.0 + noise * rng.standard_normal()))
    times = np.arange(count + 1) * step_s
    bandwidth_kbps = np.concatenate([[values_mbps[0]], values_mbps]) * 1000.0
    return BandwidthTrace(name or f"markov-seed{seed}", times, bandwidth_kbps)


def _reflect(state: int, states: int) -> int:
    top = states - 1
    while state < 0 or state > top:
        state = -state if state < 0 else 2 * top - state
    return state


def parse_steps(text: str) -> list[tuple[float, float]]:
    """`"Mbps:seconds,Mbps:seconds,..."` -> [(seconds, Mbps), ...]."""
    steps = []
    for part in text.split(","):
        if not part.strip():
            continue
        try:
            mbps, seconds = (float(x) for x in part.split(":"))
        except ValueError:
            raise ValueError(f"bad step {part!r}: expected Mbps:seconds, e.g. 1:20") from None
        steps.append((seconds, mbps))
    return steps


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `netllm gen-trace` (also `python -m traces.generators`)."""
    sub = parser.add_subparsers(dest="kind", required=True)
    p_step = sub.add_parser("stepped", help="piecewise-constant trace")
    p_step.add_argument("--steps", required=True, help="Mbps:seconds,... e.g. 1:20,3:20,0.5:20,2:20")
    p_const = sub.add_parser("constant", help="flat trace")
    p_const.add_argument("--mbps", type=float, required=True)
    p_const.add_argument("--duration-s", type=float, default=600.0)
    p_mark = sub.add_parser("markov", help="seeded Markov random walk")
    p_mark.add_argument("--seed", type=int, required=True)
    p_mark.add_argument("--duration-s", type=float, default=600.0)
    p_mark.add_argument("--min-mbps", type=float, default=0.3)
    p_mark.add_argument("--max-mbps", type=float, default=6.0)
    for p in (p_step, p_const, p_mark):
        p.add_argument("--out", type=Path, required=True, help="cooked trace file to write")


def run_args(ns: argparse.Namespace) -> int:
    from traces.readers import write_cooked

    try:
        if ns.kind == "stepped":
            trace = stepped(parse_steps(ns.steps), name=ns.out.name)
        elif ns.kind == "constant":
            trace = constant(ns.mbps, ns.duration_s, name=ns.out.name)
        else:
            trace = markov(ns.seed, ns.duration_s, min_mbps=ns.min_mbps, max_mbps=ns.max_mbps,
                           name=ns.out.name)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        write_cooked(trace, ns.out)
    except OSError as exc:
        print(f"error: cannot write {ns.out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(f"wrote {ns.out} ({trace.duration_s:g} s, mean {trace.mean_bandwidth_kbps / 1000:.3f} Mbps)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m traces.generators", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
