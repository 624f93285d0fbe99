"""DASH server: media, player page, dash.js, request logs; and video preparation (ffmpeg).

Modules:
- `server.prepare_video`: `netllm prepare-video`, the 6-level H.264/fMP4 DASH ladder + `video.json`;
- `server.mpd`: reading/writing the static SegmentTemplate manifests (`parse_mpd`, `write_mpd`);
- `server.app`: `ServerConfig` and `create_app(cfg) -> aiohttp.web.Application`;
- `server.runner`: `run_server(cfg)` (async context manager) and `BackgroundServer(cfg)` (thread), both giving
  a `ServerHandle` (url, port, media_url(), player_url(), set_first_byte_delay_ms(),
  hold_next_media_response_ms());
- `server.cli`: `netllm serve` / `python -m server.cli` (prints `serving http://HOST:PORT` once listening);
- `server.request_log`: the per-request CSV (`REQUEST_LOG_COLUMNS`, `read_request_log`);
- `server.safe_paths`: URL path -> file under a root, refusing traversal and escaping symlinks.
"""
