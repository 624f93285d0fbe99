"""The decision service in-process: round trips, sessions, CORS, errors, blocking policies."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any, ClassVar

import aiohttp
import pytest

from controller.app import ControllerConfig, create_app
from controller.policies import _REGISTRY, make_policy
from controller.policies.base import AbrPolicy
from controller.policies.bba import BBA
from controller.runner import controller_in_thread, run_controller
from controller.sessions import PolicySessions
from netllm.abr_state import AbrObservation, parse_observation

LADDER = [300.0, 750.0, 1200.0, 1850.0, 2850.0, 4300.0]
CLASSIC = ["bba", "rb", "bola", "robustmpc", "fastmpc", "robustmpc-pm1"]


def observation_doc(chunk_index: int = 3, history: list[float] | None = None, buffer_s: float = 11.0,
                    last_quality: int = 1, session_id: str = "s1", **extra: Any) -> dict[str, Any]:
    history = [1500.0, 2500.0, 900.0] if history is None else history
    rows = min(5, 48 - chunk_index)
    doc = {
        "chunk_index": chunk_index, "total_chunks": 48, "last_quality": last_quality, "buffer_s": buffer_s,
        "throughput_kbps_history": history, "download_time_s_history": [1.0] * len(history),
        "upcoming_chunk_sizes_bytes": [[int(b * 500 * (1 + 0.03 * k)) for b in LADDER] for k in range(rows)],
        "ladder_kbps": LADDER, "rebuffer_s": 0.0, "chunk_duration_s": 4.0, "session_id": session_id,
    }
    doc.update(extra)
    return doc


class BrokenPolicy(AbrPolicy):
    """Test-only policy whose decision raises, to exercise the 500 path."""
    name: ClassVar[str] = "test-broken"

    def select_quality(self, obs: AbrObservation) -> int:
        raise RuntimeError(f"boom at chunk {obs.chunk_index}")


class OutOfRangePolicy(AbrPolicy):
    name: ClassVar[str] = "test-out-of-range"

    def select_quality(self, obs: AbrObservation) -> int:
        return obs.levels  # one past the top rung


class SlowBlockingBBA(BBA):
    """BBA that takes 0.4 s and declares itself blocking, as a model-inference policy would."""
    name: ClassVar[str] = "test-slow-bba"
    blocking: ClassVar[bool] = True
    threads: ClassVar[list[str]] = []

    def select_quality(self, obs: AbrObservation) -> int:
        SlowBlockingBBA.threads.append(threading.current_thread().name)
        time.sleep(0.4)
        return super().select_quality(obs)


@pytest.fixture
def test_policies(monkeypatch: pytest.MonkeyPatch) -> None:
    for cls in (BrokenPolicy, OutOfRangePolicy, SlowBlockingBBA):
        monkeypatch.setitem(_REGISTRY, cls.name, f"{__name__}:{cls.__name__}")


async def post(session: aiohttp.ClientSession, url: str, doc: Any) -> tuple[int, dict]:
    async with session.post(url + "/v1/abr/decide", json=doc) as resp:
        return resp.status, await resp.json()


@pytest.mark.parametrize("policy", CLASSIC)
async def test_round_trip_matches_policy(policy: str) -> None:
    async with run_controller(policy=policy) as url, aiohttp.ClientSession() as http:
        local = make_policy(policy)
        for chunk in range(0, 6):
            history = [1000.0 + 700 * ((k * 3) % 5) for k in range(chunk)]
            doc = observation_doc(chunk, history, buffer_s=2.0 + 3 * chunk, last_quality=chunk % 3)
            status, body = await post(http, url, doc)
            assert status == 200, body
            assert body["policy"] == policy
            assert body["quality"] == local.select_quality(parse_observation(doc))
            assert 0 <= body["latency_ms"] < 1000


async def test_policy_named_per_request_and_listing() -> None:
    async with run_controller(policy="bba") as url, aiohttp.ClientSession() as http:
        status, body = await post(http, url, observation_doc(buffer_s=30.0, policy="rb"))
        assert status == 200 and body["policy"] == "rb"
        status, body = await post(http, url, observation_doc(buffer_s=30.0, policy=None))
        assert status == 200 and (body["policy"], body["quality"]) == ("bba", 5)
        async with http.get(url + "/v1/policies") as resp:
            listing = await resp.json()
        assert listing["default"] == "bba" and set(CLASSIC) <= set(listing["available"])
        assert listing["loaded"] == ["bba", "rb"]
        async with http.get(url + "/healthz") as resp:
            health = await resp.json()
        assert health["status"] == "ok" and health["sessions_active"] == 2
        assert health["policies_loaded"] == ["bba", "rb"]


async def test_concurrent_sessions_keep_separate_mpc_state() -> None:
    """Two interleaved sessions with different networks: each answer equals a private local RobustMPC's."""
    async with run_controller(policy="robustmpc") as url, aiohttp.ClientSession() as http:
        networks = {"a": [4000.0, 600.0, 3500.0, 500.0, 4200.0, 700.0, 3900.0],
                    "b": [800.0, 820.0, 790.0, 805.0, 815.0, 800.0, 810.0]}
        local = {sid: make_policy("robustmpc") for sid in networks}
        for chunk in range(1, 8):
            docs = {sid: observation_doc(chunk, tput[:chunk], buffer_s=8.0, session_id=sid)
                    for sid, tput in networks.items()}
            answers = await asyncio.gather(*(post(http, url, d) for d in docs.values()))
            for (sid, doc), (status, body) in zip(docs.items(), answers):
                assert status == 200
                assert body["quality"] == local[sid].select_quality(parse_observation(doc)), (sid, chunk)
        # the error memories differ: session a's throughput swings, b's is steady
        assert local["a"].last_prediction_kbps < 0.6 * 4000


