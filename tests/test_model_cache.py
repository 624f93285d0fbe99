"""Trained models are loaded once per process and shared by every session's policy instance."""

from __future__ import annotations

import json
import urllib.request
from urllib.error import HTTPError

import pytest

from controller.cjs.decima import DecimaPolicy
from controller.model_cache import load_once
from controller.policies.pensieve import PensievePolicy
from controller.runner import controller_in_thread
from tests.test_controller_app import observation_doc


def test_load_once_calls_the_loader_once_per_key_and_retries_failures() -> None:
    calls: list[str] = []

    def loader(tag: str) -> object:
        calls.append(tag)
        return object()

    first = load_once(("test", "a"), lambda: loader("a"))
    assert load_once(("test", "a"), lambda: loader("a")) is first
    assert load_once(("test", "b"), lambda: loader("b")) is not first
    assert calls == ["a", "b"]

    def failing() -> object:
        calls.append("fail")
        raise OSError("disk gone")

    with pytest.raises(OSError):
        load_once(("test", "c"), failing)
    assert load_once(("test", "c"), lambda: loader("c")) is not None  # a failure is not cached
    assert calls == ["a", "b", "fail", "c"]


def test_sessions_share_one_network() -> None:
    # The service builds one policy per session id; before, each held its own copy of the weights.
    assert PensievePolicy().net is PensievePolicy(seed=3).net
    assert DecimaPolicy().net is DecimaPolicy(greedy=False).net


def test_a_ladder_the_checkpoint_was_not_trained_for_is_a_client_error() -> None:
    doc = observation_doc(policy="pensieve", ladder_kbps=[300.0, 750.0, 1200.0], last_quality=1,
                          upcoming_chunk_sizes_bytes=[[1000, 2000, 3000]])
    with controller_in_thread(policy="robustmpc") as url:
        request = urllib.request.Request(url + "/v1/abr/decide", data=json.dumps(doc).encode(),
                                         headers={"Content-Type": "application/json"})
        with pytest.raises(HTTPError) as caught:
            urllib.request.urlopen(request, timeout=30)
        assert caught.value.code == 422
        body = json.loads(caught.value.read())
        assert body["field"] == "ladder_kbps" and "6 levels" in body["error"]
        with urllib.request.urlopen(url + "/healthz", timeout=10) as resp:
            stats = json.loads(resp.read())
    assert stats["policy_failures"] == 0 and stats["status"] == "ok", stats
