"""Fixed-size arrays for a scheduling event: what learned schedulers (Decima's GNN, NetLLM-CJS) and the
Gymnasium environment (`emulation.cluster_env`) consume.

Layout (J = max_jobs, S = max_stages, N = num_executors, R = max_runnable = J * S):
- jobs occupy slots 0..J-1 in arrival order (jobs past J are left out; a runnable stage of theirs cannot be
  chosen from the arrays); a job's unfinished stages occupy its stage slots 0..S-1 in stage-id order;
  node index = job_slot * S + stage_slot;
- `nodes` float32 [J*S, len(NODE_FEATURES)], zeros in empty slots;
- `node_mask` int8 [J*S]: 1 where a stage sits;
- `adjacency` int8 [J, S, S]: adjacency[j, a, b] = 1 when stage slot b of job j depends on stage slot a;
- `jobs` float32 [J, len(JOB_FEATURES)], `job_mask` int8 [J];
- `runnable` int64 [R]: node indices of the runnable stages in event order, -1 after the last;
  `runnable_mask` int8 [R];
- `limit_mask` int8 [J, N]: limit_mask[j, l - 1] = 1 when l is a valid parallelism limit for job slot j;
- `globals` float32 [len(GLOBAL_FEATURES)].

Scales follow spark-sched-sim's Decima inputs: task counts / 200, work (tasks x seconds) / 100 s, executor
counts / N. `EncodedEvent.decision(k, limit)` turns "the k-th runnable stage, limit" back into a Decision.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from controller.cjs.observation import Decision, SchedulingEvent, StageRef

NODE_FEATURES: tuple[str, ...] = ("tasks_remaining", "tasks_running", "demand", "task_duration_s",
                                  "remaining_work", "ready", "runnable", "tasks_total")
JOB_FEATURES: tuple[str, ...] = ("executors", "min_limit", "is_source", "stages", "waiting_s")
GLOBAL_FEATURES: tuple[str, ...] = ("free_executors", "jobs", "jobs_hidden")
TASKS_SCALE = 200.0
WORK_SCALE_S = 100.0
TIME_SCALE_S = 100.0


@dataclass
class EncodedEvent:
    nodes: np.ndarray
    node_mask: np.ndarray
    adjacency: np.ndarray
    jobs: np.ndarray
    job_mask: np.ndarray
    runnable: np.ndarray
    runnable_mask: np.ndarray
    limit_mask: np.ndarray
    globals: np.ndarray
    refs: list[StageRef]
    """StageRef of each runnable entry, in order."""
    min_limits: list[int]
    """min_limit of each runnable entry's job."""

    @property
    def num_runnable(self) -> int:
        return len(self.refs)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"nodes": self.nodes, "node_mask": self.node_mask, "adjacency": self.adjacency,
                "jobs": self.jobs, "job_mask": self.job_mask, "runnable": self.runnable,
                "runnable_mask": self.runnable_mask, "limit_mask": self.limit_mask, "globals": self.globals}

    def decision(self, k: int, limit: int) -> Decision:
        return self.refs[k], int(limit)


def empty_arrays(max_jobs: int, max_stages: int, num_executors: int) -> dict[str, np.ndarray]:
    nodes = max_jobs * max_stages
    return {
        "nodes": np.zeros((nodes, len(NODE_FEATURES)), np.float32),
        "node_mask": np.zeros(nodes, np.int8),
        "adjacency": np.zeros((max_jobs, max_stages, max_stages), np.int8),
        "jobs": np.zeros((max_jobs, len(JOB_FEATURES)), np.float32),
        "job_mask": np.zeros(max_jobs, np.int8),
        "runnable": np.full(nodes, -1, np.int64),
        "runnable_mask": np.zeros(nodes, np.int8),
        "limit_mask": np.zeros((max_jobs, num_executors), np.int8),
        "globals": np.zeros(len(GLOBAL_FEATURES), np.float32),
    }


def encode_event(event: SchedulingEvent, max_jobs: int = 64, max_stages: int = 20) -> EncodedEvent:
    """The arrays for `event`; ValueError when a job has more unfinished stages than `max_stages`."""
    n = event.num_executors
    a = empty_arrays(max_jobs, max_stages, n)
    refs: list[StageRef] = []
    min_limits: list[int] = []
    visible = event.jobs[:max_jobs]
    for j, job in enumerate(visible):
        if len(job.stages) > max_stages:
            raise ValueError(f"job {job.job_id} has {len(job.stages)} unfinished stages; "
                             f"max_stages={max_stages}")
        low = event.min_limit(job)
        a["job_mask"][j] = 1
        a["jobs"][j] = (job.executors / n, low / n, float(job.job_id == event.source_job),
                        len(job.stages) / max_stages, (event.time_s - job.arrival_s) / TIME_SCALE_S)
        a["limit_mask"][j, low - 1:] = 1
        slot_of = {s.stage_id: k for k, s in enumerate(job.stages)}
        base = j * max_stages
        for k, s in enumerate(job.stages):
            a["node_mask"][base + k] = 1
            a["nodes"][base + k] = (s.tasks_remaining / TASKS_SCALE, s.tasks_running / TASKS_SCALE,
                                    s.demand / n, s.task_duration_s,
                                    s.tasks_remaining * s.task_duration_s / WORK_SCALE_S,
                                    float(s.ready), float(s.runnable), s.tasks_total / TASKS_SCALE)
            for child in s.children:
                a["adjacency"][j, k, slot_of[child]] = 1
            if s.runnable:
                a["runnable"][len(refs)] = base + k
                a["runnable_mask"][len(refs)] = 1
                refs.append(StageRef(job.job_id, s.stage_id))
                min_limits.append(low)
    a["globals"][:] = (event.free_executors / n, len(visible) / max_jobs, len(event.jobs) - len(visible))
    return EncodedEvent(**a, refs=refs, min_limits=min_limits)
