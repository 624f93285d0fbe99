"""The cluster simulator: DAG readiness, duration sampling, decision checks, invariants under random policies,
determinism, baseline behaviour, and the Gymnasium wrapper."""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.cjs.observation import DECLINE, InvalidDecision, SchedulingEvent, StageRef, check_decision
from controller.cjs.policies import CjsPolicy, RandomPolicy, make_policy
from emulation.cluster_sim import ClusterSim, SchedulerStall, SimConfig, _level_intervals
from traces.jobs import JobCatalog

SMALL_SIZES = ("2g", "5g", "10g")


@pytest.fixture(scope="module")
def catalog(shared_data: Path) -> JobCatalog:
    return JobCatalog(shared_data / "cjs" / "tpch")


def small_config(**overrides) -> SimConfig:
    base = dict(num_executors=8, num_jobs=6, initial_jobs=2, mean_gap_s=15.0, sizes=SMALL_SIZES,
                record_tasks=True, check_invariants=True)
    base.update(overrides)
    return SimConfig(**base)


def stage_finish_times(sim: ClusterSim) -> dict[tuple[int, int], float]:
    done: dict[tuple[int, int], float] = defaultdict(float)
    for t in sim.tasks:
        key = (t.job_id, t.stage_id)
        done[key] = max(done[key], t.start_s + t.duration_s)
    return done


class DecliningRandom(CjsPolicy):
    """Valid random answers that also decline now and then (leaving executors idle)."""

    def __init__(self, seed: int, decline_p: float) -> None:
        self.rng = random.Random(seed)
        self.decline_p = decline_p

    def schedule(self, event: SchedulingEvent):
        if self.rng.random() < self.decline_p:
            return DECLINE
        job, stage = self.rng.choice(list(event.runnable()))
        limit = self.rng.randint(event.min_limit(job), event.num_executors)
        return StageRef(job.job_id, stage.stage_id), limit


def test_level_intervals_follow_decima() -> None:
    iv = _level_intervals(120)
    assert iv[0] == iv[3] == iv[5] == (5, 5)
    assert iv[7] == (5, 10) and iv[45] == (40, 50) and iv[50] == (50, 50) and iv[99] == (80, 100)
    assert iv[100] == iv[120] == (100, 100)


@pytest.mark.parametrize("policy", ["fifo", "fifo-cap25", "fair", "random"])
def test_stage_never_starts_before_its_parents_finish(catalog: JobCatalog, policy: str) -> None:
    sim = ClusterSim(small_config(num_jobs=8), catalog)
    result = sim.run(make_policy(policy), seed=3)
    finish = stage_finish_times(sim)
    dags = {j.id: j.dag for j in sim.jobs}
    for t in sim.tasks:
        for parent in dags[t.job_id].stages[t.stage_id].parents:
            assert t.start_s >= finish[(t.job_id, parent)] - 1e-9, (t, parent)
    assert len(result.jobs) == 8
    for job in sim.jobs:  # the job completes when its last task does
        last = max(finish[(job.id, s.index)] for s in job.dag.stages)
        assert job.completion_s == pytest.approx(last)
    assert len(sim.tasks) == sum(j.dag.num_tasks for j in sim.jobs)


def test_parents_finished_rule_offers_only_ready_stages(catalog: JobCatalog) -> None:
    sim = ClusterSim(small_config(num_jobs=8, runnable_rule="parents-finished"), catalog)
    policy = RandomPolicy(1)
    event, offered = sim.reset(seed=6), 0
    while event is not None:
        for _, stage in event.runnable():
            assert stage.ready
            offered += 1
        event = sim.step(policy.schedule(event))
    assert offered > 0 and len(sim.finished_jobs) == 8
    decima = ClusterSim(small_config(num_jobs=8), catalog)
    event, early = decima.reset(seed=6), 0
    while event is not None:
        early += sum(1 for _, stage in event.runnable() if not stage.ready)
        event = decima.step(policy.schedule(event))
    assert early > 0  # Decima's rule does offer stages whose parents are still finishing
    with pytest.raises(ValueError, match="runnable_rule"):
        SimConfig(runnable_rule="eager")