async def test_chunk_zero_starts_a_fresh_instance() -> None:
    async with run_controller(policy="robustmpc", decision_log=None) as url, aiohttp.ClientSession() as http:
        swings = [4000.0, 500.0, 4000.0, 500.0]
        for chunk in range(4):
            await post(http, url, observation_doc(chunk, swings[:chunk], session_id="x"))
        # a new session with the same id: its second decision must match a fresh instance, whose error memory
        # holds only this session's errors
        fresh = make_policy("robustmpc")
        for chunk, history in enumerate([[], [2000.0], [2000.0, 2100.0]]):
            doc = observation_doc(chunk, history, session_id="x")
            status, body = await post(http, url, doc)
            assert body["quality"] == fresh.select_quality(parse_observation(doc))
        async with http.get(url + "/v1/decisions", params={"session_id": "x"}) as resp:
            decisions = (await resp.json())["decisions"]
        assert [d["chunk_index"] for d in decisions] == [0, 1, 2, 3, 0, 1, 2]
        assert {"ts", "session_id", "policy", "quality", "latency_ms"} <= set(decisions[0])


async def test_cors_preflight_and_headers() -> None:
    async with run_controller(policy="bba") as url, aiohttp.ClientSession() as http:
        headers = {"Origin": "http://127.0.0.1:9999", "Access-Control-Request-Method": "POST",
                   "Access-Control-Request-Headers": "content-type"}
        async with http.options(url + "/v1/abr/decide", headers=headers) as resp:
            assert resp.status == 204
            assert resp.headers["Access-Control-Allow-Origin"] == "*"
            assert "POST" in resp.headers["Access-Control-Allow-Methods"]
            assert "Content-Type" in resp.headers["Access-Control-Allow-Headers"]
        async with http.post(url + "/v1/abr/decide", json=observation_doc()) as resp:
            assert resp.headers["Access-Control-Allow-Origin"] == "*"
        async with http.get(url + "/no/such/route") as resp:
            assert resp.status == 404
            assert resp.headers["Access-Control-Allow-Origin"] == "*"
            assert "error" in await resp.json()


async def test_policy_failures_answer_500_and_service_stays_up(test_policies: None) -> None:
    async with run_controller(policy="bba") as url, aiohttp.ClientSession() as http:
        status, body = await post(http, url, observation_doc(policy="test-broken"))
        assert status == 500 and "boom at chunk 3" in body["error"]
        status, body = await post(http, url, observation_doc(policy="test-out-of-range"))
        assert status == 500 and "not a quality index" in body["error"]
        status, body = await post(http, url, observation_doc())
        assert status == 200
        async with http.get(url + "/healthz") as resp:
            health = await resp.json()
        assert health["status"] == "ok" and health["policy_failures"] == 2


