"""What int8 CPU serving costs a NetLLM-ABR checkpoint: validation QoE and speed per quantisation scheme.

Each scheme serves the same checkpoint (LoRA merged) as the `netllm` policy in the chunk-level simulator over
the validation split (traces.splits `valid`, never a test split), greedy, at the checkpoint's serving target:
- none: float32, the reference;
- int8: smoothed activations, dynamic int8 linear layers, the MLP down-projections in float32;
- int8-split: the same with the down-projections int8 too, except their outlier input channels;
- int8-full: smoothed, every linear layer int8;
- int8-plain: dynamic int8 everywhere without smoothing;
- noise-1pct (with --noise-control): float32 with 1 % Gaussian noise on the body's weights, to show how
  sensitive the policy itself is to small weight changes.

    .venv/bin/python benchmarks/bench_netllm_quantize.py --checkpoint models/netllm-abr-smollm2 \
        --out runs/quantize --threads 1

Two measures per scheme, because they answer different questions:
- closed loop: mean QoE of the sessions, the share of sessions whose QoE moved, and the wall time per decision
  (the simulator's share of it is negligible). One changed decision changes every later observation, so a
  few percent of flipped decisions move the mean a long way in either direction (see noise-1pct);
- teacher-forced (low noise): robustMPC plays the same validation sessions; every scheme scores the levels of
  each step of those episodes (20-step windows, return-to-go from the episode), and we report the mean KL
  divergence from float32's level distribution and the share of steps where the greedy level is float32's.
Writes JSON (per-session QoE included) with --out.
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

SCHEMES = ("none", "int8", "int8-split", "int8-full", "int8-plain")


def build(base: Any, scheme: str) -> Any:
    import torch

    from controller.netllm.quantize import SCHEMES as INT8, quantize_int8

    model = copy.deepcopy(base)
    if scheme in INT8:
        return quantize_int8(model, scheme)
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


def teacher_forced_batch(sessions: list[Any], video: Any, model: Any) -> dict[str, Any]:
    """Every 20-step window of robustMPC's episodes on `sessions`, as model inputs and a mask."""
    import torch

    from training.collect import collect_pool
    from training.pool import WindowSampler, iter_windows

    pool, _ = collect_pool(sessions, ["robustmpc"], video, noise=False)
    spans = list(iter_windows(pool.episode_bounds(), model.cfg.window))
    batch = {k: torch.from_numpy(v) for k, v in
             WindowSampler(pool, model.cfg.window, model.cfg.return_scale).gather(spans).items()}
    batch["timesteps"] = batch["timesteps"].clamp_max(model.cfg.max_timestep - 1)
    return batch


def level_log_probs(model: Any, batch: dict[str, Any], micro_batch: int = 8) -> Any:
    import torch

    parts = []
    with torch.inference_mode():
        for i in range(0, len(batch["mask"]), micro_batch):
            part = {k: v[i:i + micro_batch] for k, v in batch.items()}
            logits = model(part["returns"], part["states"], part["actions"], part["timesteps"])
            parts.append(logits[part["mask"]].log_softmax(-1))
    return torch.cat(parts)


def fidelity(reference: Any, candidate: Any) -> dict[str, float]:
    """Mean KL(reference || candidate) per step and the share of steps with the same greedy level."""
    kl = (reference.exp() * (reference - candidate)).sum(-1).mean()
    same = (reference.argmax(-1) == candidate.argmax(-1)).float().mean()
    return {"teacher_forced_kl": float(kl), "teacher_forced_same_level": float(same)}


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
    batch = teacher_forced_batch(sessions, video, base)
    reference_lp = level_log_probs(base.eval(), batch)
    results["teacher_forced_steps"] = int(batch["mask"].sum())
    reference: np.ndarray | None = None
    for scheme in schemes:
        model = build(base, scheme)
        close = fidelity(reference_lp, level_log_probs(model, batch))
        scores, s_per_decision = evaluate(model, doc.get("serving", {}), sessions, video)
        reference = scores if reference is None else reference
        moved = float(np.mean(np.abs(scores - reference) > 1e-9))
        results["schemes"][scheme] = {"mean_qoe": float(scores.mean()), "sessions_changed": moved,
                                      "ms_per_decision": s_per_decision * 1000.0, **close,
                                      "session_qoe": scores.round(6).tolist()}
        print(f"{scheme:>11}: validation QoE {scores.mean():7.4f}   sessions changed {moved:6.1%}   "
              f"{s_per_decision * 1000.0:6.1f} ms/decision   teacher-forced KL "
              f"{close['teacher_forced_kl']:.4f}, same level {close['teacher_forced_same_level']:6.1%}", flush=True)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "quantize.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
