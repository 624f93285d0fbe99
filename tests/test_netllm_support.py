"""Small real inputs shared by the NetLLM tests: a synthetic 6-level video, Markov traces, a pool collected by
real baselines in the real simulator, and a tiny random-Llama NetLLM model/checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from netllm.video import PENSIEVE_LADDER_KBPS, Video

CHUNKS = 24


def synthetic_video(chunks: int = CHUNKS, seed: int = 0) -> Video:
    """Pensieve's ladder, 4 s chunks whose sizes vary +-15 % around the nominal bitrate."""
    rng = np.random.default_rng(seed)
    ladder = np.asarray(PENSIEVE_LADDER_KBPS, dtype=np.float64)
    nominal = ladder[:, None] * 1000 / 8 * 4.0
    sizes = (nominal * rng.uniform(0.85, 1.15, size=(len(ladder), chunks))).astype(np.int64)
    return Video(tuple(float(x) for x in ladder), sizes, 4.0, "synthetic")


def synthetic_sessions(count: int = 3, seed: int = 0) -> list[Any]:
    from traces.generators import markov
    from training.collect import Session

    return [Session(markov(seed + i, duration_s=400.0, min_mbps=0.3, max_mbps=5.0), 1) for i in range(count)]


def small_pool(policies: tuple[str, ...] = ("bba", "rb"), traces: int = 3, repeats: int = 2,
               seed: int = 0) -> Any:
    from training.collect import collect_pool

    pool, _ = collect_pool(synthetic_sessions(traces, seed), list(policies), synthetic_video(),
                           repeats=repeats, noise=True, seed=seed)
    return pool


def tiny_model(finetune: str = "lora", window: int = 6, seed: int = 0) -> tuple[Any, Any]:
    from controller.netllm.backbone import BackboneSpec, load_backbone
    from controller.netllm.model import NetLLMConfig, build_model

    torch.manual_seed(seed)
    body, info = load_backbone(BackboneSpec("tiny"), device="cpu")
    cfg = NetLLMConfig(hidden_size=info.hidden_size, window=window, conv_channels=8, finetune=finetune,
                       lora_dropout=0.0)
    return build_model(cfg, body), info


def tiny_checkpoint(folder: Path, storage_dtype: str = "float32", window: int = 6) -> Path:
    from controller.netllm.checkpoint import save_checkpoint

    model, info = tiny_model(window=window)
    with torch.no_grad():  # non-zero LoRA B so that the adapter matters in round trips
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return save_checkpoint(model, folder, info.to_json(), storage_dtype=storage_dtype,
                           serving={"target_return_per_chunk": 1.0, "max_trained_timestep": CHUNKS - 1})


def random_batch(batch: int, steps: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Windows of plausible observation rows (physical units) for forward passes."""
    pool = small_pool(traces=1, repeats=1, seed=seed)
    from training.pool import WindowSampler

    sampler = WindowSampler(pool, steps, 50.0, seed=seed)
    return {k: torch.from_numpy(v) for k, v in sampler.sample(batch).items()}


def test_support_pool_is_real_simulator_output() -> None:
    pool = small_pool(traces=2, repeats=1)
    # 2 traces x 2 policies x 1 repeat; chunk 0 is not a decision
    assert pool.episode_count == 4
    assert len(pool) == 4 * (CHUNKS - 1)
    assert set(pool.episode_policy.tolist()) == {"bba", "rb"}