def test_durations_come_from_the_measurements_of_the_right_wave(catalog: JobCatalog) -> None:
    sim = ClusterSim(small_config(num_jobs=10, num_executors=12), catalog)
    sim.run(make_policy("fair"), seed=11)
    dags = {j.id: j.dag for j in sim.jobs}
    previous: dict[int, tuple[int, int]] = {}
    waves = defaultdict(int)
    for t in sorted(sim.tasks, key=lambda t: (t.start_s, t.executor)):
        spec = dags[t.job_id].stages[t.stage_id]
        waves[t.wave] += 1
        if t.wave == "warmup":
            measured = t.duration_s - sim.cfg.warmup_delay_s
            assert min(abs(measured - v) for v in spec.first_wave[t.level]) < 1e-9
            assert not spec.fresh[t.level]
        else:
            source = {"fresh": spec.fresh, "first": spec.first_wave, "rest": spec.rest_wave}[t.wave]
            assert t.duration_s in source[t.level]
        assert t.level in spec.first_wave
        last = previous.get(t.executor)
        if last is None:  # every executor starts in the common pool: its first task is a fresh one
            assert t.wave in ("fresh", "warmup")
        if t.wave == "rest":
            assert last == (t.job_id, t.stage_id)
        previous[t.executor] = (t.job_id, t.stage_id)
    assert waves["rest"] > 0 and waves["first"] + waves["fresh"] + waves["warmup"] > 0


def test_rejects_decisions_the_event_does_not_allow(catalog: JobCatalog) -> None:
    sim = ClusterSim(small_config(), catalog)
    event = sim.reset(seed=1)
    runnable = [(j, s) for j, s in event.runnable()]
    blocked = [(j, s) for j in event.jobs for s in j.stages if not s.runnable]
    assert runnable and blocked
    job, stage = blocked[0]
    with pytest.raises(InvalidDecision, match="not runnable"):
        sim.step((StageRef(job.job_id, stage.stage_id), event.num_executors))
    with pytest.raises(InvalidDecision, match="not runnable"):
        sim.step((StageRef(999, 0), 3))
    job, stage = runnable[0]
    for limit in (event.min_limit(job) - 1, event.num_executors + 1, 2.5, True, "4"):
        with pytest.raises(InvalidDecision, match="parallelism_limit"):
            sim.step((StageRef(job.job_id, stage.stage_id), limit))
    with pytest.raises(InvalidDecision):
        sim.step("fifo")
    # nothing was applied: the same event is still pending and a valid answer goes through
    assert sim.event is event and sim.decisions == 0
    sim.check_invariants()
    decision = check_decision(event, (StageRef(job.job_id, stage.stage_id), event.num_executors))
    sim.step(decision)
    assert sim.decisions == 1


@given(seed=st.integers(0, 10_000), executors=st.integers(1, 12), jobs=st.integers(1, 5),
       initial=st.integers(0, 5), gap_s=st.floats(0.5, 60.0))
def test_random_valid_policies_keep_every_invariant(catalog: JobCatalog, seed: int, executors: int, jobs: int,
                                                    initial: int, gap_s: float) -> None:
    cfg = small_config(num_executors=executors, num_jobs=jobs, initial_jobs=min(initial, jobs),
                       mean_gap_s=gap_s)
    sim = ClusterSim(cfg, catalog)  # check_invariants: executors conserved, counts and promises consistent
    result = sim.run(RandomPolicy(seed), seed=seed)
    assert len(result.jobs) == jobs and sim.done
    assert all(j.completion_s >= j.arrival_s for j in result.jobs)
    assert len(sim.common.members) == executors  # everyone is back in the common pool at the end
    assert result.job_seconds == pytest.approx(sum(j.jct_s for j in result.jobs), rel=1e-9)


@given(seed=st.integers(0, 10_000), decline_p=st.floats(0.0, 0.9))
def test_declining_policies_finish_or_stall_clearly(catalog: JobCatalog, seed: int, decline_p: float) -> None:
    sim = ClusterSim(small_config(num_jobs=3, num_executors=4), catalog)
    try:
        result = sim.run(DecliningRandom(seed, decline_p), seed=seed)
    except SchedulerStall as exc:
        assert "unfinished" in str(exc)
        sim.check_invariants()
    else:
        assert len(result.jobs) == 3


def test_always_declining_stalls_and_never_declining_finishes(catalog: JobCatalog) -> None:
    with pytest.raises(SchedulerStall, match="declined"):
        ClusterSim(small_config(num_jobs=3), catalog).run(DecliningRandom(0, 1.0), seed=0)
    assert len(ClusterSim(small_config(num_jobs=3), catalog).run(DecliningRandom(0, 0.0), seed=0).jobs) == 3