async def test_blocking_policy_runs_off_the_event_loop(test_policies: None) -> None:
    SlowBlockingBBA.threads.clear()
    async with run_controller(policy="test-slow-bba") as url, aiohttp.ClientSession() as http:
        decision = asyncio.create_task(post(http, url, observation_doc(buffer_s=20.0)))
        await asyncio.sleep(0.1)  # the slow decision is now running on the worker thread
        async with http.get(url + "/healthz") as resp:
            assert resp.status == 200
        assert not decision.done()  # /healthz was answered while the policy still sleeps
        status, body = await decision
        assert status == 200 and body["quality"] == 5 and body["latency_ms"] >= 400
    threads = SlowBlockingBBA.threads
    assert threads and all(n.startswith("controller-blocking") for n in threads)


def test_bad_configuration_fails_before_listening() -> None:
    with pytest.raises(ValueError, match="unknown policy"):
        create_app(ControllerConfig(policy="no-such-policy"))
    with pytest.raises(ValueError, match="unknown task"):
        create_app(ControllerConfig(tasks=["abr", "teleport"]))
    with pytest.raises(ValueError, match="cannot import"):
        create_app(ControllerConfig(tasks=["abr", "controller.no_such_task"]))
    with pytest.raises(ValueError, match="no register"):
        create_app(ControllerConfig(tasks=["controller.sessions"]))
    with pytest.raises(ValueError, match="policy-options"):
        create_app(ControllerConfig(policy="bba", policy_options="[1, 2]"))


async def test_task_plug_in_by_module_path() -> None:
    async with run_controller(policy="bba", tasks=["controller.abr_service"]) as url, \
            aiohttp.ClientSession() as http:
        status, body = await post(http, url, observation_doc(buffer_s=20.0))
        assert (status, body["quality"]) == (200, 5)
        async with http.get(url + "/healthz") as resp:
            assert (await resp.json())["tasks"] == ["controller.abr_service"]


def test_thread_runner_reports_start_up_failure() -> None:
    with pytest.raises(RuntimeError, match="could not be built"):
        with controller_in_thread(policy="bola", policy_options='{"gp": 0}'):
            pass


async def test_bad_policy_options_fail_at_start_up() -> None:
    with pytest.raises(ValueError, match="could not be built"):
        async with run_controller(policy="bba", policy_options=json.dumps({"cushion_s": -1})):
            pass


async def test_policy_options_reach_the_default_policy() -> None:
    async with run_controller(policy="bba", policy_options=json.dumps({"reservoir_s": 20.0})) as url, \
            aiohttp.ClientSession() as http:
        _, body = await post(http, url, observation_doc(buffer_s=16.0))
        assert body["quality"] == 0  # below the 20 s reservoir; the default BBA would answer 5


async def test_decision_log_file(tmp_path) -> None:
    log_file = tmp_path / "logs" / "decisions.jsonl"
    async with run_controller(policy="bba", decision_log=log_file) as url, aiohttp.ClientSession() as http:
        for chunk in range(3):
            await post(http, url, observation_doc(chunk, [1000.0] * chunk, buffer_s=4.0 * chunk))
        lines = [json.loads(line) for line in log_file.read_text().splitlines()]  # flushed per decision
    assert [(r["chunk_index"], r["quality"], r["policy"]) for r in lines] == [(0, 0, "bba"), (1, 0, "bba"),
                                                                              (2, 1, "bba")]


def test_sessions_lru_and_idle_expiry() -> None:
    now = [0.0]
    table = PolicySessions(max_sessions=2, idle_s=10.0, clock=lambda: now[0])
    table.store(("a", "bba"), BBA())
    now[0] = 1.0
    table.store(("b", "bba"), BBA())
    now[0] = 2.0
    assert table.lookup(("a", "bba"), session_start=False) is not None  # a is now the most recent
    table.store(("c", "bba"), BBA())  # evicts b, the least recently used
    assert table.keys() == [("a", "bba"), ("c", "bba")] and table.evicted == 1
    now[0] = 12.5  # a was last used at 2.0, c at 2.0: both idle for 10.5 s
    assert table.lookup(("c", "bba"), session_start=False) is None
    assert len(table) == 0 and table.evicted == 3
    table.store(("d", "bba"), BBA())
    assert table.lookup(("d", "bba"), session_start=True) is None and len(table) == 0
