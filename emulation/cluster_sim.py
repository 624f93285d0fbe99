"""Event-driven Spark-cluster simulator in the style of Decima (SIGCOMM'19) and spark-sched-sim.

Jobs are TPC-H query DAGs (`traces.jobs`) arriving over time; identical executors run their stages' tasks.
The scheduler is consulted in decision rounds (`controller.cjs.observation` explains the event and the
answer) and everything else follows Decima's environment:

Executors live in pools: the common pool (no job), a job's pool (idle at the job) or a stage's pool (working
on the stage). An executor that finishes a task keeps working on its stage while the stage has tasks left
(no decision). Otherwise:
- if the executor's stage already promised its executors somewhere (an earlier round), it goes there;
- else a round starts with the stage's pool as source (its busy executors included: they are promised now
  and move when their task ends), or with the job's pool when the finished stage made new stages ready.
A job arrival starts a round with the common pool as source when it has executors. After a round, executors
not promised anywhere are parked: in their job's pool while the job has unstarted tasks, else in the common
pool (which is offered again at the next job arrival).

A stage may be chosen once every parent has all its tasks started or promised (Decima's frontier rule;
`SimConfig.runnable_rule="parents-finished"` waits for the parents to finish instead). Placing an executor
on a stage of another job (or from the common pool) takes the moving delay (2 s); tasks start only once
every parent stage has finished (an executor promised earlier waits at the job).
A task's duration is drawn from the stage's measurements: the executor level is chosen between the two
measured levels (5, 10, 20, 40, 50, 60, 80, 100) around the job's current executor count, at random with
odds by distance (Decima's rule; a level the stage lacks becomes its largest level); then
- an executor fresh to the job (it just arrived or sat idle): a fresh duration, else a first-wave one plus
  the warm-up delay (1 s);
- the same stage as its previous task: a rest-wave duration (first wave, then fresh, when the level has none);
- another stage of the job: a first-wave duration (fresh when none).

Every random draw (arrivals, then durations) comes from one numpy Generator seeded by `reset(seed)`; the job
stream is drawn first, so every policy sees the same jobs for a seed. Reward/JCT: the simulator integrates
the number of jobs in the system over time (`job_seconds`); the mean JCT is that integral over the jobs.
"""

from __future__ import annotations

import heapq
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from controller.cjs.observation import (
    DECLINE,
    Decision,
    InvalidDecision,
    JobView,
    SchedulingEvent,
    StageRef,
    StageView,
)
from traces.jobs import QUERY_SIZES, JobArrival, JobCatalog, JobDag, StageSpec, generate_arrivals

EXECUTOR_LEVELS: tuple[int, ...] = (5, 10, 20, 40, 50, 60, 80, 100)
_ARRIVAL, _TASK_DONE, _EXEC_ARRIVAL = 0, 1, 2
RUNNABLE_RULES: tuple[str, ...] = ("decima", "parents-finished")
_UNIFORM_BLOCK = 4096


@dataclass
class SimConfig:
    num_executors: int = 50
    num_jobs: int = 200
    initial_jobs: int = 1
    mean_gap_s: float = 25.0
    moving_delay_s: float = 2.0
    warmup_delay_s: float = 1.0
    sizes: tuple[str, ...] = QUERY_SIZES
    runnable_rule: str = "decima"
    """"decima": a stage may get executors once every parent has all its tasks started or promised (they
    wait at the job until the parents finish); "parents-finished": only once every parent has finished."""
    record_tasks: bool = False
    """keep one TaskRecord per task (tests, plots); costs memory."""
    check_invariants: bool = False
    """verify the bookkeeping after every decision and round (slow; tests)."""

    def __post_init__(self) -> None:
        if self.num_executors < 1 or self.num_jobs < 1 or not 0 <= self.initial_jobs <= self.num_jobs:
            raise ValueError("need num_executors >= 1, num_jobs >= 1, 0 <= initial_jobs <= num_jobs")
        if not self.mean_gap_s > 0 or self.moving_delay_s < 0 or self.warmup_delay_s < 0:
            raise ValueError("need mean_gap_s > 0 and non-negative delays")
        if self.runnable_rule not in RUNNABLE_RULES:
            raise ValueError(f"runnable_rule must be one of {RUNNABLE_RULES}, got {self.runnable_rule!r}")


