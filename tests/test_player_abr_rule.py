"""The page's decision client (client/static/abr_rule.js) in real Chromium against a controller that
misbehaves on purpose: every bad answer (not JSON, HTTP error, quality out of range or not an integer, too
slow, nobody listening) becomes a fallback with its reason, and the buffer-based fallback follows BBA's
reservoir/cushion."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

from client.player import CHROMIUM_ARGS
from netllm.paths import REPO_ROOT, chromium_executable

pytestmark = pytest.mark.browser

RULE_JS = REPO_ROOT / "client" / "static" / "abr_rule.js"
ANSWERS: dict[str, tuple[int, str, str]] = {
    "ok": (200, "application/json", json.dumps({"quality": 2, "policy": "bba", "latency_ms": 1.5})),
    "text": (200, "text/plain", "quality two, please"),
    "range": (200, "application/json", json.dumps({"quality": 6})),
    "negative": (200, "application/json", json.dumps({"quality": -1})),
    "fraction": (200, "application/json", json.dumps({"quality": 1.5})),
    "string": (200, "application/json", json.dumps({"quality": "2"})),
    "list": (200, "application/json", "[2]"),
    "error": (500, "application/json", json.dumps({"error": "boom"})),
}


class Handler(BaseHTTPRequestHandler):
    bodies: list[dict] = []

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass

    def _send(self, status: int, ctype: str, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/abr_rule.js":
            self._send(200, "text/javascript", RULE_JS.read_text())
        else:
            self._send(200, "text/html", '<!doctype html><script src="/abr_rule.js"></script>')

    def do_POST(self) -> None:
        mode = self.path.strip("/").split("/")[0]
        Handler.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        if mode == "slow":
            time.sleep(1.5)
            mode = "ok"
        self._send(*ANSWERS[mode])


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    thread.join(5)


@pytest.fixture(scope="module")
def page(server_url: str) -> Iterator[object]:
    if not chromium_executable().exists():
        pytest.skip(f"Chromium not found at {chromium_executable()}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(chromium_executable()), headless=True,
                                     args=list(CHROMIUM_ARGS))
        page = browser.new_page()
        page.goto(server_url + "/page.html")
        page.wait_for_function("window.NetllmAbr !== undefined")
        yield page
        browser.close()


def ask(page: object, url: str, timeout_ms: int = 400) -> dict:
    script = "([url, t]) => NetllmAbr.askController(url, {chunk_index: 3, session_id: 's'}, t, 6)"
    return page.evaluate(script, [url, timeout_ms])  # type: ignore[attr-defined]


def test_a_valid_answer_is_used(page: object, server_url: str) -> None:
    answer = ask(page, server_url + "/ok")
    assert answer["ok"] is True and answer["quality"] == 2 and answer["policy"] == "bba"
    assert answer["controllerLatencyMs"] == 1.5 and answer["rttMs"] > 0
    assert Handler.bodies[-1] == {"chunk_index": 3, "session_id": "s"}


@pytest.mark.parametrize("mode, reason", [
    ("text", "bad_json"), ("range", "bad_quality"), ("negative", "bad_quality"), ("fraction", "bad_quality"),
    ("string", "bad_quality"), ("list", "bad_answer"), ("error", "http_500"), ("slow", "timeout"),
])
def test_bad_answers_fall_back_with_their_reason(page: object, server_url: str, mode: str,
                                                 reason: str) -> None:
    answer = ask(page, f"{server_url}/{mode}")
    assert answer["ok"] is False and answer["reason"] == reason
    if mode == "slow":
        assert 350 <= answer["rttMs"] < 1400, "the deadline cut the wait short"


def test_nobody_listening_is_a_network_error(page: object) -> None:
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    answer = ask(page, f"http://127.0.0.1:{port}")
    assert answer["ok"] is False and answer["reason"] == "network_error"
    assert ask(page, "")["reason"] == "no_controller"


@pytest.mark.parametrize("buffer_s, quality", [(0, 0), (4.9, 0), (5.0, 0), (7.0, 1), (10.0, 3), (14.9, 4),
                                               (15.0, 5), (60.0, 5)])
def test_fallback_follows_bba_reservoir_and_cushion(page: object, buffer_s: float, quality: int) -> None:
    ladder = [300, 750, 1200, 1850, 2850, 4300]
    script = "([b, l]) => NetllmAbr.bufferBasedQuality(b, l)"
    got = page.evaluate(script, [buffer_s, ladder])  # type: ignore[attr-defined]
    assert got == quality


def test_a_request_without_a_chunk_index_leaves_the_gate_alone(page: object) -> None:
    # A NaN index used to stick in nextIndex (Math.max propagates it) and end controller control.
    script = """() => {
      const book = new NetllmAbr.DecisionBook({trigger() {}}, 48);
      const accepted = [book.requestStarted(NaN), book.requestStarted(undefined), book.requestStarted(-1)];
      const before = book.nextIndex;
      const valid = book.requestStarted(1);
      return {accepted, before, valid, after: book.nextIndex, gateOpen: book.gateOpen};
    }"""
    got = page.evaluate(script)  # type: ignore[attr-defined]
    assert got == {"accepted": [False, False, False], "before": 0, "valid": True, "after": 2, "gateOpen": False}
