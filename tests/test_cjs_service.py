"""`POST /v1/cjs/schedule`: round trips on the simulator's events, sessions, malformed input -> 4xx."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.app import ControllerConfig
from controller.cjs.observation import (
    EventError,
    StageRef,
    check_decision,
    event_to_json,
    parse_event,
)
from controller.cjs.policies import make_policy
from controller.runner import run_controller
from emulation.cluster_sim import ClusterSim, SimConfig
from traces.jobs import JobCatalog

CFG = SimConfig(num_executors=10, num_jobs=4, initial_jobs=2, mean_gap_s=10.0, sizes=("2g", "5g"))


@pytest.fixture(scope="module")
def catalog(shared_data: Path) -> JobCatalog:
    return JobCatalog(shared_data / "cjs" / "tpch")


@pytest.fixture(scope="module")
def event_doc(catalog: JobCatalog) -> dict[str, Any]:
    """A real event a few decisions into an episode (several jobs, runnable and blocked stages)."""
    sim = ClusterSim(CFG, catalog)
    event = sim.reset(seed=3)
    policy = make_policy("fair")
    while len(event.jobs) < 2 or event.free_executors < 2:
        event = sim.step(policy.schedule(event))
    return event_to_json(event)


async def schedule(http: aiohttp.ClientSession, url: str, doc: Any, **kwargs: Any) -> tuple[int, dict]:
    async with http.post(url + "/v1/cjs/schedule", json=doc, **kwargs) as resp:
        return resp.status, await resp.json()


def controller(**overrides: Any):
    return run_controller(ControllerConfig(tasks=["cjs"], **overrides))


@pytest.mark.parametrize("policy", ["fifo", "fifo-cap25", "fair"])
async def test_round_trip_matches_the_policy(event_doc: dict, policy: str) -> None:
    expected = make_policy(policy).schedule(parse_event(event_doc))
    async with controller() as url, aiohttp.ClientSession() as http:
        status, answer = await schedule(http, url, {**event_doc, "policy": policy})
    assert status == 200, answer
    assert answer["policy"] == policy and answer["latency_ms"] >= 0
    assert answer["stage"] == {"job_id": expected[0].job_id, "stage_id": expected[0].stage_id}
    assert answer["parallelism_limit"] == expected[1]


async def test_a_whole_episode_driven_over_http(catalog: JobCatalog) -> None:
    sim = ClusterSim(CFG, catalog)
    local = ClusterSim(CFG, catalog).run(make_policy("fair"), seed=5)
    event = sim.reset(seed=5)
    requests = 0
    async with controller() as url, aiohttp.ClientSession() as http:
        while event is not None:
            requests += 1
            status, answer = await schedule(http, url, {**event_to_json(event), "session_id": "ep"})
            assert status == 200, answer
            stage = answer["stage"] and StageRef(answer["stage"]["job_id"], answer["stage"]["stage_id"])
            event = sim.step((stage, answer["parallelism_limit"]))
        async with http.get(url + "/healthz") as resp:
            health = await resp.json()
    assert [j.jct_s for j in sim.result().jobs] == [j.jct_s for j in local.jobs]
    assert health["cjs_decisions"] == requests >= sim.decisions and health["cjs_policy_failures"] == 0


async def test_decline_when_nothing_is_runnable(event_doc: dict) -> None:
    doc = copy.deepcopy(event_doc)
    for job in doc["jobs"]:
        for stage in job["stages"]:
            stage["runnable"] = False
    async with controller() as url, aiohttp.ClientSession() as http:
        status, answer = await schedule(http, url, doc)
        assert status == 200 and answer["stage"] is None and answer["policy"] == "fair"
        async with http.get(url + "/v1/cjs/policies") as resp:
            listing = await resp.json()
    assert {"fifo", "fifo-cap25", "fair", "decima", "netllm-cjs"} <= set(listing["available"])
    assert "decima" in listing["reserved"] and "fair" in listing["implemented"]


def _mutations(doc: dict) -> list[tuple[str, Any, str]]:
    """(description, mutated body, field the 400 must name)."""
    job = doc["jobs"][0]

    def edit(fn) -> dict:
        out = copy.deepcopy(doc)
        fn(out)
        return out

    runnable = next(i for i, s in enumerate(job["stages"]) if s["runnable"])
    return [
        ("no executors field", edit(lambda d: d.pop("num_executors")), "num_executors"),
        ("free > cluster", edit(lambda d: d.update(free_executors=d["num_executors"] + 1)), "free_executors"),
        ("negative time", edit(lambda d: d.update(time_s=-1)), "time_s"),
        ("string time", edit(lambda d: d.update(time_s="now")), "time_s"),
        ("jobs not a list", edit(lambda d: d.update(jobs={})), "jobs"),
        ("too many jobs", edit(lambda d: d.update(jobs=[{"job_id": k} for k in range(2001)])), "jobs"),
        ("duplicate job", edit(lambda d: d["jobs"].append(copy.deepcopy(d["jobs"][0]))), "jobs[%d].job_id"
         % len(doc["jobs"])),
        ("unknown source job", edit(lambda d: d.update(source_job=12345)), "source_job"),
        ("source job without its free executors",
         edit(lambda d: d.update(source_job=d["jobs"][0]["job_id"]) or d["jobs"][0].update(executors=0)),
         "jobs[0].executors"),
        ("job executors > cluster", edit(lambda d: d["jobs"][0].update(executors=10_000)),
         "jobs[0].executors"),
        ("no stages", edit(lambda d: d["jobs"][0].update(stages=[])), "jobs[0].stages"),
        ("unknown child", edit(lambda d: d["jobs"][0]["stages"][0].update(children=[99])),
         "jobs[0].stages[0].children[0]"),
        ("self loop", edit(lambda d: d["jobs"][0]["stages"][0].update(
            children=[d["jobs"][0]["stages"][0]["stage_id"]])), "jobs[0].stages[0].children[0]"),
        ("remaining > total", edit(lambda d: d["jobs"][0]["stages"][0].update(tasks_remaining=10**8)),
         "jobs[0].stages[0].tasks_remaining"),
        ("bool as count", edit(lambda d: d["jobs"][0]["stages"][0].update(tasks_running=True)),
         "jobs[0].stages[0].tasks_running"),
        ("runnable without demand", edit(lambda d: d["jobs"][0]["stages"][runnable].update(demand=0)),
         f"jobs[0].stages[{runnable}].runnable"),
        ("duplicate stage",
         edit(lambda d: d["jobs"][0]["stages"].append(copy.deepcopy(d["jobs"][0]["stages"][0]))),
         f"jobs[0].stages[{len(job['stages'])}].stage_id"),
        ("time beyond a float", edit(lambda d: d.update(time_s=10**400)), "time_s"),
        ("arrival beyond a float", edit(lambda d: d["jobs"][0].update(arrival_s=10**400)), "jobs[0].arrival_s"),
        ("runnable job already holds every executor",
         edit(lambda d: d.update(source_job=None) or d["jobs"][0].update(executors=d["num_executors"])),
         "jobs[0].executors"),
        ("bad policy type", edit(lambda d: d.update(policy=3)), "policy"),
        ("unknown policy", edit(lambda d: d.update(policy="sjf")), "policy"),
        ("bad session id", edit(lambda d: d.update(session_id=["x"])), "session_id"),
        ("bad reset", edit(lambda d: d.update(reset="yes")), "reset"),
    ]


async def test_malformed_events_get_400_naming_the_field(event_doc: dict) -> None:
    cases = _mutations(event_doc)
    cycle = copy.deepcopy(event_doc)
    stages = cycle["jobs"][0]["stages"]
    if len(stages) >= 2:
        stages[0]["children"] = [stages[1]["stage_id"]]
        stages[1]["children"] = [stages[0]["stage_id"]]
        cases.append(("cycle", cycle, "jobs[0].stages"))
    async with controller() as url, aiohttp.ClientSession() as http:
        for what, body, field in cases:
            status, answer = await schedule(http, url, body)
            assert status == 400, (what, answer)
            assert answer["field"] == field, (what, answer)
        status, answer = await schedule(http, url, [1, 2])
        assert status == 400 and answer["field"] == "body"
        async with http.post(url + "/v1/cjs/schedule", data=b"{\"time_s\": NaN}",
                             headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == 400
        async with http.post(url + "/v1/cjs/schedule", data=b"x" * 300_000,
                             headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == 413
        status, answer = await schedule(http, url, {**event_doc, "policy": "no-such-scheduler"})
        assert 400 <= status < 500 and answer["field"] == "policy"
        async with http.get(url + "/healthz") as resp:
            assert (await resp.json())["status"] == "ok"


json_values = st.recursive(st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(allow_nan=False)
                           | st.text(max_size=5), lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=12)


@given(path_pick=st.integers(0, 10_000), value=json_values)
def test_any_single_field_corruption_is_rejected_or_valid(event_doc: dict, path_pick: int,
                                                         value: Any) -> None:
    """Replace one value anywhere in a real event: parsing either fails with EventError (-> 400) or yields an
    event on which every baseline answers validly."""
    doc = copy.deepcopy(event_doc)
    holders: list[tuple[Any, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key in node:
                holders.append((node, key))
                walk(node[key])
        elif isinstance(node, list):
            for i in range(len(node)):
                holders.append((node, i))
                walk(node[i])

    walk(doc)
    holder, key = holders[path_pick % len(holders)]
    holder[key] = value
    try:
        event = parse_event(json.loads(json.dumps(doc)))
    except EventError as exc:
        assert exc.field
        return
    for name in ("fifo", "fifo-cap25", "fair", "random"):
        stage, limit = check_decision(event, make_policy(name).schedule(event))
        assert stage is None or 1 <= limit <= event.num_executors


async def test_cjs_is_a_registered_task_next_to_abr(event_doc: dict) -> None:
    async with run_controller(ControllerConfig(tasks=["abr", "cjs"])) as url, aiohttp.ClientSession() as http:
        status, answer = await schedule(http, url, {**event_doc, "policy": "fifo"})
        assert status == 200 and answer["policy"] == "fifo"
        async with http.get(url + "/healthz") as resp:
            health = await resp.json()
    assert health["tasks"] == ["abr", "cjs"] and health["cjs_decisions"] == 1