class SchedulerStall(RuntimeError):
    """The scheduler left work undone with nothing running and no job left to arrive."""


class SimulatorError(RuntimeError):
    """Broken internal bookkeeping (a bug): an invariant check failed."""


@dataclass(frozen=True)
class JobResult:
    job_id: int
    query: int
    size: str
    arrival_s: float
    completion_s: float

    @property
    def jct_s(self) -> float:
        return self.completion_s - self.arrival_s


@dataclass(frozen=True)
class TaskRecord:
    job_id: int
    stage_id: int
    executor: int
    start_s: float
    duration_s: float
    wave: str
    """"fresh", "first", "rest" or "warmup" (first wave + warm-up delay)."""
    level: int
    """the measured executor level the duration was drawn from."""


@dataclass
class EpisodeResult:
    jobs: list[JobResult]
    decisions: int
    events: int
    wall_s: float
    end_time_s: float
    job_seconds: float
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def mean_jct_s(self) -> float:
        return float(np.mean([j.jct_s for j in self.jobs])) if self.jobs else float("nan")


# ----------------------------------------------------------------------------------------- internal state
RELEASE = "release"
"""Commitment target meaning: no stage, park the executor when it is free."""


class _Pool:
    __slots__ = ("members", "commits", "ncommits", "job", "stage")

    def __init__(self, job: _Job | None = None, stage: _Stage | None = None) -> None:
        self.members: set[int] = set()
        self.commits: dict[Any, int] = {}
        self.ncommits = 0
        self.job = job
        self.stage = stage


class _Stage:
    __slots__ = ("job", "idx", "spec", "num_tasks", "unlaunched", "running", "finished", "moving",
                 "committed", "parents", "children", "parents_left", "pool", "last_duration_s", "tables")

    def __init__(self, job: _Job, spec: StageSpec, tables: _Tables) -> None:
        self.job = job
        self.idx = spec.index
        self.spec = spec
        self.num_tasks = spec.num_tasks
        self.unlaunched = spec.num_tasks
        self.running = 0
        self.finished = 0
        self.moving = 0
        self.committed = 0
        self.parents: list[_Stage] = []
        self.children: list[_Stage] = []
        self.parents_left = len(spec.parents)
        self.pool = _Pool(job, self)
        self.last_duration_s = spec.mean_duration_s
        self.tables = tables


class _Job:
    __slots__ = ("id", "dag", "arrival_s", "completion_s", "stages", "active", "local", "supply",
                 "saturated_stages", "done_stages", "pool", "name")

    def __init__(self, job_id: int, dag: JobDag, arrival_s: float, tables: list[_Tables]) -> None:
        self.id = job_id
        self.dag = dag
        self.name = dag.name
        self.arrival_s = arrival_s
        self.completion_s = float("nan")
        self.stages = [_Stage(self, spec, tab) for spec, tab in zip(dag.stages, tables)]
        for st in self.stages:
            st.parents = [self.stages[p] for p in st.spec.parents]
            st.children = [self.stages[c] for c in st.spec.children]
        self.active: list[_Stage] = list(self.stages)
        self.local = 0
        self.supply = 0
        self.saturated_stages = 0
        self.done_stages = 0
        self.pool = _Pool(self, None)

    @property
    def saturated(self) -> bool:
        return self.saturated_stages == len(self.stages)

    @property
    def completed(self) -> bool:
        return self.done_stages == len(self.stages)


_Choice = tuple[tuple[float, ...], float, str, int]
"""(durations to draw from, seconds added, wave name, measured level they come from)."""
_Tables = tuple[dict[int, _Choice], dict[int, _Choice], dict[int, _Choice]]
"""Per executor level: (fresh executor, same stage as its last task, another stage of the job)."""


