"""The DASH server on a real loopback socket: bytes and content types, traversal refusals (sent as raw HTTP so
no client normalises the path), the request log, the first-byte delay, pacing by a slow reader, dash.js,
the player route, the background/async runners and the `python -m server.cli` entry point."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.request import urlopen

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from netllm.paths import REPO_ROOT, dashjs_file
from server.app import LOG_KEY, WHOLE_FILE, ByteRange, ServerConfig, ServerConfigError, create_app, \
    parse_range
from server.request_log import REQUEST_LOG_COLUMNS, RequestLog, RequestRecord, read_request_log
from server.runner import BackgroundServer, run_server
from tests.test_prepare_video import prepare_small_video

SECRET = "outside-the-root-secret"


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_small_video(tmp_path_factory)


@pytest.fixture
def player_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "player"
    folder.mkdir()
    (folder / "index.html").write_text("<!doctype html><title>player</title>")
    (folder / "app.js").write_text("console.log('player');")
    return folder


async def raw_get(url: str, target: str, extra: str = "") -> tuple[int, bytes]:
    """Send `GET target` byte for byte (no client-side path normalisation); (status, body)."""
    host, port = re.match(r"http://([^:/]+):(\d+)", url).groups()
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_media_files_are_served_with_their_bytes_and_types(video_dir: Path, player_dir: Path) -> None:
    cfg = ServerConfig(media_root=video_dir, player_root=player_dir)
    async with TestClient(TestServer(create_app(cfg))) as client:
        for name, ctype in (("manifest.mpd", "application/dash+xml"), ("init-2.mp4", "video/mp4"),
                            ("chunk-3-2.m4s", "video/mp4"), ("video.json", "application/json")):
            resp = await client.get(f"/media/{name}")
            body = await resp.read()
            assert resp.status == 200, name
            assert resp.content_type == ctype
            assert body == (video_dir / name).read_bytes()
            assert int(resp.headers["Content-Length"]) == len(body)
            assert resp.headers["Access-Control-Allow-Origin"] == "*"
        resp = await client.get("/media/chunk-0-1.m4s", headers={"Range": "bytes=10-19"})
        assert resp.status == 206 and await resp.read() == (video_dir / "chunk-0-1.m4s").read_bytes()[10:20]
        assert (await client.get("/media/chunk-0-99.m4s")).status == 404
        assert (await client.get("/nothing-here")).status == 404


@pytest.mark.parametrize(("header", "expected"), [
    ("bytes=10-19", ByteRange((10, 19))), ("bytes=10-", ByteRange((10, 99))),
    ("bytes=-5", ByteRange((95, 99))), ("bytes=-500", ByteRange((0, 99))),
    ("bytes=90-500", ByteRange((90, 99))), ("BYTES=0-0", ByteRange((0, 0))),
    ("bytes=100-", ByteRange(None, satisfiable=False)), ("bytes=100-200", ByteRange(None, satisfiable=False)),
    ("bytes=-0", ByteRange(None, satisfiable=False)),
    # ignored (RFC 9110: a server may ignore what it does not support; bad syntax is ignored too): 200
    ("items=0-10", WHOLE_FILE), ("bytes=0-1,5-6", WHOLE_FILE), ("bytes=abc", WHOLE_FILE),
    ("bytes=", WHOLE_FILE), ("bytes=-", WHOLE_FILE), ("bytes=5-2", WHOLE_FILE), ("bytes=+1-2", WHOLE_FILE),
    ("bytes=1_0-20", WHOLE_FILE), ("bytes 0-10", WHOLE_FILE), ("", WHOLE_FILE),
])
def test_parse_range_follows_rfc_9110(header: str, expected: ByteRange) -> None:
    assert parse_range(header, 100) == expected


async def test_unsupported_ranges_get_the_whole_file_and_only_unsatisfiable_ones_416(video_dir: Path) -> None:
    body = (video_dir / "chunk-0-1.m4s").read_bytes()
    async with TestClient(TestServer(create_app(ServerConfig(media_root=video_dir)))) as client:
        for header in ("items=0-10", "bytes=0-1,5-6", "bytes=abc", "bytes=5-2"):
            resp = await client.get("/media/chunk-0-1.m4s", headers={"Range": header})
            assert resp.status == 200, header
            assert await resp.read() == body and "Content-Range" not in resp.headers
        resp = await client.get("/media/chunk-0-1.m4s", headers={"Range": "bytes=-4"})
        assert resp.status == 206 and await resp.read() == body[-4:]
        assert resp.headers["Content-Range"] == f"bytes {len(body) - 4}-{len(body) - 1}/{len(body)}"
        resp = await client.get("/media/chunk-0-1.m4s", headers={"Range": f"bytes={len(body)}-"})
        assert resp.status == 416 and resp.headers["Content-Range"] == f"bytes */{len(body)}"


async def test_player_page_redirect_health_and_preflight(video_dir: Path, player_dir: Path) -> None:
    cfg = ServerConfig(media_root=video_dir, player_root=player_dir)
    async with TestClient(TestServer(create_app(cfg))) as client:
        resp = await client.get("/?controller=http%3A%2F%2F127.0.0.1%3A9000&trace=a", allow_redirects=False)
        assert resp.status == 302
        location = URL(resp.headers["Location"])
        assert location.path == "/player/index.html"
        assert dict(location.query) == {"controller": "http://127.0.0.1:9000", "trace": "a"}
        resp = await client.get("/player/index.html")
        assert resp.content_type == "text/html" and "player" in await resp.text()
        resp = await client.get("/player/app.js")
        assert resp.content_type == "text/javascript" and resp.headers["Access-Control-Allow-Origin"] == "*"
        health = await (await client.get("/healthz")).json()
        assert health["status"] == "ok" and health["video"] is True and health["player"] is True
        resp = await client.options("/media/manifest.mpd", headers={
            "Origin": "http://127.0.0.1:1", "Access-Control-Request-Method": "GET"})
        assert resp.status == 204 and resp.headers["Access-Control-Allow-Origin"] == "*"


async def test_dashjs_bundle_is_served_and_its_absence_explained(
        video_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not dashjs_file().is_file():
        pytest.skip(f"dash.js not installed at {dashjs_file()} (make setup)")
    bundle = dashjs_file().read_bytes()
    async with TestClient(TestServer(create_app(ServerConfig(media_root=video_dir)))) as client:
        resp = await client.get("/dashjs/dash.all.min.js")
        assert resp.status == 200 and resp.content_type == "text/javascript"
        assert await resp.read() == bundle
        monkeypatch.setenv("NETLLM_NODE_MODULES", str(tmp_path / "empty"))
        resp = await client.get("/dashjs/dash.all.min.js")
        assert resp.status == 404 and "dash.js is not installed" in await resp.text()


@pytest.mark.parametrize("target", [
    "/media/../pyproject.toml", "/media/%2e%2e/pyproject.toml", "/media/%2E%2E/%2E%2E/etc/passwd",
    "/media/..%2Fpyproject.toml", "/media//etc/passwd", "/media/%2Fetc%2Fpasswd", "/media/./video.json",
    "/media/escape.txt", "/media/outside/secret.txt", "/media/%00", "/player/../pyproject.toml",
    "/player/%2e%2e/%2e%2e/pyproject.toml", "/dashjs/../../package.json",
    "/dashjs/%2e%2e/%2e%2e/package.json",
])
async def test_paths_leaving_the_root_are_refused(target: str, video_dir: Path, tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_text(SECRET)
    (root / "video.json").write_text("{}")
    (root / "escape.txt").symlink_to(outside / "secret.txt")  # symlinks pointing out of the root
    (root / "outside").symlink_to(outside, target_is_directory=True)
    async with run_server(ServerConfig(media_root=root, player_root=root)) as server:
        status, body = await raw_get(server.url, target)
    assert status in (403, 404), (target, status)
    assert SECRET.encode() not in body and b"[project]" not in body and b"root:" not in body


async def test_request_log_has_one_row_per_media_request(video_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "logs" / "requests.csv"
    async with run_server(ServerConfig(media_root=video_dir, request_log=log)) as server:
        async with aiohttp.ClientSession() as session:
            for name in ("manifest.mpd", "chunk-4-1.m4s", "missing.m4s"):
                async with session.get(server.media_url(name)) as resp:
                    await resp.read()
            await (await session.get(f"{server.url}/healthz")).read()  # not a media request: no row
        rows = read_request_log(log)  # flushed per row: readable while the server runs
    assert list(rows[0]) == list(REQUEST_LOG_COLUMNS)
    assert [(r["path"], r["status"]) for r in rows] == [
        ("/media/manifest.mpd", "200"), ("/media/chunk-4-1.m4s", "200"), ("/media/missing.m4s", "404")]
    assert int(rows[1]["bytes_sent"]) == (video_dir / "chunk-4-1.m4s").stat().st_size
    assert all(float(r["duration_s"]) >= float(r["first_byte_s"]) >= 0 for r in rows)
    assert abs(float(rows[0]["wall_time_s"]) - time.time()) < 60
    assert rows[0]["remote"] == "127.0.0.1" and rows[0]["aborted"] == "0"


async def test_requests_the_router_rejects_are_logged_too(video_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "requests.csv"
    async with run_server(ServerConfig(media_root=video_dir, request_log=log)) as server, \
            aiohttp.ClientSession() as session:
        preflight = {"Origin": "http://127.0.0.1:1", "Access-Control-Request-Method": "GET"}
        for method, path, headers in (("GET", "/media", {}), ("POST", "/media/manifest.mpd", {}),
                                      ("OPTIONS", "/media/manifest.mpd", preflight),
                                      ("OPTIONS", "/media/video.json", {}), ("GET", "/healthz", {})):
            async with session.request(method, server.url + path, headers=headers) as resp:
                await resp.read()
    rows = read_request_log(log)
    assert [(r["method"], r["path"], r["status"]) for r in rows] == [
        ("GET", "/media", "404"), ("POST", "/media/manifest.mpd", "405"),
        ("OPTIONS", "/media/manifest.mpd", "204"), ("OPTIONS", "/media/video.json", "405")]
    assert all(r["aborted"] == "0" and r["bytes_sent"] == "0" for r in rows)


async def test_closing_the_log_keeps_the_row_of_a_request_in_flight(video_dir: Path, tmp_path: Path) -> None:
    """At shutdown the app's clean-up (which closes the log) may run before a cancelled handler writes its
    row: the log then stays open until that row is written."""
    log = tmp_path / "requests.csv"
    cfg = ServerConfig(media_root=video_dir, request_log=log, first_byte_delay_ms=300)
    async with run_server(cfg) as server, aiohttp.ClientSession() as session:
        request = asyncio.ensure_future(session.get(server.media_url("video.json")))
        await asyncio.sleep(0.1)  # the handler is now waiting out its first-byte delay
        server.app[LOG_KEY].close()
        resp = await request
        assert resp.status == 200 and await resp.read() == (video_dir / "video.json").read_bytes()
    (row,) = read_request_log(log)
    assert row["path"] == "/media/video.json" and row["status"] == "200" and row["aborted"] == "0"


def test_request_log_closes_after_the_last_request_in_flight(tmp_path: Path) -> None:
    log = RequestLog(tmp_path / "requests.csv")
    record = RequestRecord(1.0, "GET", "/media/a", 200, 10, 0.1, 0.2, 0.0, "127.0.0.1", 0)
    with log.request_in_flight():
        log.close()
        log.write(record)
    with pytest.raises(ValueError):  # closed for real now
        log.write(record)
    assert [r["path"] for r in read_request_log(tmp_path / "requests.csv")] == ["/media/a"]


@pytest.mark.parametrize("delay_ms", [-1.0, float("nan"), float("inf"), 1e9])
def test_bad_first_byte_delays_are_refused(delay_ms: float, video_dir: Path) -> None:
    with pytest.raises(ServerConfigError, match="first_byte_delay_ms"):
        create_app(ServerConfig(media_root=video_dir, first_byte_delay_ms=delay_ms))


async def test_bad_delays_are_refused_while_running(video_dir: Path) -> None:
    async with run_server(ServerConfig(media_root=video_dir)) as server:
        for delay_ms in (float("nan"), float("inf"), -5.0):
            with pytest.raises(ValueError):
                server.set_first_byte_delay_ms(delay_ms)
            with pytest.raises(ValueError):
                server.hold_next_media_response_ms(delay_ms)


async def test_first_byte_delay_holds_back_media_responses(video_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "requests.csv"
    cfg = ServerConfig(media_root=video_dir, request_log=log, first_byte_delay_ms=200)
    async with run_server(cfg) as server, aiohttp.ClientSession() as session:
        for _ in range(2):
            started = time.monotonic()
            async with session.get(server.media_url()) as resp:
                assert resp.status == 200
                await resp.read()
            assert time.monotonic() - started >= 0.2
        server.set_first_byte_delay_ms(0)
        await (await session.get(server.media_url())).read()
    rows = read_request_log(log)
    assert [float(r["first_byte_delay_ms"]) for r in rows] == [200.0, 200.0, 0.0]
    assert all(float(r["first_byte_s"]) >= 0.2 for r in rows[:2])


async def test_a_held_response_delays_only_the_next_media_request(video_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "requests.csv"
    async with run_server(ServerConfig(media_root=video_dir, request_log=log)) as server, \
            aiohttp.ClientSession() as session:
        server.hold_next_media_response_ms(300)
        for _ in range(2):
            await (await session.get(server.media_url())).read()
        with pytest.raises(ValueError):
            server.hold_next_media_response_ms(-1)
    rows = read_request_log(log)
    assert [float(r["first_byte_delay_ms"]) for r in rows] == [300.0, 0.0]
    assert float(rows[0]["first_byte_s"]) >= 0.3 > float(rows[1]["first_byte_s"])


def _slow_download(url: str, path: str, rate_bytes_s: float) -> int:
    """A client with a small receive window that reads at `rate_bytes_s`; the number of bytes received."""
    host, port = re.match(r"http://([^:/]+):(\d+)", url).groups()
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)  # before connect: sets the window
        sock.connect((host, int(port)))
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        received, started = 0, time.monotonic()
        while chunk := sock.recv(16 * 1024):
            received += len(chunk)
            time.sleep(max(0.0, received / rate_bytes_s - (time.monotonic() - started)))
    return received


def test_transfer_time_in_the_log_follows_the_reader(video_dir: Path, tmp_path: Path) -> None:
    """TCP_NOTSENT_LOWAT keeps the kernel from swallowing the whole segment: the logged duration is the
    real transfer time of a client reading at 2 MB/s, not the microseconds of a memory copy."""
    log, name = tmp_path / "requests.csv", "chunk-4-2.m4s"
    size = (video_dir / name).stat().st_size
    with BackgroundServer(ServerConfig(media_root=video_dir, request_log=log)) as server:
        started = time.monotonic()
        assert _slow_download(server.url, f"/media/{name}", 2e6) > size
        client_s = time.monotonic() - started
    logged_s = float(read_request_log(log)[0]["duration_s"])
    assert client_s >= size / 2e6 * 0.9
    assert logged_s >= client_s - 0.35, (logged_s, client_s)  # lags by at most the last few hundred KB


def test_aborted_download_is_logged_as_aborted(video_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "requests.csv"
    with BackgroundServer(ServerConfig(media_root=video_dir, request_log=log)) as server:
        host, port = server.host, server.port
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
            sock.connect((host, port))
            sock.sendall(b"GET /media/chunk-5-1.m4s HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.recv(4096)
            time.sleep(0.2)
        deadline = time.monotonic() + 5
        while not read_request_log(log) and time.monotonic() < deadline:
            time.sleep(0.05)
    (row,) = read_request_log(log)
    assert row["aborted"] == "1" and 0 < int(row["bytes_sent"]) < (video_dir / "chunk-5-1.m4s").stat().st_size


def test_background_server_reports_start_errors(video_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ServerConfigError, match="not a folder"):
        BackgroundServer(ServerConfig(media_root=tmp_path / "absent")).start()
    with BackgroundServer(ServerConfig(media_root=video_dir)) as first:
        with pytest.raises(OSError):
            BackgroundServer(ServerConfig(media_root=video_dir, port=first.port)).start()


def test_cli_prints_its_port_serves_and_stops_on_sigterm(video_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "requests.csv"
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "--media-root", str(video_dir), "--port", "0",
         "--request-log", str(log), "--first-byte-delay-ms", "5"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        match = re.fullmatch(r"serving http://127\.0\.0\.1:(\d+)\n", line)
        assert match, (line, proc.stderr.read() if proc.poll() is not None else "")
        url = f"http://127.0.0.1:{match.group(1)}/media/video.json"
        with urlopen(url, timeout=10) as resp:
            assert json.loads(resp.read())["chunk_count"] == 3
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert read_request_log(log)[0]["first_byte_delay_ms"] == "5.000000"


def test_cli_with_a_missing_media_root_fails_clearly(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "server.cli", "--media-root", str(tmp_path / "none")],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 2
    assert "netllm serve: error" in proc.stderr and "prepare-video" in proc.stderr


@pytest.mark.parametrize("port", ["99999", "-5", "65536"])
def test_cli_refuses_a_port_out_of_range(port: str, video_dir: Path) -> None:
    cmd = [sys.executable, "-m", "server.cli", "--media-root", str(video_dir), "--port", port]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert f"port must be in 0..65535 (0 = pick a free one), got {port}" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


DASH_PAGE = """<!doctype html><meta charset="utf-8"><video id="v" muted></video>
<script src="/dashjs/dash.all.min.js"></script>
<script>
  window.rendered = []; window.errors = [];
  const player = dashjs.MediaPlayer().create();
  player.updateSettings({streaming: {abr: {autoSwitchBitrate: {video: false},
                                           initialBitrate: {video: 100000}}}});
  player.on(dashjs.MediaPlayer.events.ERROR, e => window.errors.push(JSON.stringify(e.error || e)));
  player.on(dashjs.MediaPlayer.events.QUALITY_CHANGE_RENDERED,
            e => window.rendered.push(e.newRepresentation.height));
  player.on(dashjs.MediaPlayer.events.STREAM_INITIALIZED, () => {
    window.ladder = player.getRepresentationsByType("video").map(r => [r.id, r.bandwidth, r.height]);
  });  // the top rung first (initialBitrate in kbps), the bottom one from 2 s on
  const video = document.getElementById("v");
  video.addEventListener("timeupdate", function drop() {
    if (video.currentTime < 2) return;
    video.removeEventListener("timeupdate", drop);
    player.setRepresentationForTypeByIndex("video", 0, true);  // true: replace what is buffered
  });
  player.initialize(video, "/media/manifest.mpd", true);
  video.playbackRate = 2;