def test_determinism_per_seed(catalog: JobCatalog) -> None:
    def play(policy: str, seed: int) -> tuple[list, list]:
        sim = ClusterSim(small_config(), catalog)
        result = sim.run(make_policy(policy), seed=seed)
        return [(j.query, j.size, j.arrival_s, j.jct_s) for j in result.jobs], sim.tasks

    assert play("fair", 4) == play("fair", 4)
    assert play("fair", 4)[0] != play("fair", 5)[0]
    fair_jobs, fifo_jobs = play("fair", 4)[0], play("fifo", 4)[0]
    assert [j[:3] for j in fair_jobs] == [j[:3] for j in fifo_jobs]  # same job stream for every policy


def test_baselines_respect_their_caps(catalog: JobCatalog) -> None:
    cfg = SimConfig(num_executors=50, num_jobs=12, initial_jobs=6, mean_gap_s=5.0)
    for name, cap in (("fifo-cap25", lambda e: 25), ("fair", lambda e: -(-50 // len(e.jobs)))):
        sim = ClusterSim(cfg, catalog)
        policy = make_policy(name)
        event = sim.reset(seed=2)
        while event is not None:
            stage, limit = policy.schedule(event)
            if stage is not None and stage.job_id != event.source_job:
                job = event.job(stage.job_id)
                assert job.executors < cap(event) and limit == cap(event)
            event = sim.step((stage, limit))
    sim = ClusterSim(cfg, catalog)
    event = sim.reset(seed=2)
    stage, limit = make_policy("fifo").schedule(event)
    assert stage.job_id == event.jobs[0].job_id and limit == 50  # earliest job, whole cluster


@pytest.mark.slow
def test_default_setting_orders_the_baselines(catalog: JobCatalog) -> None:
    """NetLLM's setting, 3 seeds: Fair beats FIFO-cap25, which beats whole-cluster FIFO, every seed."""
    cfg = SimConfig()
    for seed in range(3):
        jct = {p: ClusterSim(cfg, catalog).run(make_policy(p), seed).mean_jct_s
               for p in ("fifo", "fifo-cap25", "fair")}
        assert jct["fair"] < jct["fifo-cap25"] <= jct["fifo"] * 1.05, jct
        assert 25 < jct["fair"] < 120


def test_env_passes_gymnasium_checker_and_reward_is_job_time(catalog: JobCatalog) -> None:
    from gymnasium.utils.env_checker import check_env

    from emulation.cluster_env import ClusterSchedulingEnv

    env = ClusterSchedulingEnv(small_config(check_invariants=False, record_tasks=False), max_jobs=8,
                               catalog=catalog)
    check_env(env, skip_render_check=True)
    obs, info = env.reset(seed=7)
    assert env.observation_space.contains(obs)
    total, done, rng = 0.0, False, np.random.default_rng(0)
    while not done:
        valid = np.flatnonzero(obs["runnable_mask"])
        assert valid.size and (obs["runnable"][valid] >= 0).all()
        k = int(rng.choice(valid))
        node = obs["runnable"][k]
        job_slot = node // env.max_stages
        limits = np.flatnonzero(obs["limit_mask"][job_slot])
        obs, reward, done, truncated, info = env.step([k, int(rng.choice(limits))])
        assert not info["action_adjusted"] and not truncated
        total += reward
    jcts = [j.jct_s for j in env.sim.result().jobs]
    assert total == pytest.approx(-sum(jcts) / env.reward_scale_s)
    assert info["mean_jct_s"] == pytest.approx(np.mean(jcts))


def test_env_strict_actions_refuse_masked_out_actions(catalog: JobCatalog) -> None:
    from emulation.cluster_env import ClusterSchedulingEnv

    env = ClusterSchedulingEnv(small_config(check_invariants=False), max_jobs=8, strict_actions=True,
                               catalog=catalog)
    obs, _ = env.reset(seed=1)
    count = int(obs["runnable_mask"].sum())
    with pytest.raises(InvalidDecision):
        env.step([count, 0])
    lenient = ClusterSchedulingEnv(small_config(check_invariants=False), max_jobs=8, catalog=catalog)
    lenient.reset(seed=1)
    _, _, _, _, info = lenient.step([count + 3, 0])
    assert info["action_adjusted"]
