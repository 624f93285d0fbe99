"""A browser-free chunk downloader for checking the emulated link (tests, `benchmarks/bench_fidelity.py`).

    python -m emulation.http_probe --server http://10.0.0.1:PORT --video DIR --out probe.csv [--chunks N]

It plays the ABR download pattern without playback: over one persistent HTTP/1.1 connection (as a browser
would keep) it fetches the video's chunks in order, each at the highest ladder rate below 0.9 x the last
measured throughput (a rate-based rule, so transfers span the trace's range), and waits `--gap-s` between
chunks. One CSV row per chunk, times in unix seconds (so `page_epoch_s` = 0 when aligning):
chunk_index, quality, chunk_bytes, request_time_s, first_byte_time_s, finish_time_s.
"""

from __future__ import annotations

import argparse
import csv
import http.client
import sys
import time
from pathlib import Path
from typing import Sequence
from urllib.parse import urlparse

from netllm.video import load_video_json
from server.mpd import parse_mpd

PROBE_COLUMNS = ("chunk_index", "quality", "chunk_bytes", "request_time_s", "first_byte_time_s",
                 "finish_time_s")


def _get(conn: http.client.HTTPConnection, path: str) -> tuple[int, float, float, float]:
    t_req = time.time()
    conn.request("GET", path)
    resp = conn.getresponse()
    first = resp.read(1)
    t_first = time.time()
    body = first + resp.read()
    t_end = time.time()
    if resp.status != 200:
        raise RuntimeError(f"GET {path}: HTTP {resp.status}")
    return len(body), t_req, t_first, t_end


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emulation.http_probe",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--server", required=True, help="DASH server base URL")
    parser.add_argument("--video", type=Path, required=True, help="the prepared video the server serves")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--chunks", type=int, default=0,
                        help="chunks to fetch (0 = all; wraps around the video)")
    parser.add_argument("--gap-s", type=float, default=0.5)
    ns = parser.parse_args(argv)
    video = load_video_json(ns.video)
    manifest = parse_mpd(ns.video / video.meta.get("mpd", "manifest.mpd"))
    url = urlparse(ns.server)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
    total = ns.chunks or video.chunk_count
    last_kbps = video.ladder_kbps[0] / 0.9
    with open(ns.out, "w", newline="", buffering=1) as fh:
        writer = csv.writer(fh)
        writer.writerow(PROBE_COLUMNS)
        for k in range(total):
            quality = max([q for q, kbps in enumerate(video.ladder_kbps) if kbps < 0.9 * last_kbps] or [0])
            rep = manifest.representations[quality].id
            number = manifest.start_number + k % video.chunk_count
            size, t_req, t_first, t_end = _get(conn, "/media/" + manifest.media_name(rep, number))
            writer.writerow([k, quality, size, f"{t_req:.6f}", f"{t_first:.6f}", f"{t_end:.6f}"])
            last_kbps = size * 8 / 1000 / max(t_end - t_req, 1e-6)
            time.sleep(ns.gap_s)
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
