"""NetLLM-CJS: masking, offline training whose loss falls, checkpoint round trip, CLI, pool format, service."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import torch

from controller.app import ControllerConfig
from controller.cjs.decima import MAX_STAGES, collate, featurize, node_of, rollout
from controller.cjs.netllm_cjs import NetLLMCjsPolicy
from controller.cjs.netllm_cjs_model import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    CONFIG_FILE,
    MODULES_FILE,
    NetLLMCjsConfig,
    build_netllm_cjs,
    load_netllm_cjs,
    save_netllm_cjs,
)
from controller.cjs.observation import check_decision, event_to_json
from controller.cjs.policies import make_policy
from controller.netllm.backbone import BackboneSpec, load_backbone
from controller.runner import run_controller
from emulation.cluster_sim import ClusterSim, SimConfig
from netllm.cli import main
from traces.jobs import JobCatalog
from training.cjs_pool import CjsPoolBuilder, CjsPoolError, load_cjs_pool
from training.train_cjs import WindowSampler

EXECUTORS = 10
CFG = SimConfig(num_executors=EXECUTORS, num_jobs=5, initial_jobs=2, mean_gap_s=15.0, sizes=("2g", "5g"),
                check_invariants=True)


@pytest.fixture(scope="module")
def catalog(shared_data: Path) -> JobCatalog:
    return JobCatalog(shared_data / "cjs" / "tpch")


@pytest.fixture(scope="module")
def pool_dir(catalog: JobCatalog, tmp_path_factory: pytest.TempPathFactory) -> Path:
    builder = CjsPoolBuilder(EXECUTORS)
    sim = ClusterSim(CFG, catalog)
    for name in ("fair", "fifo-cap25"):
        policy = make_policy(name)
        for seed in (0, 1):
            traj = rollout(sim, seed, lambda e, a, r, refs: node_of(policy.schedule(e), refs, r))
            builder.add(traj, name, seed, CFG.num_jobs)
    return builder.save(tmp_path_factory.mktemp("pool"))


def tiny_model(seed: int = 0) -> tuple[Any, dict[str, Any]]:
    body, info = load_backbone(BackboneSpec("tiny"), device="cpu", dtype="fp32")
    torch.manual_seed(seed)
    cfg = NetLLMCjsConfig(hidden_size=info.hidden_size, num_executors=EXECUTORS, dim=8, hidden=16, passes=3,
                          window=3, return_scale_s=100.0, lora_rank=4)
    return build_netllm_cjs(cfg, body), info.to_json()


def test_pool_round_trip_restores_the_featurized_events(pool_dir: Path, catalog: JobCatalog) -> None:
    pool = load_cjs_pool(pool_dir)
    assert pool.num_episodes == 4 and pool.num_decisions > 20
    sim = ClusterSim(CFG, catalog)
    policy = make_policy("fair")
    first = featurize(sim.reset(0))[0]  # fair's episode on seed 0 is the pool's first
    stored = pool.sample(0)
    for key in ("nodes", "node_mask", "adj", "jobs", "limit_mask", "globals"):
        np.testing.assert_array_equal(stored[key], first[key], err_msg=key)
    rtg = pool.returns_to_go_s()
    lo, hi = pool.episode_span(0)
    assert rtg[lo] == pytest.approx(-pool.meta["episodes"][0]["mean_jct_s"] * CFG.num_jobs, rel=1e-6)
    assert policy is not None and rtg[hi - 1] <= 0


def test_broken_pool_is_a_clear_error(pool_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "pool.json").write_text((pool_dir / "pool.json").read_text())
    (tmp_path / "pool.npz").write_bytes(b"nope")
    with pytest.raises(CjsPoolError, match=str(tmp_path)):
        load_cjs_pool(tmp_path)


def test_offline_training_lowers_the_loss(pool_dir: Path) -> None:
    torch.set_num_threads(1)
    model, _ = tiny_model()
    sampler = WindowSampler(load_cjs_pool(pool_dir), 3, 100.0, seed=0)
    fixed = sampler.sample(16)

    def loss_of(batch: dict) -> torch.Tensor:
        return model.loss(batch["b"], batch["returns"], batch["node"], batch["limit"], batch["windows"])[0]

    model.eval()
    with torch.no_grad():
        before = float(loss_of(fixed))
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(40):
        loss = loss_of(sampler.sample(8))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        after = float(loss_of(fixed))
    assert after < before - 0.3, (before, after)


@torch.no_grad()
def test_heads_mask_non_runnable_stages_and_invalid_limits(catalog: JobCatalog) -> None:
    model, _ = tiny_model(1)
    model.eval()
    sim = ClusterSim(CFG, catalog)
    event, checked = sim.reset(2), 0
    fair = make_policy("fair")
    while event is not None:
        feats = featurize(event)
        if feats is not None:
            arrays, runnable, _ = feats
            enc = model.encode(collate([arrays]))
            h = torch.randn(1, model.cfg.hidden_size)
            probs = model.stage_log_probs(h, enc)[0].exp()
            allowed = torch.zeros_like(probs, dtype=torch.bool)
            allowed[torch.from_numpy(runnable)] = True
            assert float(probs[~allowed].sum()) == 0.0
            for node in runnable:
                limit_p = model.limit_log_probs(h, enc, torch.tensor([int(node)]))[0].exp()
                valid = torch.from_numpy(arrays["limit_mask"][node // MAX_STAGES] > 0)
                assert float(limit_p[~valid].sum()) == 0.0
            checked += 1
        event = sim.step(fair.schedule(event))
    assert checked > 5


def test_checkpoint_round_trip_and_whole_episode(tmp_path: Path, catalog: JobCatalog) -> None:
    model, info = tiny_model(2)
    with torch.no_grad():  # make the adapter non-trivial so that the round trip checks it
        for name, p in model.backbone.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    save_netllm_cjs(model, tmp_path / "ckpt", info, "float32",
                    {"target_return_per_job_s": -30.0, "episode_jobs": CFG.num_jobs}, {"note": "t"})
    files = {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert {CONFIG_FILE, ADAPTER_CONFIG, ADAPTER_WEIGHTS, MODULES_FILE} <= files
    loaded, doc = load_netllm_cjs(tmp_path / "ckpt")
    assert doc["backbone"]["kind"] == "tiny" and doc["serving"]["episode_jobs"] == CFG.num_jobs
    model.eval()
    a = NetLLMCjsPolicy(model=model, doc=doc)
    b = NetLLMCjsPolicy(checkpoint=tmp_path / "ckpt")
    assert b.target_return_s == pytest.approx(-30.0 * CFG.num_jobs)

    class Both:
        """Runs both policies on every event: same answers, each one valid."""
        answers = 0

        def reset(self) -> None:
            a.reset(), b.reset()

        def observe_outcome(self, reward: float) -> None:
            a.observe_outcome(reward), b.observe_outcome(reward)

        def schedule(self, event: Any) -> Any:
            da, db = a.schedule(event), b.schedule(event)
            assert da == db
            check_decision(event, db)
            Both.answers += da[0] is not None
            return db

    result = ClusterSim(CFG, catalog).run(Both(), 3)
    assert len(result.jobs) == CFG.num_jobs and Both.answers > 0
    assert b.return_s == pytest.approx(b.target_return_s + result.job_seconds)


def test_train_cjs_cli_writes_run_and_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "run"
    rc = main(["train-cjs", "--model", "netllm-cjs", "--backbone", "tiny", "--out", str(out),
               "--export", str(tmp_path / "ckpt"), "--executors", str(EXECUTORS),
               "--pool-policies", "fair,fifo-cap25", "--pool-seeds", "2", "--pool-jobs", "4", "--valid-seeds", "1",
               "--optimizer-steps", "6", "--eval-loss-every", "3", "--micro-batch-size", "2", "--grad-accum", "1",
               "--warmup-steps", "1", "--valid-windows", "8", "--window", "2", "--dim", "8", "--hidden", "16"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "netllm-cjs" and summary["steps_run"] == 6 and summary["episode_jobs"] == 4
    assert summary["checkpoint"] == str(out / "best") and summary["exported_to"] == str(tmp_path / "ckpt")
    assert json.loads((out / "config.json").read_text())["backbone"] == "tiny"
    rows = (out / "loss.csv").read_text().splitlines()
    assert rows[0].startswith("step,") and len(rows) == 7
    doc = json.loads((tmp_path / "ckpt" / CONFIG_FILE).read_text())
    assert doc["storage_dtype"] == "bfloat16" and doc["training"]["pool_policies"] == ["fair", "fifo-cap25"]
    assert make_policy("netllm-cjs", checkpoint=str(tmp_path / "ckpt")).target_return_s < 0


def test_unknown_model_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train-cjs", "--model", "gpt", "--out", str(tmp_path)]) == 2
    assert "--model" in capsys.readouterr().err


async def test_served_over_http_matches_local(tmp_path: Path, catalog: JobCatalog,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    model, info = tiny_model(4)
    save_netllm_cjs(model, tmp_path / "ckpt", info, "bfloat16", {"target_return_per_job_s": -40.0,
                                                                 "episode_jobs": 5})
    monkeypatch.setenv("NETLLM_CJS_CHECKPOINT", str(tmp_path / "ckpt"))
    sim = ClusterSim(CFG, catalog)
    event = sim.reset(6)
    expected = NetLLMCjsPolicy().schedule(event)
    async with run_controller(ControllerConfig(tasks=["cjs"])) as url, aiohttp.ClientSession() as http:
        body = {**event_to_json(event), "policy": "netllm-cjs", "session_id": "s1"}
        async with http.post(url + "/v1/cjs/schedule", json=body) as resp:
            assert resp.status == 200, await resp.text()
            answer = await resp.json()
    assert answer["stage"] == {"job_id": expected[0].job_id, "stage_id": expected[0].stage_id}
    assert answer["parallelism_limit"] == expected[1] and answer["policy"] == "netllm-cjs"


def test_cjs_eval_scales_the_return_target_to_the_episode(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The checkpoint's target is per job; an evaluation of N-job episodes must ask for N times it."""
    from emulation.cjs_eval import Config as EvalConfig
    from emulation.cjs_eval import _check

    model, info = tiny_model(4)
    save_netllm_cjs(model, tmp_path / "ckpt", info, "bfloat16", {"target_return_per_job_s": -40.0,
                                                                 "episode_jobs": 5})
    monkeypatch.setenv("NETLLM_CJS_CHECKPOINT", str(tmp_path / "ckpt"))
    options = _check(EvalConfig(out=tmp_path / "out", policies=["fair", "netllm-cjs"], jobs=12))
    assert options["netllm-cjs"]["episode_jobs"] == 12
    assert NetLLMCjsPolicy(**options["netllm-cjs"]).target_return_s == pytest.approx(-40.0 * 12)
    kept = _check(EvalConfig(out=tmp_path / "out", policies=["netllm-cjs"], jobs=12,
                             policy_options='{"netllm-cjs": {"episode_jobs": 7}}'))
    assert kept["netllm-cjs"]["episode_jobs"] == 7