def _stage_tables(spec: StageSpec, warmup_delay_s: float) -> _Tables:
    """Decima's fallbacks resolved once per stage: which measurements each kind of task draws from."""
    top = max(spec.first_wave)
    fresh_t: dict[int, _Choice] = {}
    same_t: dict[int, _Choice] = {}
    other_t: dict[int, _Choice] = {}
    for level in EXECUTOR_LEVELS:
        key = level if level in spec.first_wave else top
        first, rest, fresh = spec.first_wave[key], spec.rest_wave[key], spec.fresh[key]
        fresh_t[level] = (fresh, 0.0, "fresh", key) if fresh else (first, warmup_delay_s, "warmup", key)
        other_t[level] = (first, 0.0, "first", key) if first else (fresh, 0.0, "fresh", key)
        same_t[level] = (rest, 0.0, "rest", key) if rest else other_t[level]
        for values, _, _, _ in (fresh_t[level], other_t[level]):
            if not values:
                raise ValueError(f"stage {spec.index}: no durations at level {key}")
    return fresh_t, same_t, other_t


def _level_intervals(num_executors: int) -> list[tuple[int, int]]:
    """For each executor count n, the measured levels (left, right) around it."""
    out = []
    for n in range(num_executors + 1):
        if n <= EXECUTOR_LEVELS[0]:
            out.append((EXECUTOR_LEVELS[0], EXECUTOR_LEVELS[0]))
        elif n >= EXECUTOR_LEVELS[-1]:
            out.append((EXECUTOR_LEVELS[-1], EXECUTOR_LEVELS[-1]))
        else:
            right = next(lv for lv in EXECUTOR_LEVELS if lv >= n)
            left = right if right == n else EXECUTOR_LEVELS[EXECUTOR_LEVELS.index(right) - 1]
            out.append((left, right))
    return out


