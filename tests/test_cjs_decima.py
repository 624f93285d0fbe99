"""Decima-style GNN scheduler: masking, policy-gradient step, checkpoint round trip, registry and service."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import torch

from controller.app import ControllerConfig
from controller.cjs.decima import (
    MAX_STAGES,
    DecimaConfig,
    DecimaNet,
    DecimaPolicy,
    act,
    collate,
    featurize,
    load_decima,
    policy_gradient_step,
    rollout,
    save_decima,
)
from controller.cjs.observation import check_decision, event_to_json
from controller.cjs.policies import make_policy
from controller.runner import run_controller
from emulation.cluster_sim import ClusterSim, SimConfig
from traces.jobs import JobCatalog

EXECUTORS = 10
CFG = SimConfig(num_executors=EXECUTORS, num_jobs=5, initial_jobs=2, mean_gap_s=15.0, sizes=("2g", "5g"),
                check_invariants=True)


@pytest.fixture(scope="module")
def catalog(shared_data: Path) -> JobCatalog:
    return JobCatalog(shared_data / "cjs" / "tpch")


def small_net(seed: int = 0) -> DecimaNet:
    torch.manual_seed(seed)
    return DecimaNet(DecimaConfig(num_executors=EXECUTORS, dim=8, hidden=16, passes=3))


class Checked:
    """Wraps a policy: every answer must pass the event's own validity check."""

    def __init__(self, policy: Any) -> None:
        self.policy, self.answers = policy, 0

    def reset(self) -> None:
        self.policy.reset()

    def observe_outcome(self, reward: float) -> None:
        self.policy.observe_outcome(reward)

    def schedule(self, event: Any) -> Any:
        decision = self.policy.schedule(event)
        check_decision(event, decision)  # raises InvalidDecision on a non-runnable stage / bad limit
        if decision[0] is not None:
            job = event.job(decision[0].job_id)
            assert event.min_limit(job) <= decision[1] <= event.num_executors
            self.answers += 1
        return decision


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sampling_policy_only_picks_runnable_stages_and_valid_limits(catalog: JobCatalog, seed: int) -> None:
    policy = Checked(DecimaPolicy(net=small_net(seed), greedy=False, seed=seed))
    result = ClusterSim(CFG, catalog).run(policy, seed)
    assert len(result.jobs) == CFG.num_jobs and policy.answers > 0


@torch.no_grad()
def test_heads_put_zero_probability_on_masked_choices(catalog: JobCatalog) -> None:
    net = small_net()
    sim = ClusterSim(CFG, catalog)
    event = sim.reset(4)
    checked = 0
    while event is not None:
        feats = featurize(event)
        if feats is not None:
            arrays, runnable, _ = feats
            b = collate([arrays])
            stage_lp, jobs, glob = net(b)
            probs = stage_lp[0].exp()
            mask = np.zeros(probs.shape[0], bool)
            mask[runnable] = True
            assert float(probs[~torch.from_numpy(mask)].sum()) == 0.0
            assert float(probs.sum()) == pytest.approx(1.0, abs=1e-5)
            for node in runnable:
                limit_p = net.limit_log_probs(jobs, glob, torch.tensor([node // MAX_STAGES]),
                                              b["limit_mask"])[0].exp()
                valid = torch.from_numpy(arrays["limit_mask"][node // MAX_STAGES] > 0)
                assert float(limit_p[~valid].sum()) == 0.0
            checked += 1
        event = sim.step(make_policy("fair").schedule(event))
    assert checked > 5


def test_policy_gradient_step_changes_parameters_and_episodes_finish(catalog: JobCatalog) -> None:
    net = small_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    sim = ClusterSim(CFG, catalog)
    trajs = [rollout(sim, 7, lambda e, a, r, refs: act(net, a, False, gen)) for _ in range(3)]
    for t in trajs:
        assert np.isfinite(t.mean_jct_s) and len(t.samples) == len(t.rewards_s) > 0
        # the rewards add up to minus the job-seconds: minus the sum of JCTs
        assert sum(t.rewards_s) == pytest.approx(-t.mean_jct_s * CFG.num_jobs, rel=1e-6)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    stats = policy_gradient_step(net, opt, trajs, reward_scale_s=100.0, entropy_weight=0.01)
    assert np.isfinite(stats["loss"]) and stats["decisions"] == sum(len(t.samples) for t in trajs)
    changed = [k for k, v in net.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "the update left every parameter unchanged"
    # the updated network still plays a whole episode
    assert len(ClusterSim(CFG, catalog).run(DecimaPolicy(net=net), 8).jobs) == CFG.num_jobs


def test_checkpoint_round_trip_gives_identical_decisions(catalog: JobCatalog, tmp_path: Path) -> None:
    net = small_net(3)
    save_decima(net, tmp_path / "ckpt", {"note": "test"})
    loaded, doc = load_decima(tmp_path / "ckpt")
    assert doc["training"] == {"note": "test"} and doc["model"]["num_executors"] == EXECUTORS
    a = ClusterSim(CFG, catalog).run(DecimaPolicy(net=net), 2)
    b = ClusterSim(CFG, catalog).run(make_policy("decima", checkpoint=str(tmp_path / "ckpt")), 2)
    assert [j.jct_s for j in a.jobs] == [j.jct_s for j in b.jobs]


def test_bad_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="decima_config.json"):
        load_decima(tmp_path)
    save_decima(small_net(), tmp_path / "c")
    (tmp_path / "c" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="model.safetensors"):
        load_decima(tmp_path / "c")


async def test_served_over_http(catalog: JobCatalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_decima(small_net(5), tmp_path / "ckpt")
    monkeypatch.setenv("NETLLM_DECIMA_CHECKPOINT", str(tmp_path / "ckpt"))
    sim = ClusterSim(CFG, catalog)
    event = sim.reset(1)
    expected = DecimaPolicy(net=load_decima(tmp_path / "ckpt")[0]).schedule(event)
    async with run_controller(ControllerConfig(tasks=["cjs"])) as url, aiohttp.ClientSession() as http:
        async with http.post(url + "/v1/cjs/schedule", json={**event_to_json(event), "policy": "decima"}) as r:
            assert r.status == 200, await r.text()
            answer = await r.json()
    assert answer["stage"] == {"job_id": expected[0].job_id, "stage_id": expected[0].stage_id}
    assert answer["parallelism_limit"] == expected[1]