</script>"""


@pytest.mark.browser
def test_dashjs_in_chromium_plays_the_prepared_video(video_dir: Path, tmp_path: Path) -> None:
    """dash.js v5 reads the MPD (6 rungs, ladder order), plays to the end and renders two rungs."""
    from netllm.paths import chromium_executable

    playwright_api = pytest.importorskip("playwright.sync_api")
    if not chromium_executable().exists() or not dashjs_file().is_file():
        pytest.skip("needs Chromium and dash.js (make setup)")
    page_dir, log = tmp_path / "page", tmp_path / "requests.csv"
    page_dir.mkdir()
    (page_dir / "index.html").write_text(DASH_PAGE)
    cfg = ServerConfig(media_root=video_dir, player_root=page_dir, request_log=log)
    with BackgroundServer(cfg) as server, playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(chromium_executable()),
                                     args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"])
        try:
            page = browser.new_page()
            page.goto(server.player_url())
            page.wait_for_function("document.getElementById('v').ended || window.errors.length > 0",
                                   timeout=90_000)
            ladder, rendered, errors = page.evaluate("[window.ladder, window.rendered, window.errors]")
        finally:
            browser.close()
    assert errors == []
    assert [int(rep_id) for rep_id, _, _ in ladder] == list(range(6))
    assert [bandwidth for _, bandwidth, _ in ladder] == [k * 1000 for k in (300, 750, 1200, 1850, 2850, 4300)]
    assert 1080 in rendered and 180 in rendered, rendered
    fetched = {row["path"] for row in read_request_log(log) if row["status"] == "200"}
    assert {"/media/manifest.mpd", "/media/init-5.mp4", "/media/init-0.mp4"} <= fetched
