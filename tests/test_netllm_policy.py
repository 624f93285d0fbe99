"""The `netllm` policy: valid levels always, return-to-go bookkeeping, sessions, sampling, simulator and
controller round trips on a tiny checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.policies import make_policy
from controller.policies.netllm_policy import NetLLMPolicy
from netllm.abr_state import AbrObservation
from netllm.qoe import chunk_qoe
from tests.test_netllm_support import synthetic_sessions, synthetic_video, tiny_checkpoint

LADDER = [300.0, 750.0, 1200.0, 1850.0, 2850.0, 4300.0]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("netllm") / "tiny")


def observation(chunk: int, last_quality: int = 1, rebuffer_s: float = 0.0, buffer_s: float = 8.0,
                tput: list[float] | None = None, session_id: str = "s", total: int = 48) -> AbrObservation:
    tput = [2000.0, 1500.0] if tput is None else tput
    return AbrObservation(chunk, total, last_quality, buffer_s, list(tput), [1.0] * len(tput),
                          [[int(b * 500) for b in LADDER]], list(LADDER), rebuffer_s, 4.0, session_id)


def test_registry_builds_it_with_a_checkpoint_option(ckpt: Path) -> None:
    policy = make_policy("netllm", checkpoint=str(ckpt))
    assert isinstance(policy, NetLLMPolicy) and NetLLMPolicy.blocking is True
    assert 0 <= policy.select_quality(observation(1)) < 6


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no NetLLM checkpoint"):
        NetLLMPolicy(checkpoint=tmp_path)


@given(chunk=st.integers(0, 200), last=st.integers(0, 5), buffer_s=st.floats(0, 120),
       rebuf=st.floats(0, 500), tput=st.lists(st.floats(1e-3, 1e6), max_size=20),
       sizes=st.lists(st.integers(1, 10**8), min_size=6, max_size=6))
def test_every_answer_is_a_valid_level(ckpt: Path, chunk, last, buffer_s, rebuf, tput, sizes) -> None:
    policy = NetLLMPolicy(checkpoint=ckpt)
    obs = AbrObservation(chunk, chunk + 5, last, buffer_s, tput, [2.0] * len(tput), [sizes], list(LADDER),
                         rebuf)
    q = policy.select_quality(obs)
    assert isinstance(q, int) and 0 <= q < 6


def test_return_to_go_follows_the_chunk_qoe(ckpt: Path) -> None:
    policy = NetLLMPolicy(checkpoint=ckpt, target_return=1.5)
    policy.select_quality(observation(1, last_quality=1))
    assert policy._return == pytest.approx(1.5 * 47)
    policy.select_quality(observation(2, last_quality=3, rebuffer_s=0.5))
    spent = chunk_qoe(LADDER[3], LADDER[1], 0.5)
    assert policy._return == pytest.approx(1.5 * 47 - spent)
    # a client-reported QoE wins over the derived one
    obs = observation(3, last_quality=3, rebuffer_s=0.5)
    obs.extra["last_chunk_qoe"] = 2.0
    policy.select_quality(obs)
    assert policy._return == pytest.approx(1.5 * 47 - spent - 2.0)


def test_new_session_restarts_the_context(ckpt: Path) -> None:
    policy = NetLLMPolicy(checkpoint=ckpt)
    for c in range(1, 5):
        policy.select_quality(observation(c))
    assert policy.context_steps == 4
    policy.select_quality(observation(1, session_id="other"))
    assert policy.context_steps == 1
    policy.select_quality(observation(2, session_id="other"))
    policy.reset()
    policy.select_quality(observation(7, session_id="other"))
    assert policy.context_steps == 1 and policy._return == pytest.approx(policy.target_return * 41)


def test_a_retried_chunk_gets_the_same_answer_and_changes_nothing(ckpt: Path) -> None:
    policy = NetLLMPolicy(checkpoint=ckpt)
    answers = [policy.select_quality(observation(c, last_quality=2)) for c in range(1, 6)]
    state = (policy._return, policy.context_steps, len(policy._window._steps))
    # a client retrying chunk 5 (even with a fresher buffer level) used to start the session over
    assert policy.select_quality(observation(5, last_quality=2, buffer_s=3.0)) == answers[-1]
    assert (policy._return, policy.context_steps, len(policy._window._steps)) == state


def test_the_level_played_replaces_the_answer_as_the_action(ckpt: Path) -> None:
    # float serving: dynamic int8 scales activations per call, so any other token would move the logits a little
    policy = NetLLMPolicy(checkpoint=ckpt, inference="recompute", quantize="none")
    answer = policy.select_quality(observation(1, last_quality=1))
    played = (answer + 3) % 6  # the player fell back to another level
    policy.select_quality(observation(2, last_quality=played))
    assert [s.action for s in policy._window._steps][:1] == [played]
    # the same logits as a session whose policy had answered that level itself
    other = NetLLMPolicy(checkpoint=ckpt, inference="recompute", quantize="none")
    other.select_quality(observation(1, last_quality=1))
    other._window._steps[-1].action = played
    import torch

    torch.testing.assert_close(other._window.decide(policy._window._steps[-1].return_scaled,
                                                    policy._window._steps[-1].features, 2),
                               policy._window._recompute())


def test_a_gap_in_chunks_starts_over(ckpt: Path) -> None:
    policy = NetLLMPolicy(checkpoint=ckpt, target_return=1.5)
    for c in range(1, 4):
        policy.select_quality(observation(c))
    policy.select_quality(observation(6))  # chunks 4 and 5 were decided elsewhere (the page's fallback)
    assert policy.context_steps == 1 and policy._return == pytest.approx(1.5 * 42)


def test_chunk_zero_uses_the_first_trained_timestep(ckpt: Path) -> None:
    policy = NetLLMPolicy(checkpoint=ckpt)
    seen: list[int] = []
    decide = policy._window.decide
    policy._window.decide = lambda r, f, t: seen.append(t) or decide(r, f, t)  # type: ignore[method-assign]
    policy.select_quality(observation(0))
    policy.select_quality(observation(1))
    policy.select_quality(observation(500))
    assert seen == [1, 1, policy.max_timestep] and policy.min_timestep == 1


def test_served_window_bounds_the_context(ckpt: Path, tmp_path: Path) -> None:
    """`window` (or the checkpoint's serving.context_steps) caps the context; kv refreshes to the last
    window // 2 steps, so a 3-step window alternates between 2 and 3 steps after its first decisions."""
    import shutil

    short = NetLLMPolicy(checkpoint=ckpt, window=3)
    seen = []
    for c in range(1, 10):
        short.select_quality(observation(c, last_quality=c % 6))
        seen.append(short.context_steps)
    assert seen == [1, 2, 3, 2, 3, 2, 3, 2, 3]
    assert NetLLMPolicy(checkpoint=ckpt)._window.window == 6  # no serving choice: the trained window
    chosen = tmp_path / "chosen"
    shutil.copytree(ckpt, chosen)
    doc = json.loads((chosen / "netllm_config.json").read_text())
    doc["serving"]["context_steps"] = 4
    (chosen / "netllm_config.json").write_text(json.dumps(doc))
    assert NetLLMPolicy(checkpoint=chosen)._window.window == 4
    assert NetLLMPolicy(checkpoint=chosen, window=5)._window.window == 5  # the option wins
    for bad in (1, 7, "3", True):
        with pytest.raises(ValueError, match="from 2 to the trained window"):
            NetLLMPolicy(checkpoint=ckpt, window=bad)


def test_greedy_is_deterministic_and_sampling_is_seeded(ckpt: Path) -> None:
    def run(**opts) -> list[int]:
        policy = NetLLMPolicy(checkpoint=ckpt, **opts)
        return [policy.select_quality(observation(c, last_quality=c % 6, tput=[500.0 * c]))
                for c in range(1, 30)]

    assert run() == run()
    assert run(sample=True, seed=5) == run(sample=True, seed=5)
    samples = {tuple(run(sample=True, seed=s, temperature=5.0)) for s in range(4)}
    assert len(samples) > 1


def test_kv_and_recompute_serving_agree_within_the_window(ckpt: Path) -> None:
    # float32: dynamic int8 picks one activation scale per call, and the two schemes batch tokens differently.
    kv = NetLLMPolicy(checkpoint=ckpt, inference="kv", quantize="none")
    full = NetLLMPolicy(checkpoint=ckpt, inference="recompute", quantize="none")
    for c in range(1, 7):  # up to the window (6): both see the same context
        obs = observation(c, last_quality=(c * 2) % 6, tput=[300.0 * c, 900.0])
        assert kv.select_quality(obs) == full.select_quality(obs)


def test_plays_whole_sessions_in_the_simulator(ckpt: Path) -> None:
    from emulation.abr_sim import simulate_session

    video = synthetic_video()
    policy = NetLLMPolicy(checkpoint=ckpt)
    for session in synthetic_sessions(2):
        result = simulate_session(policy, session.trace, video, start_index=1)
        assert len(result.qualities) == video.chunk_count
        assert all(0 <= q < 6 for q in result.qualities)


def test_other_ladder_sizes_are_refused(ckpt: Path) -> None:
    from controller.netllm.abr_features import FeatureError

    policy = NetLLMPolicy(checkpoint=ckpt)
    obs = AbrObservation(1, 10, 0, 5.0, [1000.0], [1.0], [[100, 200, 300]], [300.0, 750.0, 1200.0])
    with pytest.raises(FeatureError, match="6 levels"):
        policy.select_quality(obs)


async def test_controller_round_trip(ckpt: Path) -> None:
    from controller.runner import run_controller

    options = json.dumps({"checkpoint": str(ckpt)})
    async with run_controller(policy="netllm", policy_options=options) as url:
        async with aiohttp.ClientSession() as http:
            answers = []
            for c in range(0, 12):
                last = answers[-1] if answers else 1
                doc = observation(c, last_quality=last, session_id="live-1").to_json()
                async with http.post(f"{url}/v1/abr/decide", json=doc) as resp:
                    assert resp.status == 200, await resp.text()
                    body = await resp.json()
                assert body["policy"] == "netllm" and 0 <= body["quality"] < 6
                answers.append(body["quality"])
            bad = observation(1, session_id="live-2").to_json()
            bad["ladder_kbps"] = [300.0, 750.0]
            bad["upcoming_chunk_sizes_bytes"] = [[100, 200]]
            bad["last_quality"] = 0
            async with http.post(f"{url}/v1/abr/decide", json=bad) as resp:
                # Refused as a client error naming the field, not counted as a policy failure.
                assert resp.status == 422
                body = await resp.json()
                assert "6 levels" in body["error"] and body["field"] == "ladder_kbps"
            async with http.get(f"{url}/healthz") as resp:
                assert resp.status == 200


def test_int8_serving_quantises_the_body_and_stays_close(ckpt: Path) -> None:
    import torch

    from controller.netllm.abr_features import observation_features

    fp32 = NetLLMPolicy(checkpoint=ckpt, quantize="none")
    int8 = NetLLMPolicy(checkpoint=ckpt, quantize="int8")
    assert int8.model is not fp32.model
    body = list(int8.model.backbone.named_modules())
    assert all(name.endswith("down_proj") for name, m in body if type(m) is torch.nn.Linear)
    assert any(type(m).__module__.startswith("torch.ao.nn.quantized.dynamic") for _, m in body)
    features = observation_features(observation(3, last_quality=2, tput=[900.0, 2500.0]))
    a = fp32._window.decide(1.0, features, 3)
    b = int8._window.decide(1.0, features, 3)
    torch.testing.assert_close(a, b, rtol=0.1, atol=0.1)
    assert 0 <= int8.select_quality(observation(4)) < 6
    with pytest.raises(ValueError, match="int8-full"):
        NetLLMPolicy(checkpoint=ckpt, quantize="int4")


def test_auto_quantisation_is_int8_split_on_cpu_only(ckpt: Path) -> None:
    import torch

    from controller.netllm.quantize import OutlierSplitLinear
    from controller.policies.netllm_policy import AUTO_CPU_SCHEME, resolve_quantize

    assert resolve_quantize("auto", "cpu") == AUTO_CPU_SCHEME == "int8-split"
    assert resolve_quantize("auto", "cuda") == "none"
    assert resolve_quantize("int8", "cpu") == "int8"
    with pytest.raises(ValueError, match="use auto, none"):
        resolve_quantize("fp8", "cpu")
    default = NetLLMPolicy(checkpoint=ckpt, device="cpu")  # quantize defaults to auto
    assert default.model is NetLLMPolicy(checkpoint=ckpt, device="cpu", quantize="int8-split").model
    assert any(isinstance(m, OutlierSplitLinear) for m in default.model.backbone.modules())
    assert not any(type(m) is torch.nn.Linear for m in default.model.backbone.modules())
