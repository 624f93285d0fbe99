"""Decision latency of the `netllm` policy: full recompute of the context window vs. KV-cache decoding.

Each decision is one `select_quality` call (feature extraction, return-to-go update, the LLM, the head),
over whole sessions of `--chunks` decisions with a `--window`-step context, LoRA merged into the body as in
serving (`--window`: the served context; the issue's benchmark is the 20-step one). Three schemes are
timed:
- recompute: the whole window re-encoded at every decision;
- kv: incremental decoding, decisions back to back (a decision that follows a window refresh waits for it);
- kv-paced: the same with `--gap-ms` between decisions, as in a live session where a chunk downloads between
  two requests (the refresh runs in that gap).
kv decoding of Llama bodies goes through controller.netllm.llama_decode unless `--transformers-forward`.

    .venv/bin/python benchmarks/bench_netllm_latency.py                      # SmolLM2, CPU, untrained weights
    .venv/bin/python benchmarks/bench_netllm_latency.py --checkpoint models/netllm-abr-smollm2
    .venv/bin/python benchmarks/bench_netllm_latency.py --backbone llama2-7b-shape --dtype bf16 --device cuda

The weights' values do not change the timing, so without --checkpoint the model is built untrained on
`--backbone` (llama2-7b-shape: random weights of Llama-2-7B's shape, built from a config, nothing downloaded).
Prints p50/p99/mean per scheme and writes JSON with --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from controller.netllm.quantize import synthetic_session  # noqa: E402

def build_model(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    from controller.netllm.backbone import BackboneSpec, load_backbone
    from controller.netllm.checkpoint import load_checkpoint
    from controller.netllm.model import NetLLMConfig
    from controller.netllm.model import build_model as build

    if args.checkpoint:
        return load_checkpoint(Path(args.checkpoint), device=args.device, dtype=args.dtype, merge_lora=True)
    started = time.perf_counter()
    body, info = load_backbone(BackboneSpec.parse(args.backbone), device=args.device, dtype=args.dtype)
    model = build(NetLLMConfig(hidden_size=info.hidden_size, window=args.window or 20), body)
    model.backbone = model.backbone.merge_and_unload()
    model.requires_grad_(False)
    model.eval()
    return model, {"backbone": info.to_json(), "load_s": time.perf_counter() - started}


def time_scheme(model: Any, mode: str, sessions: list[list[Any]], gap_s: float,
                decisions: list[int] | None = None, lean: bool = True,
                window: int | None = None) -> list[float]:
    """Latency (ms) of every decision with `window` steps of context (None: the model's); the levels chosen
    are appended to `decisions` when given."""
    import torch

    from controller.policies.netllm_policy import NetLLMPolicy

    policy = NetLLMPolicy.from_model(model, inference=mode, lean=lean, window=window)
    cuda = next(model.parameters()).device.type == "cuda"
    latencies = []
    for session in sessions:
        policy.reset()
        for obs in session:
            started = time.perf_counter()
            level = policy.select_quality(obs)
            if cuda:
                torch.cuda.synchronize()
            latencies.append((time.perf_counter() - started) * 1000.0)
            if decisions is not None:
                decisions.append(level)
            if gap_s > 0:
                time.sleep(gap_s)
    return latencies


def int8_agreement(reference: Any, sessions: list[list[Any]], int8_levels: list[int],
                   window: int | None = None) -> float:
    """Share of the int8 model's decisions that the unquantised `reference` takes on the same observations:
    quantisation changes hidden states, and what matters is whether it changes answers."""
    levels: list[int] = []
    time_scheme(reference, "kv", sessions, 0.0, levels, window=window)
    return float(np.mean(np.asarray(levels) == np.asarray(int8_levels)))


def stats(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
            "mean_ms": float(a.mean()), "max_ms": float(a.max()), "decisions": int(a.size)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="smollm2",
                        help="smollm2, tiny, llama2-7b-shape or a model folder")
    parser.add_argument("--checkpoint", default="",
                        help="time a trained checkpoint instead of an untrained model")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", help="auto, fp32, bf16, fp16")
    parser.add_argument("--quantize", default="none",
                        help="none or a CPU serving scheme of controller.netllm.quantize (int8, int8-full, ...)")
    parser.add_argument("--smooth-alpha", type=float, default=None,
                        help="int8 activation smoothing strength (default: the serving default; 0: off)")
    parser.add_argument("--window", type=int, default=0,
                        help="context steps (0: 20, or with --checkpoint its trained window; a checkpoint "
                             "can be timed at a shorter served window, e.g. its serving.context_steps)")
    parser.add_argument("--sessions", type=int, default=3)
    parser.add_argument("--chunks", type=int, default=47, help="decisions per session")
    parser.add_argument("--gap-ms", type=float, default=300.0, help="pause between decisions for kv-paced")
    parser.add_argument("--schemes", default="recompute,kv,kv-paced")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--transformers-forward", action="store_true",
                        help="kv schemes through transformers' generic forward instead of the lean Llama decoder")
    parser.add_argument("--out", default="", help="write the results as JSON here")
    args = parser.parse_args(argv)
    lean = not args.transformers_forward
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    model, meta = build_model(args)
    reference = None
    if args.quantize != "none":
        import copy

        import dataclasses

        from controller.netllm.quantize import SCHEMES, quantize_int8

        reference = copy.deepcopy(model)
        quant = SCHEMES[args.quantize]
        if args.smooth_alpha is not None:
            quant = dataclasses.replace(quant, smooth_alpha=args.smooth_alpha)
        model = quantize_int8(model, quant)
    sessions = [synthetic_session(args.chunks, seed) for seed in range(args.sessions)]
    window = args.window or model.cfg.window
    time_scheme(model, "kv", [sessions[0][:3]], 0.0, lean=lean, window=window)  # warm-up (allocator, kernels)
    results: dict[str, Any] = {
        "device": str(next(model.parameters()).device), "threads": torch.get_num_threads(),
        "quantize": args.quantize, "window": window, "lean_decoder": lean,
        "backbone": meta.get("backbone", meta.get("backbone_loaded")), "schemes": {}}
    levels: dict[str, list[int]] = {}
    for scheme in args.schemes.split(","):
        mode, gap = ("kv", args.gap_ms / 1000.0) if scheme == "kv-paced" else (scheme, 0.0)
        s = stats(time_scheme(model, mode, sessions, gap, levels.setdefault(scheme, []), lean, window))
        results["schemes"][scheme] = s
        print(f"{scheme:>10}: p50 {s['p50_ms']:8.1f} ms   p99 {s['p99_ms']:8.1f} ms   "
              f"mean {s['mean_ms']:8.1f} ms   ({s['decisions']} decisions)", flush=True)
    kv_levels = levels.get("kv") or levels.get("kv-paced")
    if reference is not None and kv_levels:
        results["int8_decision_agreement"] = int8_agreement(reference, sessions, kv_levels, window)
        print(f"int8 vs unquantised: {results['int8_decision_agreement']:.1%} of kv decisions identical")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
