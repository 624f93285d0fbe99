"""LoRA vs. full fine-tuning of the same NetLLM-ABR model: time per optimizer step and peak memory.

Each mode runs in its own child process so that peak memory is its own: peak RSS (getrusage) and the RSS
growth over the loaded model (gradients + AdamW moments + activations); on CUDA also the allocator's peak.
Batches are real windows: a small pool collected by BBA and rate-based in the simulator over synthetic
Markov traces and a synthetic video (the timing does not depend on which pool).

    .venv/bin/python benchmarks/bench_lora_vs_full.py                  # SmolLM2 on CPU, 3 timed steps each
    .venv/bin/python benchmarks/bench_lora_vs_full.py --backbone tiny --steps 5
    .venv/bin/python benchmarks/bench_lora_vs_full.py --device cuda --micro-batch-size 16
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MODES = ("lora", "full")


def rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def small_pool() -> Any:
    import numpy as np

    from netllm.video import PENSIEVE_LADDER_KBPS, Video
    from traces.generators import markov
    from training.collect import Session, collect_pool

    rng = np.random.default_rng(0)
    ladder = np.asarray(PENSIEVE_LADDER_KBPS, dtype=np.float64)
    sizes = (ladder[:, None] * 500 * rng.uniform(0.85, 1.15, size=(6, 48))).astype(np.int64)
    video = Video(tuple(float(x) for x in ladder), sizes, 4.0, "synthetic")
    sessions = [Session(markov(seed, duration_s=600.0), 1) for seed in range(4)]
    pool, _ = collect_pool(sessions, ["bba", "rb"], video, repeats=1)
    return pool


def child(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from controller.netllm.backbone import BackboneSpec, load_backbone
    from controller.netllm.model import NetLLMConfig, build_model
    from training.pool import WindowSampler
    from training.trainer import accumulated_step, make_adamw, to_device

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    body, info = load_backbone(BackboneSpec.parse(args.backbone), device=args.device, dtype=args.dtype)
    cfg = NetLLMConfig(hidden_size=info.hidden_size, window=args.window, finetune=args.mode)
    model = build_model(cfg, body)
    model.train()
    device = next(model.parameters()).device
    sampler = WindowSampler(small_pool(), args.window, 50.0, seed=0)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_adamw(model, 1e-4, 1e-4)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base_rss = rss_mib()
    base_alloc = torch.cuda.memory_allocated() / 2**20 if cuda else 0.0
    times = []
    for step in range(args.steps + 1):  # the first step warms up (allocations, kernels)
        batches = [to_device(sampler.sample(args.micro_batch_size), device) for _ in range(args.grad_accum)]
        started = time.perf_counter()
        accumulated_step(batches, model.loss, optimizer, params, 1e-4, 1.0)
        if cuda:
            torch.cuda.synchronize()
        if step > 0:
            times.append(time.perf_counter() - started)
    trainable, total = model.trainable_parameters()
    result = {"mode": args.mode, "backbone": info.kind, "device": str(device), "dtype": info.dtype,
              "trainable_parameters": trainable, "total_parameters": total,
              "trainable_fraction": trainable / total, "s_per_optimizer_step": sum(times) / len(times),
              "micro_batch_size": args.micro_batch_size, "grad_accum": args.grad_accum, "window": args.window,
              "model_rss_mib": base_rss, "peak_rss_mib": peak_rss_mib(), "training_rss_growth_mib":
              peak_rss_mib() - base_rss, "threads": torch.get_num_threads()}
    if cuda:
        result["cuda_model_mib"] = base_alloc
        result["cuda_peak_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="smollm2")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--window", type=int, default=20)
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps per mode")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)  # child process
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    if args.mode:
        print(json.dumps(child(args)))
        return 0
    results = []
    for mode in args.modes.split(","):
        cmd = [sys.executable, __file__, "--mode", mode] + [a for a in (argv or sys.argv[1:])]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return proc.returncode
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(r)
        extra = (f"  cuda peak {r['cuda_peak_allocated_mib']:.0f} MiB (model {r['cuda_model_mib']:.0f})"
                 if "cuda_peak_allocated_mib" in r else "")
        print(f"{mode:>5}: {r['s_per_optimizer_step']:.2f} s/step  trainable {r['trainable_parameters']:,} "
              f"({100 * r['trainable_fraction']:.2f} %)  peak RSS {r['peak_rss_mib']:.0f} MiB "
              f"(+{r['training_rss_growth_mib']:.0f} over the loaded model){extra}", flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
