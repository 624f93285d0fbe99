"""The scheduling event: what a cluster job scheduler sees at each decision, in the simulator and on the wire.

The simulator (`emulation.cluster_sim`) builds a `SchedulingEvent` at every decision and the controller's
`POST /v1/cjs/schedule` parses the same thing from JSON (`parse_event`), so a policy cannot tell them apart.

A decision round (Decima's model): some executors became free at once (`free_executors`, all coming from one
place: the common pool when `source_job` is null, else job `source_job`, whose executors just ran out of work
in a stage or whose new stages just became ready). The scheduler answers `(stage, parallelism_limit)`:
give executors to that stage, up to `parallelism_limit` executors for the stage's job in all. The simulator
moves min(free executors, limit - the job's current executors, the stage's demand) executors, then asks again
while executors are still free and runnable stages remain; `stage = None` declines (the remaining free
executors stay idle until the next event).

JSON (field: meaning; every field required unless marked optional):

    {"time_s": 12.5,              simulated (or wall) time of the event, seconds
     "num_executors": 50,         executors in the cluster
     "free_executors": 3,         executors to place in this round
     "source_job": 4 | null,      the job whose executors are being placed (null: the common pool)
     "jobs": [                    every job in the system (arrived, not finished), in arrival order
       {"job_id": 4,
        "name": "tpch-10g-q3",    optional, free text
        "arrival_s": 0.0,
        "executors": 12,          executors working for, idle at, moving to or promised to the job
        "stages": [               the job's unfinished stages
          {"stage_id": 0,
           "tasks_total": 12, "tasks_remaining": 5 (not started yet), "tasks_running": 3,
           "demand": 5,           executors it can still use: tasks_remaining - those moving/promised to it
           "runnable": true,      may be chosen now (see below)
           "ready": true,         every parent stage finished: its tasks can start
           "task_duration_s": 1.2 most recent task duration (before any: the mean of the measurements)
           "children": [1, 2]}    stage ids that depend on this one
        ]}]}

A stage is runnable when it has demand, it was not chosen earlier in this round, every parent stage has all
its tasks started or promised (Decima's frontier rule: executors may be promised to a stage whose parents are
still finishing; they wait at the job and its tasks start only once every parent has finished; the
simulator's `runnable_rule="parents-finished"` requires finished parents instead), and its job holds fewer
than `num_executors` executors or is the source job.

The valid limits for job j are `min_limit(j) .. num_executors` with
`min_limit(j) = j.executors - (free_executors if j is the source job else 0) + 1`, so every accepted
decision moves at least one executor.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

MAX_JOBS: int = 2000
MAX_STAGES_PER_JOB: int = 512
MAX_TOTAL_STAGES: int = 20_000
MAX_EXECUTORS: int = 100_000
MAX_TASKS_PER_STAGE: int = 10_000_000


class StageRef(NamedTuple):
    job_id: int
    stage_id: int


Decision = tuple[StageRef | None, int]
"""(stage to feed, or None to decline; the parallelism limit for that stage's job)."""
DECLINE: Decision = (None, 0)


class StageView(NamedTuple):
    stage_id: int
    tasks_total: int
    tasks_remaining: int
    tasks_running: int
    demand: int
    runnable: bool
    ready: bool
    task_duration_s: float
    children: tuple[int, ...]


class JobView(NamedTuple):
    job_id: int
    name: str
    arrival_s: float
    executors: int
    stages: tuple[StageView, ...]


@dataclass
class SchedulingEvent:
    time_s: float
    num_executors: int
    free_executors: int
    source_job: int | None
    jobs: tuple[JobView, ...]
    _by_id: dict[int, JobView] | None = field(default=None, repr=False, compare=False)

    def job(self, job_id: int) -> JobView | None:
        if self._by_id is None:
            self._by_id = {j.job_id: j for j in self.jobs}
        return self._by_id.get(job_id)

    def min_limit(self, job: JobView) -> int:
        """The smallest accepted parallelism limit for `job` (moves exactly one executor)."""
        held = job.executors - (self.free_executors if job.job_id == self.source_job else 0)
        return held + 1

    def runnable(self) -> Iterator[tuple[JobView, StageView]]:
        for job in self.jobs:
            for stage in job.stages:
                if stage.runnable:
                    yield job, stage

    def num_runnable(self) -> int:
        return sum(1 for _ in self.runnable())


class EventError(ValueError):
    """An invalid scheduling event; `field` is the JSON path of the offending value."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class InvalidDecision(ValueError):
    """A scheduler answer the event does not allow (a stage that is not runnable, a limit out of range)."""


# ------------------------------------------------------------------------------------------- validation
def check_decision(event: SchedulingEvent, decision: Any) -> Decision:
    """The decision normalised to (StageRef | None, int); InvalidDecision when the event does not allow it."""
    if not isinstance(decision, (tuple, list)) or len(decision) != 2:
        raise InvalidDecision(f"a decision is (stage, parallelism_limit), got {decision!r}")
    stage, limit = decision
    if stage is None:
        return DECLINE
    if not isinstance(stage, (tuple, list)) or len(stage) != 2 or not all(_is_int(v) for v in stage):
        raise InvalidDecision(f"stage must be (job_id, stage_id) or None, got {stage!r}")
    ref = StageRef(int(stage[0]), int(stage[1]))
    job = event.job(ref.job_id)
    if job is None:
        raise InvalidDecision(f"job {ref.job_id} is not in the event")
    view = next((s for s in job.stages if s.stage_id == ref.stage_id), None)
    if view is None:
        raise InvalidDecision(f"job {ref.job_id} has no unfinished stage {ref.stage_id}")
    if not view.runnable:
        runnable = [tuple(StageRef(j.job_id, s.stage_id)) for j, s in event.runnable()]
        raise InvalidDecision(f"stage {tuple(ref)} is not runnable now; runnable: {runnable[:20]}")
    low = max(1, event.min_limit(job))
    if not _is_int(limit) or not low <= int(limit) <= event.num_executors:
        raise InvalidDecision(f"parallelism_limit for job {ref.job_id} must be an integer in "
                              f"[{low}, {event.num_executors}], got {limit!r}")
    return ref, int(limit)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ------------------------------------------------------------------------------------------------ JSON
def event_to_json(event: SchedulingEvent) -> dict[str, Any]:
    return {
        "time_s": event.time_s, "num_executors": event.num_executors, "free_executors": event.free_executors,
        "source_job": event.source_job,
        "jobs": [{"job_id": j.job_id, "name": j.name, "arrival_s": j.arrival_s, "executors": j.executors,
                  "stages": [{**s._asdict(), "children": list(s.children)} for s in j.stages]}
                 for j in event.jobs],
    }


def decision_to_json(decision: Decision) -> dict[str, Any]:
    stage, limit = decision
    return {"stage": None if stage is None else {"job_id": stage.job_id, "stage_id": stage.stage_id},
            "parallelism_limit": int(limit)}


def _int(doc: dict, key: str, where: str, low: int, high: int) -> int:
    value = doc.get(key)
    if not _is_int(value):
        raise EventError(f"{where}{key}", f"must be an integer, got {_kind(value)}")
    if not low <= value <= high:
        raise EventError(f"{where}{key}", f"must be in [{low}, {high}], got {value}")
    return value


def _num(doc: dict, key: str, where: str) -> float:
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise EventError(f"{where}{key}", f"must be a number, got {_kind(value)}")
    # Compared before any float conversion: a JSON integer may be too large for a float (10**400).
    if isinstance(value, float) and not math.isfinite(value) or value < 0 or value > 1e12:
        raise EventError(f"{where}{key}", f"must be finite, >= 0 and <= 1e12, got {value}")
    return float(value)


def _bool(doc: dict, key: str, where: str) -> bool:
    value = doc.get(key)
    if not isinstance(value, bool):
        raise EventError(f"{where}{key}", f"must be true or false, got {_kind(value)}")
    return value


def _list(doc: dict, key: str, where: str, high: int) -> list:
    value = doc.get(key)
    if not isinstance(value, list):
        raise EventError(f"{where}{key}", f"must be a list, got {_kind(value)}")
    if len(value) > high:
        raise EventError(f"{where}{key}", f"at most {high} entries, got {len(value)}")
    return value


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


def _parse_stage(doc: Any, where: str, num_executors: int) -> StageView:
    if not isinstance(doc, dict):
        raise EventError(where.rstrip("."), "must be an object")
    total = _int(doc, "tasks_total", where, 1, MAX_TASKS_PER_STAGE)
    remaining = _int(doc, "tasks_remaining", where, 0, total)
    running = _int(doc, "tasks_running", where, 0, total - remaining)
    demand = _int(doc, "demand", where, -num_executors, remaining)
    runnable = _bool(doc, "runnable", where)
    if runnable and demand < 1:
        raise EventError(f"{where}runnable", "a runnable stage needs demand >= 1")
    children = _list(doc, "children", where, MAX_STAGES_PER_JOB)
    for k, child in enumerate(children):
        if not _is_int(child):
            raise EventError(f"{where}children[{k}]", f"must be a stage id, got {_kind(child)}")
    return StageView(stage_id=_int(doc, "stage_id", where, 0, 10 * MAX_STAGES_PER_JOB), tasks_total=total,
                     tasks_remaining=remaining, tasks_running=running, demand=demand, runnable=runnable,
                     ready=_bool(doc, "ready", where), task_duration_s=_num(doc, "task_duration_s", where),
                     children=tuple(children))


def _check_graph(stages: tuple[StageView, ...], where: str) -> None:
    """Stage ids unique, children refer to listed stages, no cycle."""
    index = {}
    for k, s in enumerate(stages):
        if s.stage_id in index:
            raise EventError(f"{where}stages[{k}].stage_id", f"duplicate stage id {s.stage_id}")
        index[s.stage_id] = k
    indegree = {s.stage_id: 0 for s in stages}
    for k, s in enumerate(stages):
        for c, child in enumerate(s.children):
            if child not in index or child == s.stage_id:
                raise EventError(f"{where}stages[{k}].children[{c}]",
                                 f"{child} is not another unfinished stage of this job")
            indegree[child] += 1
    frontier = [sid for sid, d in indegree.items() if d == 0]
    seen = 0
    while frontier:
        sid = frontier.pop()
        seen += 1
        for child in stages[index[sid]].children:
            indegree[child] -= 1
            if indegree[child] == 0:
                frontier.append(child)
    if seen != len(stages):
        raise EventError(f"{where}stages", "the children links form a cycle")


def _parse_job(doc: Any, where: str, num_executors: int) -> JobView:
    if not isinstance(doc, dict):
        raise EventError(where.rstrip("."), "must be an object")
    name = doc.get("name", "")
    if not isinstance(name, str) or len(name) > 200:
        raise EventError(f"{where}name", "must be a string of at most 200 characters")
    raw_stages = _list(doc, "stages", where, MAX_STAGES_PER_JOB)
    if not raw_stages:
        raise EventError(f"{where}stages", "a job in the system has at least one unfinished stage")
    stages = tuple(_parse_stage(s, f"{where}stages[{k}].", num_executors) for k, s in enumerate(raw_stages))
    _check_graph(stages, where)
    return JobView(job_id=_int(doc, "job_id", where, 0, 2**53), name=name,
                   arrival_s=_num(doc, "arrival_s", where),
                   executors=_int(doc, "executors", where, 0, num_executors), stages=stages)


def parse_event(doc: Any) -> SchedulingEvent:
    """A SchedulingEvent from its JSON form; EventError naming the field on anything invalid."""
    if not isinstance(doc, dict):
        raise EventError("body", "must be a JSON object")
    num_executors = _int(doc, "num_executors", "", 1, MAX_EXECUTORS)
    free = _int(doc, "free_executors", "", 0, num_executors)
    raw_jobs = _list(doc, "jobs", "", MAX_JOBS)
    total = sum(len(j.get("stages", ())) for j in raw_jobs if isinstance(j, dict)
                and isinstance(j.get("stages"), list))
    if total > MAX_TOTAL_STAGES:
        raise EventError("jobs", f"at most {MAX_TOTAL_STAGES} stages in all, got {total}")
    jobs = tuple(_parse_job(j, f"jobs[{k}].", num_executors) for k, j in enumerate(raw_jobs))
    ids = set()
    for k, job in enumerate(jobs):
        if job.job_id in ids:
            raise EventError(f"jobs[{k}].job_id", f"duplicate job id {job.job_id}")
        ids.add(job.job_id)
    source = doc.get("source_job")
    if source is not None and (not _is_int(source) or source not in ids):
        raise EventError("source_job", f"must be null or the id of a listed job, got {source!r}")
    if source is not None:
        k = next(k for k, job in enumerate(jobs) if job.job_id == source)
        if jobs[k].executors < free:
            raise EventError(f"jobs[{k}].executors", "the source job holds its free executors: "
                             f"executors must be >= free_executors ({free})")
    event = SchedulingEvent(time_s=_num(doc, "time_s", ""), num_executors=num_executors, free_executors=free,
                            source_job=source, jobs=jobs)
    for k, job in enumerate(jobs):
        # The runnable rule above: no valid limit exists for a job that cannot take one more executor.
        if any(stage.runnable for stage in job.stages) and event.min_limit(job) > num_executors:
            raise EventError(f"jobs[{k}].executors", f"a job with a runnable stage must hold fewer than "
                             f"num_executors ({num_executors}) executors unless it is the source job")
    return event
