"""What int8 CPU serving costs a NetLLM-ABR checkpoint: validation QoE and speed per quantisation scheme.

Each scheme serves the same checkpoint (LoRA merged) as the `netllm` policy in the chunk-level simulator over
the validation split (traces.splits `valid`, never a test split), greedy, at the checkpoint's serving target:
- none: float32, the reference;
- int8: smoothed activations, dynamic int8 linear layers except the MLP down-projections (the `int8` option);
- int8-full: the same with the down-projections in int8 too;
- int8-plain: dynamic int8 everywhere without smoothing (what the `int8` option did before smoothing);
- noise-1pct (with --noise-control): float32 with 1 % Gaussian noise on the body's weights, to show how
  sensitive the policy itself is to small weight changes.

    .venv/bin/python benchmarks/bench_netllm_quantize.py --checkpoint models/netllm-abr-smollm2 \
        --out runs/quantize --threads 1

Prints per scheme the mean QoE, the share of sessions whose QoE moved, and the wall time per decision (the
simulator's share of it is negligible); writes JSON (per-session QoE included) with --out.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

SCHEMES = ("none", "int8", "int8-full", "int8-plain")


def build(base: Any, scheme: str) -> Any:
    import torch

    from controller.netllm.quantize import SCHEMES as KEEP, quantize_int8

    model = copy.deepcopy(base)
    if scheme == "int8-plain":
        return quantize_int8(model, smooth_alpha=0.0, keep_float=())
    if scheme in KEEP:
        return quantize_int8(model, keep_float=KEEP[scheme])
    if scheme == "noise-1pct":
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in model.backbone.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * p.abs().mean() * 0.01)
    return model


def evaluate(model: Any, serving: dict[str, Any], sessions: list[Any], video: Any) -> tuple[np.ndarray, float]:
    """Per-session mean QoE and seconds per decision."""
    from controller.policies.netllm_policy import NetLLMPolicy
    from emulation.abr_sim import SimConfig, simulate_session

    policy = NetLLMPolicy.from_model(model, serving=serving)
    started, decisions, scores = time.perf_counter(), 0, []
    for s in sessions:
        result = simulate_session(policy, s.trace, video, start_index=s.start_index, config=SimConfig())
        scores.append(result.mean_qoe)
        decisions += len(result.qualities) - 1
    return np.asarray(scores), (time.perf_counter() - started) / max(decisions, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=str(REPO / "models" / "netllm-abr-smollm2"))
    parser.add_argument("--schemes", default=",".join(SCHEMES))
    parser.add_argument("--noise-control", action="store_true", help="also run noise-1pct")
    parser.add_argument("--max-traces", type=int, default=0, help="validation traces (0: all)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--out", default="", help="write the results as JSON to OUT/quantize.json")
    args = parser.parse_args(argv)
    import torch

    from controller.netllm.checkpoint import load_checkpoint
    from training.collect import load_sim_video, split_sessions

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    schemes = args.schemes.split(",") + (["noise-1pct"] if args.noise_control else [])
    unknown = [s for s in schemes if s not in SCHEMES + ("noise-1pct",)]
    if unknown:
        parser.error(f"unknown schemes {unknown}; known: {', '.join(SCHEMES)}")
    base, doc = load_checkpoint(Path(args.checkpoint), device="cpu", merge_lora=True)
    sessions = split_sessions("valid", None, args.max_traces)
    video = load_sim_video(None)
    results: dict[str, Any] = {"checkpoint": args.checkpoint, "sessions": len(sessions),
                               "threads": torch.get_num_threads(), "schemes": {}}
    reference: np.ndarray | None = None
    for scheme in schemes:
        scores, s_per_decision = evaluate(build(base, scheme), doc.get("serving", {}), sessions, video)
        reference = scores if reference is None else reference
        moved = float(np.mean(np.abs(scores - reference) > 1e-9))
        results["schemes"][scheme] = {"mean_qoe": float(scores.mean()), "sessions_changed": moved,
                                      "ms_per_decision": s_per_decision * 1000.0,
                                      "session_qoe": scores.round(6).tolist()}
        print(f"{scheme:>11}: validation QoE {scores.mean():7.4f}   sessions changed {moved:6.1%}   "
              f"{s_per_decision * 1000.0:6.1f} ms/decision", flush=True)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "quantize.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
