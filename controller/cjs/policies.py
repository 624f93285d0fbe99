"""Cluster-job-scheduling policies: the interface, the registry and the classic baselines.

Interface: `CjsPolicy.reset()` at the start of an episode (a stream of jobs), then one
`schedule(event) -> (stage, parallelism_limit)` per decision (see `controller.cjs.observation`). A policy may
only name a runnable stage of the event and a limit in `[event.min_limit(job), event.num_executors]`, or
decline with `DECLINE`; the simulator and the controller reject anything else with InvalidDecision.
`observe_outcome(reward)` receives the reward of the previous decision round (minus the job-seconds spent in
the system since), for return-conditioned policies. Policies that run model inference set `blocking = True`
(the controller runs them on its worker thread).

Registry: name -> "module:Class", imported lazily. `decima` (Decima's GNN policy) and `netllm-cjs` (the
LLM-adapted scheduler) are reserved for their implementations in `controller.cjs.decima` and
`controller.cjs.netllm_cjs`; until those modules exist, asking for them raises PolicyUnavailableError.
Models get their inputs from `controller.cjs.encoding.encode_event` (the same arrays the Gymnasium
environment gives), so a model trained in `emulation.cluster_env` plugs in unchanged.

Baselines (heuristics of Decima's and spark-sched-sim's evaluation, written here from their description):
every decision first keeps the source job's executors in the source job when it has a runnable stage (all of
them, whatever the cap); otherwise it walks the jobs in arrival order and feeds the first job below its cap,
up to the cap. Within a job, a stage whose parents have all finished is preferred to one that is only
runnable.
- `fifo`: cap = the whole cluster (the earliest job takes every executor it can use);
- `fifo-cap25`: cap = 25 executors, NetLLM's "FIFO" (spark-sched-sim's round robin without dynamic
  partition caps each job at ceil(50 / 2) = 25 with its 50 executors);
- `fair`: dynamic partition, cap = ceil(executors / jobs in the system);
- `random`: a uniformly random runnable stage and valid limit (seeded), a floor and a stress test.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import random
from typing import Any, ClassVar

from controller.cjs.observation import DECLINE, Decision, JobView, SchedulingEvent, StageRef, StageView


class CjsPolicy:
    name: ClassVar[str] = "base"
    blocking: ClassVar[bool] = False

    def reset(self) -> None:
        """Forget the previous episode."""

    def schedule(self, event: SchedulingEvent) -> Decision:
        raise NotImplementedError

    def observe_outcome(self, reward: float) -> None:
        """Optional: the reward (negative job-seconds) that followed the previous decision round."""


def first_stage(job: JobView) -> StageView | None:
    """The job's first runnable stage whose parents have all finished, else its first runnable stage."""
    fallback = None
    for stage in job.stages:
        if stage.runnable:
            if stage.ready:
                return stage
            if fallback is None:
                fallback = stage
    return fallback


class CappedFifoPolicy(CjsPolicy):
    """Source job first, then jobs in arrival order below a per-job executor cap (`job_cap`)."""
    name: ClassVar[str] = "capped-fifo"

    def __init__(self, executor_cap: int | None = None) -> None:
        if executor_cap is not None and executor_cap < 1:
            raise ValueError("executor_cap must be >= 1")
        self.executor_cap = executor_cap

    def job_cap(self, event: SchedulingEvent) -> int:
        return event.num_executors if self.executor_cap is None else self.executor_cap

    def schedule(self, event: SchedulingEvent) -> Decision:
        if event.free_executors < 1:
            return DECLINE
        if event.source_job is not None:
            job = event.job(event.source_job)
            stage = first_stage(job) if job is not None else None
            if stage is not None:
                # every free executor stays: the limit is what the job holds, free ones included
                return StageRef(job.job_id, stage.stage_id), job.executors
        cap = min(self.job_cap(event), event.num_executors)
        for job in event.jobs:
            if job.executors >= cap or job.job_id == event.source_job:
                continue
            stage = first_stage(job)
            if stage is not None:
                return StageRef(job.job_id, stage.stage_id), cap
        return DECLINE


class FifoPolicy(CappedFifoPolicy):
    """FIFO over the whole cluster: the earliest job gets every executor it can use."""
    name: ClassVar[str] = "fifo"

    def __init__(self) -> None:
        super().__init__(None)


class FifoCap25Policy(CappedFifoPolicy):
    """NetLLM's FIFO baseline: FIFO with each job capped at 25 executors."""
    name: ClassVar[str] = "fifo-cap25"

    def __init__(self, executor_cap: int = 25) -> None:
        super().__init__(executor_cap)


class FairPolicy(CappedFifoPolicy):
    """Dynamic partition: each job capped at ceil(executors / jobs in the system)."""
    name: ClassVar[str] = "fair"

    def __init__(self) -> None:
        super().__init__(None)

    def job_cap(self, event: SchedulingEvent) -> int:
        return math.ceil(event.num_executors / max(1, len(event.jobs)))


class RandomPolicy(CjsPolicy):
    """Uniform over the runnable stages, then uniform over that job's valid limits (a sanity floor and a
    stress test: it never declines)."""
    name: ClassVar[str] = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.rng = random.Random(seed)

    def reset(self) -> None:
        self.rng = random.Random(self.seed)

    def schedule(self, event: SchedulingEvent) -> Decision:
        choices = list(event.runnable())
        if not choices or event.free_executors < 1:
            return DECLINE
        job, stage = self.rng.choice(choices)
        limit = self.rng.randint(event.min_limit(job), event.num_executors)
        return StageRef(job.job_id, stage.stage_id), limit


# ------------------------------------------------------------------------------------------------ registry
_REGISTRY: dict[str, str] = {
    "fifo": "controller.cjs.policies:FifoPolicy",
    "fifo-cap25": "controller.cjs.policies:FifoCap25Policy",
    "fair": "controller.cjs.policies:FairPolicy",
    "random": "controller.cjs.policies:RandomPolicy",
    "decima": "controller.cjs.decima:DecimaPolicy",
    "netllm-cjs": "controller.cjs.netllm_cjs:NetLLMCjsPolicy",
}
RESERVED: dict[str, str] = {
    "decima": "Decima's GNN scheduler",
    "netllm-cjs": "the NetLLM-adapted LLM scheduler",
}


class UnknownPolicyError(KeyError):
    pass


class PolicyUnavailableError(ImportError):
    """A registered policy whose implementation is not present in this build."""


def available_policies() -> list[str]:
    """Every registered name (reserved ones included)."""
    return sorted(_REGISTRY)


def implemented_policies() -> list[str]:
    return [name for name in available_policies() if _module_exists(_REGISTRY[name].split(":")[0])]


def _module_exists(module_name: str) -> bool:
    try:
        return importlib.util.find_spec(module_name) is not None
    except ModuleNotFoundError:
        return False


def policy_class(name: str) -> type[CjsPolicy]:
    try:
        target = _REGISTRY[name]
    except KeyError:
        raise UnknownPolicyError(f"unknown CJS policy {name!r}; known: {', '.join(available_policies())}") \
            from None
    module_name, cls_name = target.split(":")
    if not _module_exists(module_name):
        what = RESERVED.get(name, "its implementation")
        raise PolicyUnavailableError(f"CJS policy {name!r} ({what}) is registered but {module_name} is not "
                                     "implemented in this build")
    return getattr(importlib.import_module(module_name), cls_name)


def make_policy(name: str, **options: Any) -> CjsPolicy:
    """A fresh, reset policy instance; options are the implementation's constructor arguments."""
    policy = policy_class(name)(**options)
    policy.reset()
    return policy