# ------------------------------------------------------------------------------------------------ simulator
class ClusterSim:
    """`reset(seed)` -> first SchedulingEvent; `step(decision)` -> next event, or None when every job is done.

    `run(policy)` plays a whole episode. Decisions are checked: a stage that is not runnable, or a limit
    out of `[event.min_limit(job), num_executors]`, raises InvalidDecision and leaves the state untouched.
    """

    def __init__(self, cfg: SimConfig | None = None, catalog: JobCatalog | None = None) -> None:
        self.cfg = cfg or SimConfig()
        self.catalog = catalog or JobCatalog()
        self._intervals = _level_intervals(self.cfg.num_executors)
        self._parents_finished_rule = self.cfg.runnable_rule == "parents-finished"
        self._event: SchedulingEvent | None = None
        self.jobs: list[_Job] = []
        self._tables: dict[tuple[int, str], list[_Tables]] = {}

    # ---------------------------------------------------------------------------------------- public API
    def reset(self, seed: int | None = None,
              arrivals: list[JobArrival] | None = None) -> SchedulingEvent | None:
        cfg = self.cfg
        self.rng = np.random.default_rng(seed)
        if arrivals is None:
            arrivals = generate_arrivals(self.rng, cfg.num_jobs, cfg.mean_gap_s, cfg.initial_jobs, cfg.sizes)
        self.arrivals = list(arrivals)
        self._uniforms: list[float] = []
        self._u_pos = 0
        self.now = 0.0
        self.job_seconds = 0.0
        self.decisions = 0
        self.events = 0
        self.rounds = 0
        self.tasks: list[TaskRecord] = []
        self._heap: list[tuple] = []
        self._seq = itertools.count()
        self.jobs = [self._make_job(a) for a in self.arrivals]
        self.active_jobs: list[_Job] = []
        self.finished_jobs: list[_Job] = []
        n = cfg.num_executors
        self.common = _Pool()
        self.common.members.update(range(n))
        self.ex_pool: list[_Pool | None] = [self.common] * n
        self.ex_job: list[_Job | None] = [None] * n
        self.ex_stage: list[_Stage | None] = [None] * n  # stage of its last task; None: fresh (idle/moved)
        self.ex_busy: list[bool] = [False] * n
        self.source: _Pool | None = None
        self.selected: set[_Stage] = set()
        self._selectable: dict[tuple[int, int], _Stage] = {}
        for job in self.jobs:
            self._push(job.arrival_s, _ARRIVAL, job, None)
        self._wall_start = time.perf_counter()
        # jobs present at time zero all arrive before the first decision
        while self._heap and self._heap[0][0] <= 0.0:
            _, _, _, job, _ = heapq.heappop(self._heap)
            self.events += 1
            self._on_job_arrival(job)
        event = self._continue()
        return event if event is not None else self._advance()

    def _make_job(self, arrival: JobArrival) -> _Job:
        dag = self.catalog.get(arrival.query, arrival.size)
        key = (arrival.query, arrival.size)
        tables = self._tables.get(key)
        if tables is None:
            tables = self._tables[key] = [_stage_tables(s, self.cfg.warmup_delay_s) for s in dag.stages]
        return _Job(arrival.job_id, dag, arrival.arrival_s, tables)

    @property
    def event(self) -> SchedulingEvent | None:
        """The decision pending now (None once the episode is over)."""
        return self._event

    @property
    def done(self) -> bool:
        return self._event is None and len(self.finished_jobs) == len(self.jobs)

    def step(self, decision: Decision) -> SchedulingEvent | None:
        if self._event is None:
            raise RuntimeError("no decision is pending (call reset first, or the episode is over)")
        stage, limit = self._check(decision)
        if stage is None:
            self._end_round()
            return self._advance()
        src = self.source
        free = len(src.members) - src.ncommits
        job = stage.job
        base = job.supply - (free if job is src.job else 0)
        demand = stage.unlaunched - stage.moving - stage.committed
        self._commit(min(free, limit - base, demand), stage)
        self.selected.add(stage)
        self.decisions += 1
        if self.cfg.check_invariants:
            self.check_invariants()
        if len(src.members) - src.ncommits > 0 and self._has_selectable():
            return self._new_event()
        self._end_round()
        return self._advance()

    def run(self, policy: Any, seed: int | None = None,
            arrivals: list[JobArrival] | None = None) -> EpisodeResult:
        """One episode with `policy` (a CjsPolicy); `observe_outcome` gets each round's reward."""
        policy.reset()
        event = self.reset(seed, arrivals)
        rounds = self.rounds
        seconds = self.job_seconds
        while event is not None:
            event = self.step(policy.schedule(event))
            if self.rounds != rounds:
                policy.observe_outcome(-(self.job_seconds - seconds))
                rounds, seconds = self.rounds, self.job_seconds
        return self.result()

    def result(self) -> EpisodeResult:
        done = [JobResult(j.id, j.dag.query, j.dag.size, j.arrival_s, j.completion_s)
                for j in sorted(self.finished_jobs, key=lambda j: j.id)]
        return EpisodeResult(jobs=done, decisions=self.decisions, events=self.events,
                             wall_s=time.perf_counter() - self._wall_start, end_time_s=self.now,
                             job_seconds=self.job_seconds,
                             stats={"rounds": self.rounds, "tasks": sum(j.dag.num_tasks for j in self.jobs)})

    # ------------------------------------------------------------------------------------ decision rounds
    def _check(self, decision: Any) -> tuple[_Stage | None, int]:
        if not isinstance(decision, (tuple, list)) or len(decision) != 2:
            raise InvalidDecision(f"a decision is (stage, parallelism_limit), got {decision!r}")
        ref, limit = decision
        if ref is None:
            return None, 0
        try:
            key = (int(ref[0]), int(ref[1]))
        except (TypeError, ValueError, IndexError):
            raise InvalidDecision(f"stage must be (job_id, stage_id) or None, got {ref!r}") from None
        stage = self._selectable.get(key)
        if stage is None:
            runnable = sorted(self._selectable)[:20]
            raise InvalidDecision(f"stage {key} is not runnable at t={self.now:.3f}s; runnable: {runnable}")
        src = self.source
        free = len(src.members) - src.ncommits
        low = stage.job.supply - (free if stage.job is src.job else 0) + 1
        if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) \
                or not low <= int(limit) <= self.cfg.num_executors:
            raise InvalidDecision(f"parallelism_limit for job {key[0]} must be an integer in "
                                  f"[{low}, {self.cfg.num_executors}], got {limit!r}")
        return stage, int(limit)

    def _runnable(self, st: _Stage) -> bool:
        if st.unlaunched - st.moving - st.committed <= 0 or st in self.selected:
            return False
        if self._parents_finished_rule:
            return st.parents_left == 0
        for p in st.parents:
            if p.unlaunched - p.moving - p.committed > 0:
                return False
        return True

    def _has_selectable(self) -> bool:
        src_job = self.source.job if self.source is not None else None
        limit = self.cfg.num_executors
        for job in self.active_jobs:
            if job.supply >= limit and job is not src_job:
                continue
            for st in job.active:
                if self._runnable(st):
                    return True
        return False

    def _new_event(self) -> SchedulingEvent:
        """Build the event (and the runnable map the answer is checked against)."""
        src = self.source
        src_job = src.job
        limit = self.cfg.num_executors
        selectable: dict[tuple[int, int], _Stage] = {}
        jobs = []
        for job in self.active_jobs:
            open_ = job.supply < limit or job is src_job
            views = []
            for st in job.active:
                demand = st.unlaunched - st.moving - st.committed
                runnable = open_ and self._runnable(st)
                if runnable:
                    selectable[(job.id, st.idx)] = st
                views.append(StageView(st.idx, st.num_tasks, st.unlaunched, st.running, demand, runnable,
                                       st.parents_left == 0, st.last_duration_s, st.spec.children))
            jobs.append(JobView(job.id, job.name, job.arrival_s, job.supply, tuple(views)))
        self._selectable = selectable
        source_job = src_job.id if src_job is not None and not src_job.completed else None
        free = len(src.members) - src.ncommits
        self._event = SchedulingEvent(self.now, limit, free, source_job, tuple(jobs))
        return self._event

    def _commit(self, n: int, dst: Any) -> None:
        src = self.source
        src.commits[dst] = src.commits.get(dst, 0) + n
        src.ncommits += n
        if dst is not RELEASE:
            dst.committed += n
            if dst.job is not src.job:
                dst.job.supply += n

    def _end_round(self) -> None:
        """Promise the rest to RELEASE, move the idle source executors now, close the round."""
        src = self.source
        rest = len(src.members) - src.ncommits
        if rest > 0:
            self._commit(rest, RELEASE)
        idle = [e for e in src.members if not self.ex_busy[e]]
        for e in idle:
            if not src.commits:
                break
            self._fulfil(e, src)
        self.source = None
        self.selected.clear()
        self._event = None
        self.rounds += 1
        if self.cfg.check_invariants:
            self.check_invariants()

    def _fulfil(self, e: int, src: _Pool) -> None:
        """Executor `e` (in pool `src`, not busy) takes the pool's oldest promise."""
        dst = next(iter(src.commits))
        left = src.commits[dst] - 1
        if left:
            src.commits[dst] = left
        else:
            del src.commits[dst]
        src.ncommits -= 1
        if dst is RELEASE:
            self._park(e)
            return
        dst.committed -= 1
        if dst.job is not src.job:
            dst.job.supply -= 1
        self._move_to_stage(e, dst)

    # --------------------------------------------------------------------------------- executor movement
    def _to_pool(self, e: int, pool: _Pool) -> None:
        old = self.ex_pool[e]
        if old is not None:
            old.members.discard(e)
        pool.members.add(e)
        self.ex_pool[e] = pool

    def _leave_job(self, e: int) -> None:
        job = self.ex_job[e]
        if job is not None:
            job.local -= 1
            job.supply -= 1
            self.ex_job[e] = None

    def _park(self, e: int) -> None:
        """An executor with nowhere to go: its job's pool while the job has unstarted tasks, else common."""
        pool = self.ex_pool[e]
        self.ex_stage[e] = None
        if pool is self.common:
            return
        job = pool.job
        if job.saturated:
            self._leave_job(e)
            self._to_pool(e, self.common)
        elif pool.stage is not None:
            self._to_pool(e, job.pool)

    def _move_to_stage(self, e: int, st: _Stage) -> None:
        if st.unlaunched == 0:  # others took its last tasks meanwhile
            self._backup(e)
            return
        if self.ex_job[e] is not st.job:
            self._send(e, st)
            return
        if st.parents_left:  # promised early: wait at the job until the parents finish
            self.ex_stage[e] = None
            self._to_pool(e, st.job.pool)
            return
        self._to_pool(e, st.pool)
        self._start_task(e, st)

    def _backup(self, e: int) -> None:
        """Decima's fallback for an executor whose stage no longer needs it: a runnable stage of its own
        job, else of another job that can take executors, else park it."""
        own = self.ex_job[e]
        limit = self.cfg.num_executors
        choice = None
        if own is not None:
            for st in own.active:
                if self._runnable(st):
                    choice = st
        if choice is None:
            for job in self.active_jobs:
                if job is own or job.supply >= limit:
                    continue
                for st in job.active:
                    if self._runnable(st):
                        choice = st
        if choice is None:
            self._park(e)
        else:
            self._move_to_stage(e, choice)

    def _send(self, e: int, st: _Stage) -> None:
        old = self.ex_pool[e]
        if old is not None:
            old.members.discard(e)
        self.ex_pool[e] = None
        self._leave_job(e)
        self.ex_stage[e] = None
        st.moving += 1
        st.job.supply += 1
        self._push(self.now + self.cfg.moving_delay_s, _EXEC_ARRIVAL, e, st)

    def _start_task(self, e: int, st: _Stage) -> None:
        """Executor `e` (at `st`'s job) starts `st`'s next task. This is the simulator's hot path (once per
        task), hence the inlined level choice and draws."""
        if st.parents_left:
            raise SimulatorError(f"job {st.job.id} stage {st.idx} would start before its parents finished")
        st.unlaunched -= 1
        st.running += 1
        job = st.job
        if st.unlaunched == 0:
            job.saturated_stages += 1
        # level: between the measured levels around the job's executor count, odds by distance
        n = job.local
        intervals = self._intervals
        left, right = intervals[n] if n < len(intervals) else intervals[-1]
        uniforms = self._uniforms
        if self._u_pos + 2 > len(uniforms):
            uniforms = self._uniforms = uniforms[self._u_pos:] + self.rng.random(_UNIFORM_BLOCK).tolist()
            self._u_pos = 0
        pos = self._u_pos
        if left != right:
            if 1 + int(uniforms[pos] * (right - left)) > n - left:
                left = right
            pos += 1
        previous = self.ex_stage[e]
        tables = st.tables
        values, extra, wave, level = (tables[0] if previous is None
                                      else tables[1] if previous is st else tables[2])[left]
        duration = values[int(uniforms[pos] * len(values))] + extra
        self._u_pos = pos + 1
        if self.cfg.record_tasks:
            self.tasks.append(TaskRecord(job.id, st.idx, e, self.now, duration, wave, level))
        st.last_duration_s = duration
        self.ex_busy[e] = True
        self.ex_stage[e] = st
        heapq.heappush(self._heap, (self.now + duration, next(self._seq), _TASK_DONE, e, st))

    # ------------------------------------------------------------------------------------- event loop
    def _push(self, t: float, kind: int, a: Any, b: Any) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), kind, a, b))

    def _continue(self) -> SchedulingEvent | None:
        """After an event: a decision if the source has free executors and something is runnable."""
        src = self.source
        if src is not None and len(src.members) - src.ncommits > 0:
            if self._has_selectable():
                return self._new_event()
            for e in [e for e in src.members if not self.ex_busy[e]]:
                self._park(e)
        self.source = None
        return None

    def _advance(self) -> SchedulingEvent | None:
        heap = self._heap
        pop = heapq.heappop
        while heap:
            t, _, kind, a, b = pop(heap)
            if t > self.now:
                self.job_seconds += len(self.active_jobs) * (t - self.now)
                self.now = t
            self.events += 1
            if kind == _TASK_DONE:
                b.running -= 1
                b.finished += 1
                if b.unlaunched > 0:  # the executor keeps working on its stage: no decision
                    self._start_task(a, b)
                    continue
                self.ex_busy[a] = False
                self._on_task_done(a, b)
            elif kind == _EXEC_ARRIVAL:
                self._on_executor_arrival(a, b)
            else:
                self._on_job_arrival(a)
            if self.source is not None:
                event = self._continue()
                if event is not None:
                    return event
        if len(self.finished_jobs) != len(self.jobs):
            raise SchedulerStall(
                f"t={self.now:.3f}s: {len(self.jobs) - len(self.finished_jobs)} jobs unfinished, nothing "
                "running and no job left to arrive (the scheduler declined every runnable stage)")
        return None

    def _on_job_arrival(self, job: _Job) -> None:
        self.active_jobs.append(job)
        if self.common.members:
            self.source = self.common

    def _on_executor_arrival(self, e: int, st: _Stage) -> None:
        st.moving -= 1
        job = st.job
        self.ex_job[e] = job
        job.local += 1
        self._to_pool(e, job.pool)
        self._move_to_stage(e, st)

    def _on_task_done(self, e: int, st: _Stage) -> None:
        """Executor `e` finished a task of `st` and `st` has no task left to start."""
        job = st.job
        frontier_changed = False
        if st.finished == st.num_tasks:
            frontier_changed = self._on_stage_done(st)
        if job.completed:
            self._on_job_done(job)
        pool = st.pool
        had_promise = pool.ncommits > 0
        if had_promise:
            self._fulfil(e, pool)
        else:
            self.ex_stage[e] = None
            if frontier_changed:
                self._park(e)
        if frontier_changed:
            self.source = job.pool
        elif not had_promise:
            self.source = pool

    def _on_stage_done(self, st: _Stage) -> bool:
        job = st.job
        job.active.remove(st)
        job.done_stages += 1
        changed = False
        for child in st.children:
            child.parents_left -= 1
            if child.parents_left == 0:
                changed = True
        return changed

    def _on_job_done(self, job: _Job) -> None:
        job.completion_s = self.now
        self.active_jobs.remove(job)
        self.finished_jobs.append(job)
        for e in list(job.pool.members):
            self._leave_job(e)
            self._to_pool(e, self.common)

    # ----------------------------------------------------------------------------------------- checks
    def check_invariants(self) -> None:
        """Recount everything from scratch and compare with the incremental bookkeeping."""
        n = self.cfg.num_executors
        pools = [self.common] + [j.pool for j in self.jobs] + [s.pool for j in self.jobs for s in j.stages]
        placed = sum(len(p.members) for p in pools)
        moving = sum(1 for e in range(n) if self.ex_pool[e] is None)
        if placed + moving != n:
            raise SimulatorError(f"executors not conserved: {placed} placed + {moving} moving != {n}")
        for e in range(n):
            pool = self.ex_pool[e]
            if pool is not None and e not in pool.members:
                raise SimulatorError(f"executor {e} is not in the pool it points to")
            if pool is not None and pool.job is not self.ex_job[e]:
                raise SimulatorError(f"executor {e}: pool job and executor job differ")
        for job in self.jobs:
            local = sum(1 for e in range(n) if self.ex_job[e] is job)
            if local != job.local:
                raise SimulatorError(f"job {job.id}: local count {job.local} != {local}")
            if job in self.active_jobs:
                inbound = sum(c for p in pools if p.job is not job
                              for d, c in p.commits.items() if d is not RELEASE and d.job is job)
                expect = local + sum(s.moving for s in job.stages) + inbound
                if expect != job.supply:
                    raise SimulatorError(f"job {job.id}: supply {job.supply} != recount {expect}")
            for st in job.stages:
                busy = sum(1 for e in st.pool.members if self.ex_busy[e])
                if st.unlaunched + st.running + st.finished != st.num_tasks or busy != st.running:
                    raise SimulatorError(f"job {job.id} stage {st.idx}: task counts inconsistent")
                if st.running and any(p.finished != p.num_tasks for p in st.parents):
                    raise SimulatorError(f"job {job.id} stage {st.idx} runs before its parents finished")
                promised = sum(p.commits.get(st, 0) for p in pools)
                if promised != st.committed:
                    raise SimulatorError(f"job {job.id} stage {st.idx}: {st.committed} promised, "
                                         f"{promised} found")
        for p in pools:
            if p.ncommits != sum(p.commits.values()) or p.ncommits > len(p.members):
                raise SimulatorError("a pool promised more executors than it holds")


def simulate(policy: Any, seed: int, cfg: SimConfig | None = None,
             catalog: JobCatalog | None = None) -> EpisodeResult:
    """One episode of `policy` (a CjsPolicy instance) on the stream drawn from `seed`."""
    return ClusterSim(cfg, catalog).run(policy, seed)


__all__ = ["ClusterSim", "SimConfig", "EpisodeResult", "JobResult", "TaskRecord", "SchedulerStall",
           "SimulatorError", "InvalidDecision", "DECLINE", "StageRef", "simulate", "EXECUTOR_LEVELS"]
