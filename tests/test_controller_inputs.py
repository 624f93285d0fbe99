"""Malformed requests always get a 4xx naming the problem, never a 5xx, and the service keeps answering.

One controller runs in a background thread for the whole module; requests go through http.client so that
hypothesis can drive them from plain (synchronous) tests.
"""

from __future__ import annotations

import http.client
import json
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.runner import controller_in_thread
from tests.test_controller_app import observation_doc

REQUIRED = ["chunk_index", "total_chunks", "last_quality", "buffer_s", "throughput_kbps_history",
            "download_time_s_history", "upcoming_chunk_sizes_bytes", "ladder_kbps"]
OPTIONAL = ["rebuffer_s", "chunk_duration_s", "session_id", "extra", "policy"]


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, int]]:
    with controller_in_thread(policy="robustmpc") as url:
        parts = urllib.parse.urlsplit(url)
        yield parts.hostname, parts.port  # type: ignore[misc]


def request(server: tuple[str, int], body: bytes, content_type: str | None = "application/json",
            method: str = "POST", path: str = "/v1/abr/decide") -> tuple[int, dict]:
    conn = http.client.HTTPConnection(*server, timeout=10)
    try:
        headers = {"Content-Type": content_type} if content_type else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()


def post_doc(server: tuple[str, int], doc: Any) -> tuple[int, dict]:
    return request(server, json.dumps(doc, allow_nan=True).encode())


def assert_client_error(status: int, body: dict, field: str | None = None) -> None:
    assert 400 <= status < 500, (status, body)
    assert isinstance(body.get("error"), str) and body["error"]
    if field is not None:
        assert body.get("field") == field, body


def assert_healthy(server: tuple[str, int]) -> None:
    status, body = request(server, b"", None, method="GET", path="/healthz")
    assert status == 200 and body["status"] == "ok"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=12)


def test_a_null_last_chunk_qoe_means_not_given(server: tuple[str, int]) -> None:
    status, body = post_doc(server, observation_doc(extra={"last_chunk_qoe": None}))
    assert status == 200 and 0 <= body["quality"] < 6


def test_valid_request_is_accepted(server: tuple[str, int]) -> None:
    status, body = post_doc(server, observation_doc())
    assert status == 200 and 0 <= body["quality"] < 6


@given(json_values)
def test_arbitrary_json_is_refused(server: tuple[str, int], value: Any) -> None:
    status, body = post_doc(server, value)
    assert_client_error(status, body)


@given(st.sampled_from(REQUIRED))
def test_missing_field_is_named(server: tuple[str, int], name: str) -> None:
    doc = observation_doc()
    del doc[name]
    status, body = post_doc(server, doc)
    # the ladder is read first; a missing field that others depend on may be reported as itself only
    assert_client_error(status, body, name)


WRONG_VALUES = {
    "chunk_index": [-1, 48, 2.5, "3", None, True, [], 1e300, 10**400],
    "total_chunks": [0, -5, "48", 10**12, None, 3.5],
    "last_quality": [-1, 6, "1", None, 1.5],
    "buffer_s": [-0.1, "11", None, [], 1e9, {}, 10**400, -(10**400)],  # huge ints do not fit a float
    "throughput_kbps_history": [[0.0], [-1.0], ["x"], "1000", [1e300], [None], {}, [[1.0]], [10**400]],
    "download_time_s_history": [[1.0, 2.0], [-1.0, 1.0, 1.0], "x", None],
    "upcoming_chunk_sizes_bytes": [[], [[1, 2, 3]], [[0] * 6], [[1.5] * 6], "x", [[1] * 6] * 17, [[-1] * 6],
                                   [None], [[1] * 6] * 46],
    "ladder_kbps": [[], [300, 300], [750, 300], [0, 100], ["300"], [1.0] * 17, None, [float(10**8)]],
    "rebuffer_s": [-1, "0", None, 1e12],
    "chunk_duration_s": [0, -4, "4", None, 1e6],
    "session_id": [5, None, ["a"], "x" * 129],
    "extra": [[1, 2], "x", 3, {"last_chunk_qoe": 10**400}, {"last_chunk_qoe": 1e39}, {"last_chunk_qoe": "2"}],
    "policy": [3, ["bba"], {"name": "bba"}, "no-such-policy", "", True],
}


@given(st.sampled_from(sorted(WRONG_VALUES)).flatmap(
    lambda name: st.tuples(st.just(name), st.sampled_from(WRONG_VALUES[name]))))
def test_wrong_value_is_named(server: tuple[str, int], case: tuple[str, Any]) -> None:
    name, value = case
    doc = observation_doc()
    doc[name] = value
    status, body = post_doc(server, doc)
    # total_chunks errors can surface at chunk_index (the bound it sets); a bad ladder surfaces at the ladder
    bound_by_total = ("total_chunks", "chunk_index", "upcoming_chunk_sizes_bytes")
    expected = bound_by_total if name == "total_chunks" else ("extra", "extra.last_chunk_qoe") \
        if name == "extra" else (name,)
    assert_client_error(status, body)
    assert body["field"] in expected, (name, value, body)


@given(st.sampled_from(REQUIRED + OPTIONAL[:2]), st.sampled_from(["NaN", "Infinity", "-Infinity"]))
def test_nan_and_infinity_literals_are_refused(server: tuple[str, int], name: str, literal: str) -> None:
    doc = observation_doc()
    doc[name] = "@@"
    raw = json.dumps(doc).replace('"@@"', literal)
    status, body = request(server, raw.encode())
    assert_client_error(status, body, "body")
    # a string "NaN" is a wrong type, named by its field
    doc[name] = literal
    status, body = post_doc(server, doc)
    assert_client_error(status, body)


@given(st.binary(max_size=200))
def test_random_bytes_are_refused(server: tuple[str, int], raw: bytes) -> None:
    status, body = request(server, raw)
    assert_client_error(status, body)


@given(st.sampled_from(["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                        "application/jsonx", None]))
def test_wrong_content_type(server: tuple[str, int], content_type: str | None) -> None:
    status, body = request(server, json.dumps(observation_doc()).encode(), content_type)
    assert status == 415 and body["field"] == "content-type"


@pytest.mark.parametrize("count", [65, 5000, 40_000])
def test_huge_arrays(server: tuple[str, int], count: int) -> None:
    doc = observation_doc(history=[1000.0] * count)
    status, body = post_doc(server, doc)
    if len(json.dumps(doc)) > 256 * 1024:
        assert status == 413 and body["field"] == "body"
    else:
        assert_client_error(status, body, "throughput_kbps_history")
    assert_healthy(server)


def test_oversized_body(server: tuple[str, int]) -> None:
    doc = observation_doc(extra={"padding": "x" * (300 * 1024)})
    status, body = post_doc(server, doc)
    assert status == 413 and body["field"] == "body"
    assert_healthy(server)


def test_deeply_nested_body(server: tuple[str, int]) -> None:
    raw = b"[" * 100_000 + b"]" * 100_000
    status, body = request(server, raw)
    assert status in (400, 413), body
    assert_healthy(server)


def test_wrong_method_and_route(server: tuple[str, int]) -> None:
    status, body = request(server, b"", None, method="GET")
    assert status == 405 and "error" in body
    status, body = request(server, b"{}", path="/v1/abr/nope")
    assert status == 404 and "error" in body


def test_still_healthy_after_all(server: tuple[str, int]) -> None:
    assert_healthy(server)
    status, body = post_doc(server, observation_doc())
    assert status == 200
